"""Fashion-MNIST (IDX files) and CIFAR-10 (one parquet of JPEGs), each also from the Hub.

Pixels stay uint8 at their stored size; labels are int32. Without a ``path`` the loaders read
``zalando-datasets/fashion_mnist`` and ``uoft-cs/cifar10`` through :func:`load_hub_images`.
"""

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pyarrow.parquet as pq

from flax_cronos.data.images.decode import decode_images
from flax_cronos.data.images.hub import load_hub_images
from flax_cronos.data.images.selection import class_ids, select_rows

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
        hub = load_hub_images("zalando-datasets/fashion_mnist", split, mode="L", seed=None,
                              progress=False)
        return hub.x, hub.y
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


def load_cifar10(path: Optional[PathLike] = None, split: str = "train",
                 classes: Optional[Sequence[Union[str, int]]] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images and labels, optionally restricted to some classes.

    The local copy is one parquet with columns ``split`` (train/test), ``label`` (0..9) and
    ``jpeg`` (encoded image bytes), decoded in a thread pool (:func:`decode_images`);
    ``classes`` are selected before decoding.

    Args:
        path: that parquet file or its folder; None loads ``uoft-cs/cifar10`` from the
            Hugging Face Hub.
        split: "train" (50,000 images) or "test" (10,000).
        classes: labels (e.g. (3, 5) for cat vs dog) or names ("cat", "dog") to keep; they
            become 0..len(classes)−1 in the given order. None keeps all ten classes as they are.

    Returns:
        (x uint8 [n, 32, 32, 3], y int32 [n]).
    """
    _check_split(split)
    if path is None:
        hub = load_hub_images("uoft-cs/cifar10", split, image_column="img", classes=classes,
                              seed=None, progress=False)
        return hub.x, hub.y
    file = _cifar10_file(path)
    table = pq.read_table(file, columns=["label", "jpeg"], filters=[("split", "==", split)])
    ids = class_ids(classes, CIFAR10_CLASSES)
    rows, y = select_rows(table.column("label").to_numpy(), ids, len(CIFAR10_CLASSES))
    if len(rows) == 0:
        raise ValueError(f"{file} has no {split} images of classes "
                         f"{[CIFAR10_CLASSES[i] for i in ids]}")
    jpegs = table.column("jpeg").take(rows).to_pylist()
    x, _, _ = decode_images(jpegs, [f"{file} ({split}) row {row}" for row in rows])
    return x, y
