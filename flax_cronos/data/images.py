"""Image classification data: Fashion-MNIST and CIFAR-10 as NumPy arrays, and their preprocessing.

Each loader reads a local copy when given ``path`` and otherwise the Hugging Face Hub
(``zalando-datasets/fashion_mnist``, ``uoft-cs/cifar10``). Pixels stay uint8 until
:func:`standardize`; labels are int32.
"""

import gzip
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SPLITS = ("train", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

PathLike = Union[str, Path]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")


def _from_hub(name: str, split: str, image_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Loads a Hub image data set as (x uint8 [n, H, W(, 3)], y int32 [n])."""
    import datasets  # slow to import; only needed here

    data = datasets.load_dataset(name, split=split)
    x = np.stack([np.asarray(image) for image in data[image_column]])
    return x.astype(np.uint8), np.asarray(data["label"], np.int32)


def read_idx(path: PathLike) -> np.ndarray:
    """Reads a gzipped IDX file of unsigned bytes (the MNIST format).

    The header is a magic number 0x000008NN (0x08 = unsigned byte, NN = number of dimensions)
    followed by NN big-endian uint32 sizes; the data follow in C order.

    Args:
        path: the ``.gz`` file.

    Returns:
        uint8 array of the stored shape, e.g. [n, 28, 28] images or [n] labels.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or len(data) < 4 + 4 * data[3]:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic 0x000008NN)")
    ndim = data[3]
    shape = tuple(np.frombuffer(data, ">u4", count=ndim, offset=4).tolist())
    x = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if x.size != np.prod(shape):
        raise ValueError(f"{path} holds {x.size} values but its header says shape {shape}")
    return x.reshape(shape)


def load_fashion_mnist(path: Optional[PathLike] = None,
                       split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images and labels.

    Args:
        path: folder with the original IDX files (``train-images-idx3-ubyte.gz``,
            ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
            ``t10k-labels-idx1-ubyte.gz``); None loads ``zalando-datasets/fashion_mnist``
            from the Hugging Face Hub.
        split: "train" (60,000 images) or "test" (10,000).

    Returns:
        (x uint8 [n, 28, 28], y int32 [n] labels 0..9).
    """
    _check_split(split)
    if path is None:
        return _from_hub("zalando-datasets/fashion_mnist", split, "image")
    folder = Path(path)
    files = [folder / name for name in FASHION_MNIST_FILES[split]]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        raise ValueError(f"path {folder} must be a folder with the Fashion-MNIST IDX files; "
                         f"missing {missing}")
    x, y = (read_idx(file) for file in files)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{files[0]} and {files[1]} must hold [n, H, W] images and [n] labels; "
                         f"got shapes {x.shape} and {y.shape}")
    return x, y.astype(np.int32)


def _cifar10_file(path: PathLike) -> Path:
    """The parquet file itself, or the only ``*.parquet`` in the folder ``path``."""
    path = Path(path)
    expected = "a CIFAR-10 parquet file (columns split, label, jpeg) or a folder with exactly one"
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"path {path} does not exist; expected {expected}")
    found = sorted(path.glob("*.parquet"))
    if len(found) != 1:
        raise ValueError(f"path {path}: expected {expected}; found {[f.name for f in found]}")
    return found[0]


def _check_classes(classes: Sequence[int]) -> np.ndarray:
    classes = np.asarray(classes)
    if (classes.ndim != 1 or classes.size == 0 or not np.issubdtype(classes.dtype, np.integer)
            or len(set(classes.tolist())) != classes.size
            or classes.min() < 0 or classes.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"classes must be distinct labels in 0..{len(CIFAR10_CLASSES) - 1}; "
                         f"got {classes.tolist()}")
    return classes


def _select(y: np.ndarray, classes: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows to keep ([n] bool mask) and their labels, relabelled by position in ``classes``."""
    if classes is None:
        return np.ones(len(y), bool), y
    lookup = np.full(len(CIFAR10_CLASSES), -1, np.int32)
    lookup[classes] = np.arange(len(classes))
    new = lookup[y]
    return new >= 0, new[new >= 0]


def load_cifar10(path: Optional[PathLike] = None, split: str = "train",
                 classes: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images and labels, optionally restricted to some classes.

    The local copy is one parquet with columns ``split`` (train/test), ``label`` (0..9) and
    ``jpeg`` (encoded image bytes), decoded with Pillow: about 10 s for the 50,000 training
    images (one core); ``classes`` are selected before decoding.

    Args:
        path: that parquet file or its folder; None loads ``uoft-cs/cifar10`` from the
            Hugging Face Hub.
        split: "train" (50,000 images) or "test" (10,000).
        classes: labels to keep, e.g. (3, 5) for cat vs dog; they become 0..len(classes)−1
            in the given order. None keeps all ten classes as they are.

    Returns:
        (x uint8 [n, 32, 32, 3], y int32 [n]).
    """
    _check_split(split)
    classes = None if classes is None else _check_classes(classes)
    if path is None:
        x, y = _from_hub("uoft-cs/cifar10", split, "img")
        keep, y = _select(y, classes)
        return x[keep], y
    file = _cifar10_file(path)
    table = pq.read_table(file, columns=["label", "jpeg"], filters=[("split", "==", split)])
    keep, y = _select(table.column("label").to_numpy().astype(np.int32), classes)
    if not keep.any():
        raise ValueError(f"{file} has no {split} images" + (
            "" if classes is None else f" of classes {classes.tolist()}"))
    jpegs = table.column("jpeg").filter(pa.array(keep)).to_pylist()
    x = np.stack([np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")) for jpeg in jpegs])
    return x, y


def _rescale(x: np.ndarray, shift: float, scale: float) -> np.ndarray:
    """float32 (x − shift) / scale, in place on one fresh copy (large arrays are slow to allocate)."""
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
