"""Pixel scaling fitted on the training split only, and random subsets (NumPy)."""

from typing import NamedTuple, Optional

import numpy as np

CHUNK = 1 << 24  # pixel values converted to float64 at a time by channel_stats


class ChannelStats(NamedTuple):
    """Per-channel statistics of training pixels on the [0, 1] scale (pixel / 255).

    Attributes:
        mean: float32 [C].
        std: float32 [C], all positive.
    """

    mean: np.ndarray
    std: np.ndarray


def _rescale(x: np.ndarray, shift, scale) -> np.ndarray:
    """float32 (x − shift) / scale, in place on one fresh copy (large arrays are slow to
    allocate); shift and scale are scalars or [C] arrays broadcast over the last axis."""
    out = np.array(x, np.float32)
    out -= shift
    out /= scale
    return out


def standardize(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scales pixels to [0, 1], then standardises by the training set's global mean and std.

    The paper's preprocessing: one scalar mean and one scalar std over all training pixels
    (and channels), applied to every array, so test data never informs the statistics.

    Args:
        x_train: [n, ...] uint8 pixels 0..255 of the training set.
        *others: further [m, ...] uint8 arrays (validation, test) to transform the same way.

    Returns:
        (x_train, *others) as float32 arrays of the same shapes; x_train has mean 0 and std 1.
    """
    pixels = _rescale(x_train, 0.0, 255.0)
    mean, std = float(pixels.mean()), float(pixels.std())
    if not std > 0:
        raise ValueError(f"x_train must not be constant (std {std}); cannot standardise")
    pixels -= mean
    pixels /= std
    return pixels, *(_rescale(x, 255 * mean, 255 * std) for x in others)


def channel_stats(x_train: np.ndarray) -> ChannelStats:
    """Per-channel mean and standard deviation of training images, scaled to [0, 1].

    Sums run over chunks of rows in float64 (exact for integer pixels), so a large uint8
    array is never copied whole.

    Args:
        x_train: uint8 [n, H, W, C] training images.

    Returns:
        ChannelStats(mean float32 [C], std float32 [C]) of x_train / 255 over n, H and W.
    """
    if x_train.dtype != np.uint8 or x_train.ndim != 4 or len(x_train) == 0:
        raise ValueError(f"x_train must be uint8 [n, H, W, C] images with n ≥ 1; "
                         f"got {x_train.dtype} {x_train.shape}")
    channels = x_train.shape[-1]
    total, squares = np.zeros(channels), np.zeros(channels)
    rows = max(1, CHUNK // x_train[0].size)
    for start in range(0, len(x_train), rows):
        pixels = x_train[start:start + rows].reshape(-1, channels).astype(np.float64)
        total += pixels.sum(axis=0)
        squares += np.einsum("ij,ij->j", pixels, pixels)
    count = x_train.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    if not (std > 0).all():
        raise ValueError(f"x_train channels {np.flatnonzero(std == 0).tolist()} are constant; "
                         "cannot normalise them")
    return ChannelStats((mean / 255).astype(np.float32), (std / 255).astype(np.float32))


def apply_normalization(x: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """(x / 255 − mean) / std per channel.

    Args:
        x: uint8 [..., C] pixels 0..255.
        stats: the training split's :func:`channel_stats` (or any (mean [C], std [C]) pair).

    Returns:
        float32 array of x's shape.
    """
    mean, std = (np.asarray(s, np.float32) for s in stats)
    if x.shape[-1:] != mean.shape or mean.shape != std.shape:
        raise ValueError(f"x has {x.shape[-1:]} channels (last axis of {x.shape}) but the "
                         f"statistics have {mean.shape} means and {std.shape} stds")
    return _rescale(x, 255 * mean, 255 * std)


def normalize(x_train: np.ndarray, *others: np.ndarray) -> tuple:
    """Per-channel normalisation by statistics of the training split only.

    Args:
        x_train: uint8 [n, H, W, C] training images.
        *others: further uint8 [m, H', W', C] arrays (validation, test) to transform the same way.

    Returns:
        (x_train, *others, stats): float32 arrays of the input shapes (x_train has per-channel
        mean 0 and std 1), then the ChannelStats used, for a run to record.
    """
    stats = channel_stats(x_train)
    return (*(apply_normalization(x, stats) for x in (x_train, *others)), stats)


def subset(x: np.ndarray, y: np.ndarray, size: Optional[int],
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic random subset of ``size`` rows, drawn without replacement.

    Args:
        x: [n, ...] inputs.
        y: [n] labels.
        size: rows to keep, 1..n; None keeps all rows in their order.
        seed: seed of ``np.random.default_rng``.

    Returns:
        (x [size, ...], y [size]) in random order.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"y has {len(y)} rows but x has {n}")
    if size is None:
        return x, y
    if not 0 < size <= n:
        raise ValueError(f"size must be in 1..{n} (the number of rows); got {size}")
    rows = np.random.default_rng(seed).choice(n, size, replace=False)
    return x[rows], y[rows]
