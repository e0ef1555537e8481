"""Image input on the device: resize and normalise inside the model, so hosts keep uint8 pixels."""

from collections.abc import Sequence
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class ImageInput(nn.Module):
    """``model((resize(x) − mean) / std)`` for a batch of images x [n, H, W(, C)] in pixel units.

    Keeping pixels as uint8 until they reach the device makes host memory and transfers four
    times smaller than float32. The wrapped model's parameters live in this module's own scope
    (``nn.share_scope``), so wrapping changes no parameter path: a pretrained model's parameters
    fit ``ImageInput(model, …)`` as they are.

    Attributes:
        model: the network that takes normalised images [n, size, size, C].
        mean: per-channel (or one global) mean, in pixel units (0..255).
        std: per-channel (or one global) standard deviation, in pixel units.
        size: side of the square images the model takes; images of another size are resized
            (bilinear, antialiased when shrinking); None keeps them as they are.
    """

    model: nn.Module
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)
    size: Optional[int] = None

    def setup(self):
        nn.share_scope(self, self.model)

    def __call__(self, images: jax.Array) -> jax.Array:
        """The model's output for images [n, H, W] or [n, H, W, C], uint8 or float."""
        return self.model(self.normalized(images))

    def normalized(self, images: jax.Array) -> jax.Array:
        """float32 [n, size, size, C] images: resized, minus ``mean``, over ``std``."""
        if images.ndim not in (3, 4):
            raise ValueError(f"images must be [n, H, W] or [n, H, W, C]; got shape {images.shape}")
        x = jnp.asarray(images, jnp.float32)
        if x.ndim == 3:
            x = x[..., None]
        if self.size is not None and x.shape[1:3] != (self.size, self.size):
            x = jax.image.resize(x, (x.shape[0], self.size, self.size, x.shape[3]), "bilinear")
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
