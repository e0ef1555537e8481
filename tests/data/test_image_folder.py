"""ImageNet-format folders and Hugging Face image data sets, built in tmp_path from CIFAR-10.

:func:`imagenet_tree` writes a small ``root/<split>/<wnid>/<wnid>_NNNN.JPEG`` tree from real
CIFAR-10 test images (the shared data) or, when that is absent, from synthetic coloured shapes;
other tests may import it. Expected pixels are computed here independently with Pillow.
"""

import io
import re
import warnings
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from flax_cronos.data import ImageSet, load_hub_images, load_image_folder
from flax_cronos.data.images import decode_image
from tests.image_tree import CIFAR, imagenet_tree, wnid



def expected_pixels(source, size: int, crop_ratio: float = 0.875) -> np.ndarray:
    """uint8 [size, size, 3]: the centred square of side crop_ratio × the shorter side, resized."""
    with Image.open(source) as image:
        return np.asarray(ImageOps.fit(image.convert("RGB"), (size, size),
                                       Image.Resampling.BILINEAR, bleed=(1 - crop_ratio) / 2))


def pixels_to_class(tree_split: dict[str, list[Path]], size: int) -> dict[bytes, str]:
    lookup = {expected_pixels(file, size).tobytes(): name
              for name, files in tree_split.items() for file in files}
    assert len(lookup) == sum(map(len, tree_split.values())), "images must be distinct"
    return lookup


def assert_labels_match(data: ImageSet, lookup: dict[bytes, str]) -> None:
    """Every row's pixels are those of a file of the class folder its label names."""
    assert len(data.x) == len(data.y)
    for image, label in zip(data.x, data.y):
        assert lookup[image.tobytes()] == data.class_names[label]


@pytest.fixture
def tree(tmp_path):
    return tmp_path / "imagenet", imagenet_tree(tmp_path / "imagenet")


SIZE = 40


def load(root, split="train", **options):
    return load_image_folder(root, split, **{"size": SIZE, "progress": False, **options})


@pytest.mark.parametrize("synthetic", [False, True])
def test_folder_labels_match_the_class_folders(tmp_path, synthetic):
    if not synthetic and not CIFAR.is_file():
        pytest.skip(f"shared CIFAR-10 {CIFAR} is absent")
    tree = imagenet_tree(tmp_path, synthetic=synthetic)
    for split in ("train", "val"):
        data = load(tmp_path, split)
        assert isinstance(data, ImageSet) and data.skipped == ()
        assert data.x.shape == (12, SIZE, SIZE, 3) and data.x.dtype == np.uint8
        assert data.y.dtype == np.int32 and np.bincount(data.y).tolist() == [4, 4, 4]
        assert data.class_names == (wnid(0), wnid(1), wnid(2))
        assert_labels_match(data, pixels_to_class(tree[split], SIZE))
        assert len(set(data.y[:4].tolist())) > 1  # shuffled: batches mix classes


def test_folder_order_is_sorted_then_seeded(tree):
    root, files = tree
    ordered = load(root, seed=None)
    sorted_files = [file for name in sorted(files["train"]) for file in files["train"][name]]
    np.testing.assert_array_equal(ordered.x, [expected_pixels(f, SIZE) for f in sorted_files])
    np.testing.assert_array_equal(ordered.y, np.repeat([0, 1, 2], 4))
    first, again, other = load(root), load(root), load(root, seed=1)
    np.testing.assert_array_equal(first.x, again.x)
    np.testing.assert_array_equal(first.y, again.y)
    assert not np.array_equal(first.y, other.y)
    pairs = [sorted((image.tobytes(), label) for image, label in zip(data.x, data.y.tolist()))
             for data in (ordered, first, other)]
    assert pairs[0] == pairs[1] == pairs[2]  # the same rows, reordered


def test_folder_classes_subset_and_order(tree):
    root, files = tree
    lookup = pixels_to_class(files["train"], SIZE)
    for classes in ([wnid(2), wnid(0)], (2, 0)):
        data = load(root, classes=classes)
        assert data.class_names == (wnid(2), wnid(0))
        assert np.bincount(data.y).tolist() == [4, 4]
        assert_labels_match(data, lookup)
    with pytest.raises(ValueError, match=r"unknown class 'n99'.*n00000000, n00000001, n00000002"):
        load(root, classes=["n99"])
    for bad in ([], [wnid(1), 1], [3], wnid(1)):
        with pytest.raises(ValueError, match="classes"):
            load(root, classes=bad)


def test_folder_per_class_takes_the_first_sorted_files(tree):
    root, files = tree
    data = load(root, per_class=2, seed=None)
    firsts = [file for name in sorted(files["train"]) for file in files["train"][name][:2]]
    np.testing.assert_array_equal(data.x, [expected_pixels(f, SIZE) for f in firsts])
    np.testing.assert_array_equal(data.y, [0, 0, 1, 1, 2, 2])
    assert len(load(root, per_class=10).y) == 12  # fewer files than per_class: all of them
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="per_class"):
            load(root, per_class=bad)


def test_folder_file_selection(tree):
    """Extensions are case-insensitive, any format Pillow opens counts, other files and hidden
    folders are ignored; crop_ratio=1 keeps the whole shorter side; mode "L" gives grey."""
    root, files = tree
    source = files["train"][wnid(0)][0]
    folder = root / "train" / wnid(0)
    Image.open(source).save(folder / "extra.png")
    (folder / "extra.jpg").write_bytes(source.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (root / "train" / ".cache").mkdir()
    data = load(root, classes=[wnid(0)], seed=None, crop_ratio=1.0)
    assert data.x.shape == (6, SIZE, SIZE, 3)
    np.testing.assert_array_equal(data.x[:2], [expected_pixels(folder / "extra.jpg", SIZE, 1.0),
                                               expected_pixels(folder / "extra.png", SIZE, 1.0)])
    grey = load(root, classes=[wnid(0)], seed=None, mode="L", size=None)
    np.testing.assert_array_equal(grey.x[0], np.asarray(Image.open(source).convert("L")))


def test_decode_image_crops_the_centre_of_the_shorter_side(tmp_path):
    """60×40 (W×H), pixels numbered by position: crop_ratio 0.5 and size 20 is a plain crop."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[..., 0] = np.arange(60) * 4
    pixels[..., 1] = np.arange(40)[:, None] * 6
    file = tmp_path / "wide.png"
    Image.fromarray(pixels).save(file)
    np.testing.assert_array_equal(decode_image(file, 20, crop_ratio=0.5), pixels[10:30, 20:40])
    for crop_ratio in (1.0, 0.875, 0.3):
        np.testing.assert_array_equal(decode_image(file, 24, crop_ratio=crop_ratio),
                                      expected_pixels(file, 24, crop_ratio))
    np.testing.assert_array_equal(decode_image(file.read_bytes()), pixels)
    np.testing.assert_array_equal(decode_image({"bytes": None, "path": str(file)}, mode="L"),
                                  np.asarray(Image.fromarray(pixels).convert("L")))


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path):
    """Draft mode shrinks a 403×301 JPEG by 8 in the decoder: close to a full-size decode."""
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize(
        (403, 301), Image.Resampling.BICUBIC)
    file = tmp_path / "big.jpg"
    smooth.save(file, quality=95)
    with Image.open(file) as image:
        image.draft(None, (37, 37))
        assert image.size == (51, 38)  # the reduced decode, ceil(403 / 8) × ceil(301 / 8)
    difference = decode_image(file, 32).astype(int) - expected_pixels(file, 32)
    assert np.abs(difference).mean() < 1 and np.abs(difference).max() <= 4


@pytest.fixture
def broken_tree(tree):
    root, files = tree
    good = files["train"][wnid(0)][0].read_bytes()
    truncated = root / "train" / wnid(0) / "zz_truncated.JPEG"
    truncated.write_bytes(good[:len(good) // 2])
    text = root / "train" / wnid(1) / "zz_text.JPEG"
    text.write_text("this is not an image")
    return root, files, {str(truncated), str(text)}


def test_folder_unreadable_images_raise_by_default(broken_tree):
    root, _, _ = broken_tree
    with pytest.raises(ValueError, match=r"cannot read image .*zz_(truncated|text)\.JPEG"):
        load(root)


def test_folder_unreadable_images_are_skipped_with_a_warning(broken_tree):
    root, files, broken = broken_tree
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable of 14 images: .*zz_"):
        data = load(root, on_error="skip")
    assert set(data.skipped) == broken
    assert len(data.x) == 12
    assert_labels_match(data, pixels_to_class(files["train"], SIZE))


def test_folder_unreadable_images_are_reported_silently(broken_tree):
    root, files, broken = broken_tree
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load(root, on_error="report", workers=1)
    assert set(data.skipped) == broken and len(data.x) == 12
    assert_labels_match(data, pixels_to_class(files["train"], SIZE))


def test_folder_with_no_readable_image(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.png").write_text("text")
    with pytest.raises(ValueError, match=r"none of the 1 images could be read, e\.g\. .*x\.png"):
        load(tmp_path, on_error="skip")


def test_folder_errors(tmp_path, tree):
    root, _ = tree
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"root {re.escape(str(missing))} is not a folder"):
        load(missing)
    with pytest.raises(ValueError, match=r"folder .*test does not exist; .* \['train', 'val'\]"):
        load(root, "test")
    (root / "empty" / "n01").mkdir(parents=True)
    (root / "empty" / "n01" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"class folder .*n01 holds no image files"):
        load(root, "empty")
    (root / "no_classes").mkdir()
    with pytest.raises(ValueError, match="holds no class folders"):
        load(root, "no_classes")
    bad = {"size": 0, "crop_ratio": 1.5, "mode": "CMYK", "on_error": "ignore"}
    for option, value in bad.items():
        with pytest.raises(ValueError, match=option):
            load(root, **{option: value})


def hub_dataset(files: dict[str, list[Path]]) -> datasets.Dataset:
    """The tree's split as a Hugging Face data set: JPEG images and a ClassLabel by wnid."""
    names = sorted(files)
    rows = [(file, label) for label, name in enumerate(names) for file in files[name]]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names)})
    images = [{"bytes": file.read_bytes(), "path": None} for file, _ in rows]
    return datasets.Dataset.from_dict({"image": images, "label": [label for _, label in rows]},
                                      features=features)


def test_hub_parquet_file_decodes_like_the_folder(tmp_path, tree):
    _, files = tree
    file = tmp_path / "train.parquet"
    hub_dataset(files["train"]).to_parquet(file)
    options = {"size": SIZE, "progress": False, "cache_dir": str(tmp_path / "cache")}
    data = load_hub_images(file, "train", **options)
    assert data.class_names == (wnid(0), wnid(1), wnid(2)) and data.skipped == ()
    assert data.x.shape == (12, SIZE, SIZE, 3) and data.y.dtype == np.int32
    assert_labels_match(data, pixels_to_class(files["train"], SIZE))
    subset = load_hub_images(file, "train", classes=[wnid(2), 0], per_class=3, seed=None, **options)
    assert subset.class_names == (wnid(2), wnid(0))
    firsts = files["train"][wnid(0)][:3] + files["train"][wnid(2)][:3]  # data set order
    np.testing.assert_array_equal(subset.x, [expected_pixels(f, SIZE) for f in firsts])
    np.testing.assert_array_equal(subset.y, [1, 1, 1, 0, 0, 0])
    again = load_hub_images(file, "train", **options)
    np.testing.assert_array_equal(again.x, data.x)
    assert not np.array_equal(load_hub_images(file, "train", seed=3, **options).y, data.y)
    native = load_hub_images(file, "train", **{**options, "size": None})
    assert native.x.shape == (12, 32, 32, 3)


def test_hub_folder_of_split_files(tmp_path, tree):
    _, files = tree
    folder = tmp_path / "imagenette"
    (folder / "data").mkdir(parents=True)
    for split in ("train", "val"):
        hub_dataset(files[split]).to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    data = load_hub_images(folder, "val", size=SIZE, progress=False,
                           cache_dir=str(tmp_path / "cache"))
    assert_labels_match(data, pixels_to_class(files["val"], SIZE))


def test_hub_bytes_and_string_labels_with_unreadable_rows(tmp_path, tree):
    """A plain parquet (as CIFAR-10's local copy): binary JPEGs, string labels, two bad rows."""
    _, files = tree
    rows = [(f.read_bytes(), name) for name, fs in files["train"].items() for f in fs]
    rows += [(b"not an image", wnid(0)), (rows[0][0][:300], wnid(1))]
    file = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"jpeg": pa.array([r[0] for r in rows], pa.binary()),
                             "wnid": [r[1] for r in rows]}), file)
    options = {"image_column": "jpeg", "label_column": "wnid", "size": SIZE, "progress": False,
               "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ValueError, match=r"cannot read image .*plain\.parquet \(train\) row 1[23]"):
        load_hub_images(file, **options)
    with pytest.warns(UserWarning, match="skipped 2 unreadable of 14"):
        data = load_hub_images(file, on_error="skip", **options)
    assert data.class_names == (wnid(0), wnid(1), wnid(2))
    assert sorted(data.skipped) == [f"{file} (train) row 12", f"{file} (train) row 13"]
    assert_labels_match(data, pixels_to_class(files["train"], SIZE))
    with pytest.raises(ValueError, match=r"no column \['image', 'label'\]; its columns: "
                                         r"\['jpeg', 'wnid'\]"):
        load_hub_images(file, cache_dir=str(tmp_path / "cache"))


def test_hub_names_and_options_go_to_load_dataset(monkeypatch, tree):
    _, files = tree
    calls = []

    def load_dataset(name, split, **options):
        calls.append((name, split, options))
        return hub_dataset(files["train"])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = load_hub_images("frgfm/imagenette", "validation", size=SIZE, progress=False,
                           revision="v1")
    assert_labels_match(data, pixels_to_class(files["train"], SIZE))
    assert calls == [("frgfm/imagenette", "validation", {"revision": "v1"})]


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hub_errors(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"data\.csv must be a \.parquet file"):
        load_hub_images(tmp_path / "data.csv")
    file = tmp_path / "sizes.parquet"
    pq.write_table(pa.table({"image": [png(32, 32), png(20, 10)], "label": [0, 1]}), file)
    with pytest.raises(ValueError, match=r"shape \(10, 20, 3\) but earlier ones \(32, 32, 3\); "
                                         "pass size="):
        load_hub_images(file, seed=None, progress=False, cache_dir=str(tmp_path / "cache"))
    pq.write_table(pa.table({"image": [png(8, 8)], "label": [-1]}), file)
    with pytest.raises(ValueError, match="unlabelled"):
        load_hub_images(file, progress=False, cache_dir=str(tmp_path / "cache2"))
