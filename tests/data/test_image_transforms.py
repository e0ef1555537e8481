"""Per-channel normalisation fitted on training data, and the JAX batch augmentation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_cronos.data import ChannelStats, apply_normalization, augment, channel_stats, normalize
from flax_cronos.data.images import transforms


@pytest.fixture
def splits():
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 5, 6, 3), np.uint8)
    x_train[..., 2] //= 4  # channels with different statistics
    x_val = rng.integers(0, 256, (7, 5, 6, 3), np.uint8)
    return x_train, x_val


def test_channel_stats_are_numpys_per_channel_mean_and_std(splits, monkeypatch):
    x_train, _ = splits
    pixels = x_train / 255
    stats = channel_stats(x_train)
    assert stats.mean.dtype == stats.std.dtype == np.float32 and stats.mean.shape == (3,)
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(stats.std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)
    monkeypatch.setattr(transforms, "CHUNK", 100)  # three rows at a time: the same sums
    chunked = channel_stats(x_train)
    np.testing.assert_array_equal(chunked.mean, stats.mean)
    np.testing.assert_allclose(chunked.std, stats.std, rtol=1e-6)


def test_normalize_uses_training_statistics_only(splits):
    x_train, x_val = splits
    train, val, stats = normalize(x_train, x_val)
    assert isinstance(stats, ChannelStats)
    assert train.dtype == val.dtype == np.float32 and val.shape == x_val.shape
    np.testing.assert_allclose(train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=(0, 1, 2)), 1, atol=1e-5)
    mean, std = x_train.mean(axis=(0, 1, 2)) / 255, x_train.std(axis=(0, 1, 2)) / 255
    np.testing.assert_allclose(val, (x_val / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    other_train, other_val, other_stats = normalize(x_train, 255 - x_val)  # val is not seen
    np.testing.assert_array_equal(other_stats.mean, stats.mean)
    np.testing.assert_array_equal(other_stats.std, stats.std)
    np.testing.assert_array_equal(other_train, train)
    np.testing.assert_array_equal(apply_normalization(x_val, stats), val)
    as_lists = (stats.mean.tolist(), stats.std.tolist())  # e.g. read back from a run's record
    np.testing.assert_array_equal(apply_normalization(x_val, as_lists), val)
    alone, _ = normalize(x_train)
    np.testing.assert_array_equal(alone, train)


def test_normalize_errors(splits):
    x_train, _ = splits
    for bad in (x_train.astype(np.float32), x_train[..., 0], x_train[:0]):
        with pytest.raises(ValueError, match="x_train must be uint8"):
            channel_stats(bad)
    constant = x_train.copy()
    constant[..., 1] = 7
    with pytest.raises(ValueError, match=r"channels \[1\] are constant"):
        normalize(constant)
    with pytest.raises(ValueError, match="channels"):
        apply_normalization(x_train[..., :2], channel_stats(x_train))


@pytest.fixture
def batch():
    return jax.random.uniform(jax.random.key(1), (32, 8, 10, 3), jnp.float32)


def test_flip_is_an_exact_mirror(batch):
    out = np.asarray(augment(jax.random.key(0), batch, crop_padding=0))
    images = np.asarray(batch)
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image is one or the other
    assert 0 < sum(flipped) < len(out)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_crop_is_a_shifted_window_of_the_padded_image(batch, pad_mode):
    pad = 3
    out = np.asarray(augment(jax.random.key(0), batch, flip=False, crop_padding=pad,
                             pad_mode=pad_mode))
    padded = np.pad(np.asarray(batch), ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
    offsets = set()
    for o, p in zip(out, padded):
        found = [(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)
                 if np.array_equal(o, p[i:i + 8, j:j + 10])]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 10  # offsets differ between images


def test_augment_is_deterministic_jittable_and_keeps_shape_and_dtype(batch):
    key = jax.random.key(5)
    out = augment(key, batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    np.testing.assert_array_equal(out, augment(key, batch))
    assert not np.array_equal(out, augment(jax.random.key(6), batch))
    for options in ({}, {"flip": False, "crop_padding": 2, "pad_mode": "constant"}):
        fn = functools.partial(augment, **options)
        np.testing.assert_array_equal(jax.jit(fn)(key, batch), fn(key, batch))
    pixels = jnp.arange(2 * 6 * 6, dtype=jnp.uint8).reshape(2, 6, 6, 1)
    assert augment(key, pixels).dtype == jnp.uint8
    np.testing.assert_array_equal(augment(key, batch, flip=False, crop_padding=0), batch)


def test_augment_errors(batch):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="images must be"):
        augment(key, batch[0])
    with pytest.raises(ValueError, match="crop_padding"):
        augment(key, batch, crop_padding=8)  # reflect needs padding < H
    with pytest.raises(ValueError, match="crop_padding"):
        augment(key, batch, crop_padding=-1)
    with pytest.raises(ValueError, match="pad_mode"):
        augment(key, batch, pad_mode="edge")
    assert augment(key, batch, crop_padding=8, pad_mode="constant").shape == batch.shape
