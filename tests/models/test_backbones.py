"""The backbones compute what their docstrings say, checked against plain NumPy forwards."""

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from flax_cronos.models import MLP, SmallCNN, TwoLayerHead

relu = lambda z: np.maximum(z, 0)  # noqa: E731


def randomised(params, seed=0):
    """The same parameter tree with every leaf redrawn, so zero-initialised biases matter."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)


def test_mlp_matches_numpy_forward_without_biases():
    x = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)
    model = MLP(widths=(6, 7))
    params = model.init(jax.random.key(0), x)["params"]
    names = {"/".join(path) for path in flatten_dict(params)}
    assert names == {"Dense_0/kernel", "Dense_1/kernel"}
    w1, w2 = (np.asarray(params[f"Dense_{i}"]["kernel"]) for i in range(2))
    expected = relu(relu(x.reshape(5, 12) @ w1) @ w2)
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)


def test_mlp_with_biases_matches_numpy_forward():
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    model = MLP(widths=(6, 3), use_bias=True)
    params = randomised(model.init(jax.random.key(0), x)["params"])
    hidden = relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    expected = relu(hidden @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"])
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5)


def test_default_mlp_is_the_papers_backbone():
    x = np.zeros((2, 28, 28), np.float32)
    params = MLP().init(jax.random.key(0), x)["params"]
    shapes = {"/".join(path): leaf.shape for path, leaf in flatten_dict(params).items()}
    assert shapes == {"Dense_0/kernel": (784, 256), "Dense_1/kernel": (256, 256)}


def test_two_layer_head_matches_numpy_forward():
    x = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    model = TwoLayerHead(width=6, outputs=3)
    params = model.init(jax.random.key(0), x)["params"]
    assert {"/".join(path) for path in flatten_dict(params)} == {"Dense_0/kernel", "Dense_1/kernel"}
    expected = relu(x @ params["Dense_0"]["kernel"]) @ params["Dense_1"]["kernel"]
    out = model.apply({"params": params}, x)
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, features", [((2, 32, 32, 3), 8 * 8 * 32),
                                             ((2, 28, 28), 7 * 7 * 32),
                                             ((2, 28, 28, 1), 7 * 7 * 32)])
def test_cnn_output_shape(shape, features):
    x = np.zeros(shape, np.float32)
    model = SmallCNN()
    out = model.apply(model.init(jax.random.key(0), x), x)
    assert out.shape == (2, features)


def test_cnn_grey_images_get_a_channel_axis():
    x = np.random.default_rng(3).normal(size=(2, 28, 28)).astype(np.float32)
    model = SmallCNN(channels=4)
    variables = model.init(jax.random.key(0), x)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x[..., None]))


def test_cnn_block_matches_numpy_conv_relu_pool():
    x = np.random.default_rng(4).normal(size=(2, 6, 8, 3)).astype(np.float32)
    model = SmallCNN(channels=4, blocks=1)
    params = randomised(model.init(jax.random.key(0), x)["params"])
    kernel, bias = params["Conv_0"]["kernel"], params["Conv_0"]["bias"]  # [3, 3, 3, 4], [4]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # SAME for a 3×3 kernel, stride 1
    conv = bias + sum(padded[:, i:i + 6, j:j + 8, :] @ kernel[i, j]
                      for i in range(3) for j in range(3))
    pooled = relu(conv).reshape(2, 3, 2, 4, 2, 4).mean(axis=(2, 4))  # 2×2 windows, stride 2
    out = model.apply({"params": params}, x)
    np.testing.assert_allclose(out, pooled.reshape(2, -1), rtol=1e-4, atol=1e-4)
