"""Image loaders read files written here by hand (IDX, parquet of JPEGs) and the shared data."""

import gzip
import io
import re
import struct
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flax_cronos.data import load_cifar10, load_fashion_mnist, read_idx, standardize, subset

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder {DATA} is absent")


def write_idx(path, array, magic):
    """The IDX format: a big-endian magic number, one big-endian uint32 per dimension, the bytes."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", 5), ("t10k", 3)):
        images, labels = rng.integers(0, 256, (n, 4, 6)), rng.integers(0, 10, n)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 0x00000803)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x00000801)
        arrays[prefix] = images, labels
    return tmp_path, arrays


def test_idx_files_read_back_exactly(idx_folder):
    folder, arrays = idx_folder
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = load_fashion_mnist(folder, split)
        assert x.dtype == np.uint8 and y.dtype == np.int32
        np.testing.assert_array_equal(x, arrays[prefix][0])
        np.testing.assert_array_equal(y, arrays[prefix][1])
    np.testing.assert_array_equal(read_idx(folder / "t10k-labels-idx1-ubyte.gz"), arrays["t10k"][1])


def test_idx_errors(tmp_path, idx_folder):
    folder, _ = idx_folder
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(folder, "validation")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz") as error:
        load_fashion_mnist(folder, "test")
    assert str(folder) in str(error.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        load_fashion_mnist(missing)
    bad = tmp_path / "floats.gz"
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">II", 0x00000D01, 2) + np.zeros(2, ">f4").tobytes())
    with pytest.raises(ValueError, match="unsigned bytes"):
        read_idx(bad)
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">II", 0x00000803, 2))  # three sizes announced, one written
    with pytest.raises(ValueError, match="unsigned bytes"):
        read_idx(bad)
    write_idx(bad, np.zeros((2, 3)), 0x00000802)
    with gzip.open(bad, "rb") as f:
        truncated = f.read()[:-3]
    with gzip.open(bad, "wb") as f:
        f.write(truncated)
    with pytest.raises(ValueError, match=r"header says shape \(2, 3\)"):
        read_idx(bad)


COLOURS = {"train": [(200, 30, 30), (30, 200, 30), (30, 30, 200)], "test": [(120, 120, 40)]}
LABELS = {"train": [5, 0, 3], "test": [3]}


def jpeg(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG", quality=100)
    return buffer.getvalue()


@pytest.fixture
def cifar_file(tmp_path):
    rows = [(split, label, colour) for split in ("train", "test")
            for label, colour in zip(LABELS[split], COLOURS[split])]
    table = pa.table({"split": [r[0] for r in rows],
                      "label": pa.array([r[1] for r in rows], pa.int64()),
                      "name": [f"class{r[1]}/{i:04d}.jpg" for i, r in enumerate(rows)],
                      "jpeg": pa.array([jpeg(r[2]) for r in rows], pa.binary())})
    folder = tmp_path / "cifar10"
    folder.mkdir()
    pq.write_table(table, folder / "tiny.parquet")
    return folder / "tiny.parquet"


def flat(colours, n=32):
    return np.broadcast_to(np.array(colours, np.uint8)[:, None, None, :], (len(colours), n, n, 3))


def test_cifar_parquet_decodes(cifar_file):
    for path in (cifar_file, cifar_file.parent):
        for split in ("train", "test"):
            x, y = load_cifar10(path, split)
            assert x.dtype == np.uint8 and x.shape == (len(LABELS[split]), 32, 32, 3)
            np.testing.assert_allclose(x, flat(COLOURS[split]), atol=3)
            np.testing.assert_array_equal(y, LABELS[split])
            assert y.dtype == np.int32


def test_cifar_classes_are_kept_and_relabelled_in_order(cifar_file):
    x, y = load_cifar10(cifar_file, classes=(3, 5))  # label 3 → 0, label 5 → 1
    np.testing.assert_array_equal(y, [1, 0])
    np.testing.assert_allclose(x, flat([COLOURS["train"][0], COLOURS["train"][2]]), atol=3)
    x, y = load_cifar10(cifar_file, classes=[0, 5, 3])
    np.testing.assert_array_equal(y, [1, 0, 2])
    np.testing.assert_array_equal(load_cifar10(cifar_file, classes=("cat", "dog"))[1], [1, 0])
    with pytest.raises(ValueError, match="classes"):
        load_cifar10(cifar_file, classes=(9,))  # none in the file


@pytest.mark.parametrize("classes", [(), (3, 3), (10,), (-1, 2), (1.5,), ("kitten",), "cat",
                                     (True,), ("cat", 3)])
def test_cifar_invalid_classes(cifar_file, classes):
    with pytest.raises(ValueError, match="classes"):
        load_cifar10(cifar_file, classes=classes)


def test_cifar_bad_paths_and_split(tmp_path, cifar_file):
    for path in (tmp_path / "nowhere", tmp_path / "empty"):
        if path.name == "empty":
            path.mkdir()
        with pytest.raises(ValueError, match=re.escape(str(path))):
            load_cifar10(path)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(cifar_file, "val")


def test_hub_fallback_decodes_the_image_column(monkeypatch):
    """With no path, the Hub copy is used; its image column is decoded to uint8 arrays."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 28, 28), np.uint8)
    colour = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
    labels = [4, 1, 4]
    hub = {"zalando-datasets/fashion_mnist": ("image", grey), "uoft-cs/cifar10": ("img", colour)}
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        column, images = hub[name]
        features = datasets.Features({column: datasets.Image(),
                                      "label": datasets.ClassLabel(num_classes=10)})
        rows = {column: [Image.fromarray(a) for a in images], "label": labels}
        return datasets.Dataset.from_dict(rows, features=features)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    x, y = load_fashion_mnist(split="test")
    np.testing.assert_array_equal(x, grey)  # PNG inside the data set: lossless
    np.testing.assert_array_equal(y, labels)
    x, y = load_cifar10(classes=(4,))
    np.testing.assert_array_equal(x, colour[[0, 2]])
    np.testing.assert_array_equal(y, [0, 0])
    assert calls == [("zalando-datasets/fashion_mnist", "test"), ("uoft-cs/cifar10", "train")]


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 4, 4, 3), np.uint8)
    x_test = rng.integers(0, 256, (7, 4, 4, 3), np.uint8)
    pixels = x_train.astype(np.float64) / 255
    mean, std = pixels.mean(), pixels.std()
    train, test = standardize(x_train, x_test)
    assert train.dtype == test.dtype == np.float32 and test.shape == x_test.shape
    np.testing.assert_allclose(train, (pixels - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(test, (x_test / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert abs(train.mean()) < 1e-5 and abs(train.std() - 1) < 1e-5
    with pytest.raises(ValueError, match="x_train"):
        standardize(np.full((3, 2), 7, np.uint8))


def test_subset_is_a_deterministic_sample_of_rows():
    x, y = np.arange(100).reshape(50, 2), np.arange(50)
    xs, ys = subset(x, y, 10, seed=1)
    assert len(set(ys.tolist())) == 10
    np.testing.assert_array_equal(xs, x[ys])  # rows stay paired with their labels
    np.testing.assert_array_equal(subset(x, y, 10, seed=1)[1], ys)
    assert not np.array_equal(subset(x, y, 10, seed=2)[1], ys)
    full = subset(x, y, None, seed=1)
    np.testing.assert_array_equal(full[0], x)
    np.testing.assert_array_equal(full[1], y)
    for size in (0, -1, 51):
        with pytest.raises(ValueError, match="size"):
            subset(x, y, size, seed=0)
    with pytest.raises(ValueError, match="rows"):
        subset(x, y[:-1], 5, seed=0)


@needs_data
def test_shared_fashion_mnist_and_cifar10():
    x, y = load_fashion_mnist(DATA / "fashion-mnist", "train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y), [6000] * 10)
    assert abs(x.mean() / 255 - 0.2860) < 1e-3  # the published training-set pixel mean

    x, y = load_cifar10(DATA / "cifar10", "test")
    assert x.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
    # the commonly published per-channel means of the CIFAR-10 test set (JPEG changes them < 1e-3)
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)) / 255, [0.4942, 0.4851, 0.4504], atol=1e-3)

    x, y = load_cifar10(DATA / "cifar10", "train", classes=(3, 5))
    assert x.shape == (10000, 32, 32, 3)
    assert set(y.tolist()) == {0, 1} and np.bincount(y).tolist() == [5000, 5000]
