"""ImageNet-format folder trees for tests, written from CIFAR-10 test images.

:func:`imagenet_tree` writes ``root/<split>/<wnid>/<wnid>_NNNN.JPEG`` from real CIFAR-10 test
images (the shared data) or, when that is absent, from synthetic coloured shapes.
"""

import functools
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR = DATA / "cifar10" / "cifar10_jpeg_q75.parquet"


@functools.cache
def _cifar_jpegs(classes: int, count: int) -> tuple[tuple[bytes, ...], ...]:
    """The first ``count`` test-split JPEGs of each of CIFAR-10's first ``classes`` labels."""
    table = pq.read_table(CIFAR, columns=["label", "jpeg"], filters=[("split", "==", "test")])
    labels = table.column("label").to_numpy()
    jpegs = table.column("jpeg")
    return tuple(tuple(jpegs.take(np.flatnonzero(labels == label)[:count]).to_pylist())
                 for label in range(classes))


def _shape_jpeg(rng: np.random.Generator, label: int) -> bytes:
    """A 32×32 JPEG: a random background and a random box, ellipse or triangle by label."""
    image = Image.new("RGB", (32, 32), tuple(rng.integers(0, 256, 3).tolist()))
    x0, y0 = rng.integers(0, 12, 2).tolist()
    x1, y1 = rng.integers(20, 32, 2).tolist()
    colour = tuple(rng.integers(0, 256, 3).tolist())
    draw = ImageDraw.Draw(image)
    if label % 3 == 0:
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    elif label % 3 == 1:
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def wnid(label: int) -> str:
    """A WordNet-id-like class folder name."""
    return f"n{label:08d}"


def imagenet_tree(root: Path, *, classes: int = 3, per_class: int = 4,
                  splits: tuple[str, ...] = ("train", "val"),
                  synthetic: bool = not CIFAR.is_file()) -> dict[str, dict[str, list[Path]]]:
    """Writes ``root/<split>/<wnid>/<wnid>_NNNN.JPEG``: ``per_class`` 32×32 images per class.

    Args:
        root: folder to write in.
        classes: number of classes (at most 10); class k is CIFAR-10 label k, folder ``wnid(k)``.
        per_class: images per class and split; every image is distinct.
        splits: split folder names; each gets different images.
        synthetic: coloured shapes instead of CIFAR-10 (the default when the data is absent).

    Returns:
        {split: {class folder name: its files, sorted}}.
    """
    if synthetic:
        rng = np.random.default_rng(0)
        sources = [[_shape_jpeg(rng, label) for _ in range(per_class * len(splits))]
                   for label in range(classes)]
    else:
        sources = _cifar_jpegs(classes, per_class * len(splits))
    tree = {}
    for s, split in enumerate(splits):
        tree[split] = {}
        for label in range(classes):
            folder = root / split / wnid(label)
            folder.mkdir(parents=True)
            files = [folder / f"{wnid(label)}_{i:04d}.JPEG" for i in range(per_class)]
            for i, file in enumerate(files):
                file.write_bytes(sources[label][s * per_class + i])
            tree[split][wnid(label)] = files
    return tree


