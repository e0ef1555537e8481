"""Image data sets in the Hugging Face ``datasets`` format: Hub names, local folders, parquet."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from flax_cronos.data.images.decode import ImageSet, check_options, decode_images
from flax_cronos.data.images.selection import class_ids, row_order, select_rows

STRINGS = ("string", "large_string")
ENCODED = ("binary", "large_binary") + STRINGS  # encoded image bytes, or file paths


def _open_dataset(name_or_path: Union[str, Path], split: str, options: dict[str, Any]):
    """The split as a ``datasets.Dataset``: a parquet file, or anything ``load_dataset`` reads."""
    import datasets  # slow to import; only needed here

    path = Path(name_or_path)
    if not path.is_file():
        return datasets.load_dataset(str(name_or_path), split=split, **options)
    if path.suffix != ".parquet":
        raise ValueError(f"file {path} must be a .parquet file (or pass its folder or a Hub name)")
    return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split, **options)


def _labels(dataset, column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(int [n] labels, class names): ClassLabel names; else "0".."k−1" for integers, or the
    sorted distinct values of a string column."""
    import datasets

    feature = dataset.features[column]
    values = dataset.with_format("numpy", columns=[column])[:][column]
    if isinstance(feature, datasets.ClassLabel):
        return values, tuple(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return values, tuple(str(label) for label in range(values.max() + 1))
    if isinstance(feature, datasets.Value) and feature.dtype in STRINGS:
        names, labels = np.unique(values.astype(str), return_inverse=True)
        return labels, tuple(names.tolist())
    raise ValueError(f"label column {column!r} must hold class labels, integers or strings; "
                     f"it is {feature}")


def _undecoded(dataset, column: str):
    """The data set with ``column`` left encoded: {bytes, path} cells, bytes, or paths."""
    import datasets

    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return dataset.cast_column(column, datasets.Image(decode=False))
    if isinstance(feature, datasets.Value) and feature.dtype in ENCODED:
        return dataset
    raise ValueError(f"image column {column!r} must hold images (datasets.Image), encoded bytes "
                     f"or file paths; it is {feature}")


def load_hub_images(name_or_path: Union[str, Path], split: str = "train", *,
                    image_column: str = "image", label_column: str = "label",
                    classes: Optional[Sequence[Union[str, int]]] = None,
                    per_class: Optional[int] = None, size: Optional[int] = None,
                    crop_ratio: float = 0.875, mode: str = "RGB",
                    workers: Optional[int] = None, on_error: str = "raise",
                    seed: Optional[int] = 0, progress: bool = True,
                    **load_options: Any) -> ImageSet:
    """Images of a Hugging Face image data set, decoded like :func:`load_image_folder`.

    Reads a Hub data set (``"frgfm/imagenette"``, ``"uoft-cs/cifar10"``), a local folder that
    ``datasets.load_dataset`` reads (parquet files named by split, ``data/train-*.parquet``,
    or an image folder), or one ``.parquet`` file (read as ``split``). ``datasets`` converts
    it once to its Arrow cache. Rows are chosen by label before any image is decoded, then
    shuffled by ``seed``; images are decoded in a thread pool as :func:`decode_image` does.

    Args:
        name_or_path: Hub name, local folder, or parquet file.
        split: the split to read.
        image_column: images (``datasets.Image``), encoded image bytes, or file paths.
        label_column: a ``ClassLabel`` (names from its feature), integers (names "0".."k−1")
            or strings (names: the sorted distinct values).
        classes: class names or labels, distinct; they become labels 0..len(classes)−1 in the
            given order. None: all classes.
        per_class: load only the first ``per_class`` rows (in data set order) of each class.
        size: side of the square output (the centre crop, resized); None keeps the stored
            size, which must then be the same for all images.
        crop_ratio: the crop's share of the shorter side, in (0, 1].
        mode: "RGB" or "L" (grey).
        workers: decoding threads; None: Python's default (CPU count + 4, at most 32).
        on_error: for an unreadable image, "raise" a ValueError naming its row, "skip" it with
            a warning, or "report" it only in ``skipped``; a skipped image drops its label too.
        seed: seed of the row shuffle; None keeps the data set's order.
        progress: show a tqdm progress bar.
        **load_options: passed to ``datasets.load_dataset`` (``cache_dir``, ``revision``, …).

    Returns:
        ImageSet(x uint8 [n, H, W, 3] ([n, H, W] for "L"; H = W = size unless None),
        y int32 [n], class_names in label order, skipped: "<name> (<split>) row <i>" entries).
    """
    check_options(size, crop_ratio, mode, on_error)
    dataset = _open_dataset(name_or_path, split, load_options)
    where = f"{name_or_path} ({split})"
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{where} has no column {missing}; its columns: {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError(f"{where} has no rows")
    labels, names = _labels(dataset, label_column)
    ids = class_ids(classes, names)
    rows, y = select_rows(labels, ids, len(names), per_class)
    if len(rows) == 0:
        raise ValueError(f"{where} has no images of classes {[names[i] for i in ids]}")
    order = row_order(len(rows), seed)
    rows, y = rows[order], y[order]
    images = _undecoded(dataset, image_column).select(rows)[image_column]
    x, kept, skipped = decode_images(images, [f"{where} row {row}" for row in rows], size=size,
                                     crop_ratio=crop_ratio, mode=mode, workers=workers,
                                     on_error=on_error, progress=progress, desc=where)
    return ImageSet(x, y[kept], tuple(names[i] for i in ids), skipped)
