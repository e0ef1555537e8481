"""Parallel decoding of encoded images (files or bytes) to one uint8 array, shared by all loaders.

Every image goes through :func:`decode_image`: open with Pillow, convert to ``mode``, and, when
a ``size`` is given, resize the centred square of side ``crop_ratio`` × the shorter side to
``size`` × ``size`` (the ImageNet evaluation transform, resize to 256 then centre crop 224, for
``crop_ratio=0.875``; ``crop_ratio=1`` crops only the longer side).
"""

import io
import itertools
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

ON_ERROR = ("raise", "skip", "report")
MODES = ("RGB", "L")
SHOWN = 5  # unreadable images named in a warning
BATCH = 32  # images per thread-pool task: small images cost less than a task's overhead

ImageSource = Union[str, Path, bytes, dict]


class ImageSet(NamedTuple):
    """Decoded images with their labels.

    Attributes:
        x: uint8 [n, H, W, 3] pixels ([n, H, W] for mode "L").
        y: int32 [n] labels 0..len(class_names)−1.
        class_names: the name of each label.
        skipped: the unreadable images dropped under ``on_error="skip"`` or ``"report"``
            (file paths or row descriptions); empty otherwise.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]


def check_options(size: Optional[int], crop_ratio: float, mode: str, on_error: str) -> None:
    """Raises ValueError for a bad value of the options every loader shares."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None; got {size!r}")
    if not 0 < crop_ratio <= 1:
        raise ValueError(f"crop_ratio must be in (0, 1]; got {crop_ratio!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}; got {on_error!r}")


def _open(source: ImageSource) -> Image.Image:
    """Opens a path, encoded bytes, or a ``datasets.Image(decode=False)`` cell {bytes, path}."""
    if isinstance(source, dict):
        source = source["bytes"] if source.get("bytes") is not None else source["path"]
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    return Image.open(source)


def _crop_box(width: int, height: int, crop_ratio: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the centred square of side crop_ratio × the shorter side."""
    side = crop_ratio * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def decode_image(source: ImageSource, size: Optional[int] = None, *, crop_ratio: float = 0.875,
                 mode: str = "RGB") -> np.ndarray:
    """Decodes one image, optionally centre-cropped to a square and resized.

    With a ``size``, the centred square of side ``crop_ratio`` × the shorter side is resized
    (bilinear, antialiased) to ``size`` × ``size`` in one step: the ImageNet evaluation
    transform "resize the shorter side to size / crop_ratio (256), centre crop size (224)"
    without rounding the intermediate size; ``PIL.ImageOps.fit(image, (size, size),
    bleed=(1 − crop_ratio) / 2)`` computes the same. A JPEG that is to shrink is decoded at the
    smallest DCT scale (1/2, 1/4, 1/8) that keeps the shorter side ≥ size / crop_ratio
    (Pillow's draft mode, as in ``Image.thumbnail``): several times faster for large images,
    within a few grey levels of a full-size decode.

    Args:
        source: a file path, encoded bytes, or a dict {"bytes", "path"} (a Hugging Face
            ``datasets.Image(decode=False)`` value; bytes are used when present).
        size: side of the square output; None keeps the stored size and crops nothing.
        crop_ratio: the crop's share of the shorter side, in (0, 1].
        mode: "RGB" or "L" (grey).

    Returns:
        uint8 [size, size, 3] ([size, size] for "L"; the stored H, W when size is None).
    """
    with _open(source) as image:
        if size is None:
            return np.asarray(image.convert(mode))
        width, height = image.size
        box = _crop_box(width, height, crop_ratio)
        needed = math.ceil(size / crop_ratio)
        drafted = image.draft(None, (needed, needed))
        if drafted is not None:  # the box in the coordinates of the reduced image
            scale = drafted[1][2] / width
            box = tuple(scale * coordinate for coordinate in box)
        image = image.convert(mode)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box))


def _try_decode(source: ImageSource, size: Optional[int], crop_ratio: float,
                mode: str) -> Union[np.ndarray, Exception]:
    """The pixels, or the exception that a damaged image raised (Pillow raises many kinds)."""
    try:
        return decode_image(source, size, crop_ratio=crop_ratio, mode=mode)
    except Exception as error:  # noqa: BLE001 -- any decoding failure makes the image unreadable
        return error


def _store(x: Optional[np.ndarray], row: int, pixels: np.ndarray, n: int, name: str) -> np.ndarray:
    """Writes ``pixels`` into row ``row`` of x [n, ...], allocated from the first image's shape."""
    if x is None:
        x = np.empty((n, *pixels.shape), np.uint8)
    elif pixels.shape != x.shape[1:]:
        raise ValueError(f"image {name} has shape {pixels.shape} but earlier ones {x.shape[1:]}; "
                         "pass size= to resize them all to one square")
    x[row] = pixels
    return x


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:SHOWN]) + (", …" if len(names) > SHOWN else "")


def decode_images(sources: Sequence[Any], names: Sequence[str], *, size: Optional[int] = None,
                  crop_ratio: float = 0.875, mode: str = "RGB", workers: Optional[int] = None,
                  on_error: str = "raise", progress: bool = False,
                  desc: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decodes images in a thread pool (Pillow releases the GIL), in the order given.

    Each task decodes ``BATCH`` consecutive images; the first unreadable one under "raise"
    cancels the tasks not yet started.

    Args:
        sources: n images as :func:`decode_image` takes them; ``sources[i]`` is read in a worker
            thread, so a lazy sequence (a ``datasets`` column) is read as it is decoded.
        names: n descriptions (paths) used in messages.
        size, crop_ratio, mode: as in :func:`decode_image`.
        workers: threads; None: ``ThreadPoolExecutor``'s default (CPU count + 4, at most 32).
        on_error: "raise" (ValueError naming the first unreadable image), "skip" (drop them
            and warn) or "report" (drop them silently; the caller reports them).
        progress: show a tqdm bar.
        desc: the bar's label.

    Returns:
        (x uint8 [m, ...] of the readable images, kept int [m] their indices in ``sources``,
        skipped: the names of the n − m unreadable ones).
    """
    n = len(sources)
    if n == 0:
        raise ValueError("sources is empty: there are no images to decode")

    def decode_batch(start: int) -> list[Union[np.ndarray, Exception]]:
        return [_try_decode(sources[i], size, crop_ratio, mode)
                for i in range(start, min(start + BATCH, n))]

    x, failed = None, []
    pool = ThreadPoolExecutor(workers)
    try:
        results = itertools.chain.from_iterable(pool.map(decode_batch, range(0, n, BATCH)))
        for i, result in enumerate(tqdm(results, total=n, desc=desc, disable=not progress)):
            if not isinstance(result, Exception):
                x = _store(x, i, result, n, names[i])
            elif on_error == "raise":
                raise ValueError(f"cannot read image {names[i]}: {result}") from result
            else:
                failed.append((i, result))
    finally:
        pool.shutdown(cancel_futures=True)
    skipped = tuple(names[i] for i, _ in failed)
    if x is None:
        raise ValueError(f"none of the {n} images could be read, e.g. {skipped[0]}: "
                         f"{failed[0][1]}")
    if on_error == "skip" and failed:
        warnings.warn(f"skipped {len(failed)} unreadable of {n} images: {_shown(skipped)} "
                      f"(first error: {failed[0][1]})", stacklevel=3)
    kept = np.setdiff1d(np.arange(n), [i for i, _ in failed])
    return (x[kept] if failed else x), kept, skipped
