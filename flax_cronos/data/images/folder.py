"""ImageNet-format folders, ``root/<split>/<class>/<image>``, read into arrays."""

from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from flax_cronos.data.images.decode import ImageSet, check_options, decode_images
from flax_cronos.data.images.selection import check_per_class, class_ids, row_order


def _image_suffixes() -> frozenset[str]:
    """Lower-case file extensions of the formats Pillow can open (.jpeg, .jpg, .png, …)."""
    return frozenset(suffix for suffix, kind in Image.registered_extensions().items()
                     if kind in Image.OPEN)


def _class_folders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` sorted by name, leaving out hidden ones (".cache")."""
    found = sorted(path for path in folder.iterdir()
                   if path.is_dir() and not path.name.startswith("."))
    if not found:
        raise ValueError(f"{folder} holds no class folders; expected {folder}/<class>/<images>")
    return found


def _image_files(folder: Path, per_class: Optional[int]) -> list[Path]:
    """The first ``per_class`` image files of a class folder, sorted by name."""
    suffixes = _image_suffixes()
    files = sorted(path for path in folder.iterdir()
                   if path.suffix.lower() in suffixes and path.is_file())
    if not files:
        raise ValueError(f"class folder {folder} holds no image files (.jpeg, .jpg, .png, …)")
    return files[:per_class]


def _split_folder(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise ValueError(f"root {root} is not a folder; expected root/<split>/<class>/<images>")
    folder = root / split
    if not folder.is_dir():
        splits = sorted(path.name for path in root.iterdir() if path.is_dir())
        raise ValueError(f"split folder {folder} does not exist; {root} holds {splits}")
    return folder


def load_image_folder(root: Union[str, Path], split: str = "train", *,
                      classes: Optional[Sequence[Union[str, int]]] = None,
                      per_class: Optional[int] = None, size: Optional[int] = 224,
                      crop_ratio: float = 0.875, mode: str = "RGB",
                      workers: Optional[int] = None, on_error: str = "raise",
                      seed: Optional[int] = 0, progress: bool = True) -> ImageSet:
    """Images of an ImageNet-format folder tree, resized and centre-cropped to one square size.

    The tree is ``root/<split>/<class>/<image>`` (``root/train/n01440764/n01440764_10026.JPEG``);
    an image is any file with an extension Pillow opens (case-insensitive: .JPEG, .jpg, .png, …).
    Classes are the split's sub-folders sorted by name (hidden ones left out), files are sorted
    by name, and the rows are then shuffled by ``seed`` so that consecutive batches mix classes:
    the result depends only on the files and the arguments. Each image is converted to ``mode``
    and its centred square of side ``crop_ratio`` × the shorter side resized (bilinear) to
    ``size`` × ``size``: the standard ImageNet evaluation transform (resize to 256, centre crop
    224) for the defaults; see :func:`decode_image`. Decoding runs in a thread pool.

    Args:
        root: the folder holding the split folders.
        split: the split folder's name ("train", "val", …).
        classes: class folder names (WordNet ids such as "n01440764") or labels (positions in
            the sorted names), distinct; they become labels 0..len(classes)−1 in the given
            order. None: all class folders.
        per_class: load only the first ``per_class`` files (sorted by name) of each class.
        size: side of the square output; None keeps the stored size (all must be equal).
        crop_ratio: the crop's share of the shorter side, in (0, 1]; 1 crops only the longer
            side.
        mode: "RGB" or "L" (grey).
        workers: decoding threads; None: Python's default (CPU count + 4, at most 32).
        on_error: for an image Pillow cannot read, "raise" a ValueError naming it, "skip" it
            with a warning, or "report" it only in ``skipped``. Skipped images drop their label
            too.
        seed: seed of the row shuffle; None keeps the sorted order (class by class).
        progress: show a tqdm progress bar.

    Returns:
        ImageSet(x uint8 [n, size, size, 3] ([n, size, size] for "L"), y int32 [n],
        class_names: the chosen class folder names, label order; skipped: paths dropped).
    """
    check_options(size, crop_ratio, mode, on_error)
    check_per_class(per_class)
    folder = _split_folder(Path(root), split)
    class_folders = _class_folders(folder)
    chosen = [class_folders[i] for i in class_ids(classes, [f.name for f in class_folders])]
    files, labels = [], []
    for label, class_folder in enumerate(chosen):
        found = _image_files(class_folder, per_class)
        files += found
        labels += [label] * len(found)
    order = row_order(len(files), seed)
    files, labels = [files[i] for i in order], np.asarray(labels, np.int32)[order]
    x, kept, skipped = decode_images(files, [str(file) for file in files], size=size,
                                     crop_ratio=crop_ratio, mode=mode, workers=workers,
                                     on_error=on_error, progress=progress, desc=str(folder))
    return ImageSet(x, labels[kept], tuple(f.name for f in chosen), skipped)
