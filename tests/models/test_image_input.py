"""ImageInput: normalisation and resizing on the device, with the wrapped model's parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_cronos.models import MLP
from flax_cronos.models.image_input import ImageInput


class Identity(MLP):
    """An MLP with no layers: flattens, so the output shows what the wrapped model received."""

    widths: tuple = ()


def test_pixels_are_normalised_per_channel_and_the_parameters_are_the_models():
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
    wrapped = ImageInput(Identity(), mean=mean, std=std)
    out = wrapped.apply({}, images)
    expected = ((images.astype(np.float64) - mean) / std).reshape(4, -1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == jnp.float32

    mlp = MLP(widths=(7,))
    plain = mlp.init(jax.random.key(0), images.astype(np.float32))["params"]
    shared = ImageInput(mlp).init(jax.random.key(0), images)["params"]
    assert jax.tree.structure(shared) == jax.tree.structure(plain)


def test_grey_images_get_a_channel_and_a_linear_ramp_stays_linear_when_resized():
    ramp = np.tile(np.arange(8, dtype=np.float32) * 10, (2, 8, 1))      # [2, 8, 8], x-ramp
    resized = ImageInput(Identity(), size=16).apply({}, ramp, method=ImageInput.normalized)
    assert resized.shape == (2, 16, 16, 1)
    row = np.asarray(resized[0, 5, :, 0])
    # bilinear with half-pixel centres: output column j samples input position (j + 0.5) / 2 − 0.5
    inner = slice(1, 15)
    expected = 10 * ((np.arange(16) + 0.5) / 2 - 0.5)
    np.testing.assert_allclose(row[inner], expected[inner], atol=1e-4)


def test_images_of_the_wrong_rank_are_refused():
    with pytest.raises(ValueError, match=r"\[n, H, W\] or \[n, H, W, C\]"):
        ImageInput(Identity()).apply({}, np.zeros((4, 5), np.uint8))
