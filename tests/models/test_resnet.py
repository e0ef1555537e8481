"""ResNet-18/50 backbones: torchvision's parameter counts, agreement with an independent PyTorch
network built from torch.nn primitives, shapes, input checks, and end-to-end trainability."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from flax_cronos.models import Bottleneck, ResNet, ResNet18, ResNet50


def init_key(seed: int = 0) -> jax.Array:
    """An "rbg" PRNG key: XLA on CPU compiles a ResNet's init ~10× faster than with threefry."""
    return jax.random.key(seed, impl="rbg")


def shapes_of(model, x_shape, dtype=jnp.float32):
    """Parameter shapes and output shape/dtype of ``model`` on ``x_shape`` inputs, traced only."""
    x = jax.ShapeDtypeStruct(x_shape, dtype)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    out = jax.eval_shape(model.apply, {"params": params}, x)
    return params, out


@pytest.mark.parametrize("make, expected", [(ResNet18, 11_689_512), (ResNet50, 25_557_032)])
def test_parameter_count_equals_torchvision(make, expected):
    params, out = shapes_of(make(num_classes=1000), (1, 224, 224, 3))
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == expected
    assert out.shape == (1, 1000)


def test_parameter_names_are_readable_for_regex_selection():
    params50, _ = shapes_of(ResNet50(num_classes=10, width=8), (1, 32, 32, 3))
    names = set(flatten_dict(params50, sep="/"))
    assert {"stem_conv/kernel", "stem_norm/scale", "stem_norm/bias", "classifier/kernel",
            "classifier/bias", "stage1_block0/conv3/kernel", "stage1_block0/shortcut_conv/kernel",
            "stage3_block5/norm3/scale", "stage4_block2/conv2/kernel"} <= names
    assert not [name for name in names if "conv" in name and name.endswith("/bias")]
    params18, _ = shapes_of(ResNet18(width=8), (1, 32, 32, 3))
    modules = {name.rsplit("/", 1)[0] for name in flatten_dict(params18, sep="/")}
    blocks = {f"stage{s}_block{b}" for s in range(1, 5) for b in range(2)}
    assert {module.split("/")[0] for module in modules} == {"stem_conv", "stem_norm"} | blocks
    assert "stage1_block0/shortcut_conv" not in modules  # 8 -> 8 channels, stride 1: identity
    assert params18["stage2_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 8, 16)


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("make, features", [(ResNet18, 512), (ResNet50, 2048)])
def test_feature_shapes(make, features, stem, size):
    _, out = shapes_of(make(stem=stem), (3, size, size, 3))
    assert out.shape == (3, features)
    assert out.dtype == jnp.float32


def test_narrow_network_features_scale_with_width():
    _, out18 = shapes_of(ResNet18(width=8), (2, 32, 32, 3))
    _, out50 = shapes_of(ResNet50(width=8), (2, 32, 32, 3))
    assert out18.shape == (2, 64) and out50.shape == (2, 256)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.uint8])
def test_computes_in_float32(dtype):
    _, out = shapes_of(ResNet18(width=8, num_classes=3), (2, 32, 32, 3), dtype)
    assert out.dtype == jnp.float32


def test_dtype_sets_the_computation_dtype_not_the_parameter_dtype():
    params, out = shapes_of(ResNet18(width=8, num_classes=3, dtype=jnp.bfloat16), (2, 32, 32, 3))
    assert out.dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


@pytest.fixture(scope="module")
def small18():
    """A width-8 CIFAR-stem ResNet-18 with two logits and parameters for grey 16×16 images."""
    model = ResNet18(width=8, stem="cifar", num_classes=2)
    return model, jax.jit(model.init)(init_key(), jnp.zeros((1, 16, 16), jnp.float32))


def test_grey_images_get_a_channel_axis(small18):
    model, variables = small18
    x = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
    both = jax.jit(lambda x: (model.apply(variables, x), model.apply(variables, x[..., None])))
    np.testing.assert_array_equal(*both(x))


@pytest.mark.parametrize("shape", [(2, 16), (2, 16, 16, 1, 1)])
def test_bad_rank_is_a_value_error(small18, shape):
    model, variables = small18
    with pytest.raises(ValueError, match=r"\[n, H, W, C\]"):
        model.apply(variables, np.zeros(shape, np.float32))


def test_unknown_stem_is_a_value_error():
    with pytest.raises(ValueError, match="stem"):
        shapes_of(ResNet18(stem="tiny"), (1, 32, 32, 3))


def assert_branch_ends_zero(params, last: str, zero: bool, blocks: int):
    """Every ``…/{last}/scale`` (a residual branch's last norm) is 0 when ``zero``, all other
    norm scales are 1."""
    scales = {name: np.asarray(leaf) for name, leaf in flatten_dict(params, sep="/").items()
              if name.endswith("/scale")}
    branch_ends = {name for name in scales if name.endswith(f"/{last}/scale")}
    assert len(branch_ends) == blocks
    for name, scale in scales.items():
        np.testing.assert_array_equal(scale, 0.0 if zero and name in branch_ends else 1.0,
                                      err_msg=name)


def test_resnet18_zero_initialises_residual_branches_by_default(small18):
    assert_branch_ends_zero(small18[1]["params"], "norm2", zero=True, blocks=8)


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_residual_flag_reaches_bottleneck_blocks(zero_init):
    model = ResNet(stage_sizes=(2,), block=Bottleneck, width=8, zero_init_residual=zero_init)
    params = jax.jit(model.init)(init_key(), jnp.zeros((1, 8, 8, 3), jnp.float32))["params"]
    assert_branch_ends_zero(params, "norm3", zero=zero_init, blocks=2)


# ----------------------------------------------------------------------------- PyTorch reference


def torch_resnet(stage_sizes, bottleneck, width, stem, num_classes, in_channels):
    """An independent ResNet from torch.nn primitives, named like the Flax one for weight copying.

    Same conventions: GroupNorm with gcd(32, channels) groups and eps 1e-5, bias-free convs
    padded by k // 2, stride on the 3×3 conv, projection shortcut where the shape changes.
    """
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    def norm(channels):
        return tnn.GroupNorm(math.gcd(32, channels), channels, eps=1e-5)

    def conv(cin, cout, k, stride):
        return tnn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)

    class Block(tnn.Module):
        def __init__(self, cin, features, stride):
            super().__init__()
            self.cout = features * (4 if bottleneck else 1)
            if bottleneck:
                specs = [(cin, features, 1, 1), (features, features, 3, stride),
                         (features, self.cout, 1, 1)]
            else:
                specs = [(cin, features, 3, stride), (features, features, 3, 1)]
            for i, (a, b, k, s) in enumerate(specs, 1):
                self.add_module(f"conv{i}", conv(a, b, k, s))
                self.add_module(f"norm{i}", norm(b))
            self.depth = len(specs)
            self.project = stride != 1 or cin != self.cout
            if self.project:
                self.shortcut_conv = conv(cin, self.cout, 1, stride)
                self.shortcut_norm = norm(self.cout)

        def forward(self, x):
            y = x
            for i in range(1, self.depth + 1):
                y = getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(y))
                if i < self.depth:
                    y = torch.relu(y)
            shortcut = self.shortcut_norm(self.shortcut_conv(x)) if self.project else x
            return torch.relu(y + shortcut)

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            k, s = (7, 2) if stem == "imagenet" else (3, 1)
            self.stem_conv, self.stem_norm = conv(in_channels, width, k, s), norm(width)
            self.pool = tnn.MaxPool2d(3, 2, padding=1) if stem == "imagenet" else tnn.Identity()
            cin, self.blocks = width, []
            for stage, size in enumerate(stage_sizes):
                for index in range(size):
                    block = Block(cin, width * 2**stage, 2 if stage > 0 and index == 0 else 1)
                    self.add_module(f"stage{stage + 1}_block{index}", block)
                    self.blocks.append(block)
                    cin = block.cout
            self.gap = tnn.AdaptiveAvgPool2d(1)
            self.classifier = tnn.Linear(cin, num_classes)

        def forward(self, x):  # x: [n, C, H, W]
            x = self.pool(torch.relu(self.stem_norm(self.stem_conv(x))))
            for block in self.blocks:
                x = block(x)
            return self.classifier(torch.flatten(self.gap(x), 1))

    return Net()


def torch_state(params):
    """Flax ``params`` as a float64 torch state dict.

    Conv kernels HWIO -> OIHW, Dense [d, C] -> Linear [C, d]; scale -> weight.
    """
    torch = pytest.importorskip("torch")
    state = {}
    for name, leaf in flatten_dict(params, sep="/").items():
        module, kind = name.rsplit("/", 1)
        value = np.asarray(leaf, np.float64)
        if kind == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        key = module.replace("/", ".") + (".bias" if kind == "bias" else ".weight")
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
    return state


def random_params(model, x_shape, seed):
    """Parameters for ``model`` drawn with NumPy (no Flax init to compile): He-normal kernels,
    norm scales 1 + 0.2·N(0, 1) and biases 0.2·N(0, 1), so that every parameter matters."""
    rng = np.random.default_rng(seed)
    shapes, _ = shapes_of(model, x_shape)
    params = {}
    for name, leaf in flatten_dict(shapes, sep="/").items():
        z = rng.normal(size=leaf.shape)
        if name.endswith("/kernel"):
            params[name] = z * np.sqrt(2.0 / math.prod(leaf.shape[:-1]))
        elif name.endswith("/scale"):
            params[name] = 1 + 0.2 * z
        else:
            params[name] = 0.2 * z
    return unflatten_dict({name: v.astype(np.float32) for name, v in params.items()}, sep="/")


@pytest.mark.parametrize("model, bottleneck, channels", [
    (ResNet18(width=64, stem="imagenet", num_classes=10), False, 3),  # ResNet-18 itself
    # bottleneck blocks, with and without projection; grey input; GroupNorm with 16 < 32 groups
    (ResNet(stage_sizes=(2, 1, 1, 1), block=Bottleneck, width=16, stem="cifar", num_classes=10),
     True, 1),
], ids=["resnet18", "bottleneck"])
def test_matches_independent_pytorch_network(model, bottleneck, channels):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(2, 32, 32, channels)).astype(np.float32)
    params = random_params(model, x.shape, seed=2)
    net = torch_resnet(model.stage_sizes, bottleneck, model.width, model.stem, 10, channels)
    net.double().load_state_dict(torch_state(params), strict=True)
    with torch.no_grad():
        expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2)).double()).numpy()
    out = jax.jit(model.apply)({"params": params}, x)
    assert out.dtype == jnp.float32
    assert np.std(expected) > 0.1  # not a degenerate comparison
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))


# ----------------------------------------------------------------------------- trainability


def test_adam_steps_reduce_the_loss_end_to_end(small18):
    model, variables = small18
    labels = np.arange(32) % 2
    x = np.random.default_rng(4).normal(size=(32, 16, 16)).astype(np.float32)
    x[labels == 1, :8] += 1.0  # class 1: a brighter top half
    optimizer = optax.adam(1e-2)

    def loss_fn(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    params = variables["params"]
    state, losses = optimizer.init(params), []
    for _ in range(10):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.2 * losses[0], losses
