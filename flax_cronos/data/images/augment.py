"""Random flips and crops of image batches: pure JAX, jittable, determined by the key."""

import jax
import jax.numpy as jnp

PAD_MODES = ("reflect", "constant")


def augment(key: jax.Array, images: jax.Array, *, flip: bool = True, crop_padding: int = 4,
            pad_mode: str = "reflect") -> jax.Array:
    """Light augmentation of a batch: random horizontal flips and random shifted crops.

    Each image is mirrored left–right with probability 1/2, then padded by ``crop_padding``
    pixels on every side (reflected, or zeros for "constant") and cropped back to H × W at a
    uniformly random offset, independently per image. Use ``functools.partial`` to set the
    options and get an ``augment(key, images) -> images`` function.

    Args:
        key: a JAX PRNG key; the same key gives the same output.
        images: [b, H, W, C] batch (any dtype).
        flip: apply the random horizontal flips.
        crop_padding: padding of the random crops, pixels; 0 turns cropping off. Must be less
            than H and W for "reflect".
        pad_mode: "reflect" or "constant" (zeros).

    Returns:
        [b, H, W, C] batch of the input's dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be a [b, H, W, C] batch; got shape {images.shape}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}; got {pad_mode!r}")
    batch, height, width, channels = images.shape
    if crop_padding < 0 or (pad_mode == "reflect" and crop_padding >= min(height, width)):
        raise ValueError(f"crop_padding must be ≥ 0 (and < H, W for reflect padding); "
                         f"got {crop_padding} for images {height}×{width}")
    flip_key, crop_key = jax.random.split(key)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
        images = jnp.where(mirror, images[:, :, ::-1], images)
    if crop_padding:
        pad = crop_padding
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
        images = jax.vmap(lambda image, offset: jax.lax.dynamic_slice(
            image, (offset[0], offset[1], 0), (height, width, channels)))(padded, offsets)
    return images
