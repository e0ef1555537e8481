"""IMDb pipeline: parquet folders, cleaning, seeded subsets, GPT-2 tokens and masks."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flax_cronos.data.imdb import clean_text, load_imdb, load_tokenizer, tokenize

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TOKENIZER = SHARED / "gpt2-tokenizer"
IMDB = SHARED / "imdb"


@pytest.fixture
def folder(tmp_path):
    texts = [f"Review {i}.<br /><br />Line two<BR>of {i}." for i in range(10)]
    pd.DataFrame({"id": range(10), "rating": [8, 2] * 5, "label": [1, 0] * 5,
                  "text": texts}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"id": range(3), "rating": 0, "text": ["a", "b", "c"]}).to_parquet(
        tmp_path / "unsup.parquet")
    return tmp_path


def test_html_breaks_become_single_spaces():
    assert clean_text("Great.<br /><br />Really <br/>great<BR>film ") == "Great. Really great film"


def test_local_parquet_reviews_keep_their_labels_in_a_seeded_order(folder):
    texts, labels = load_imdb(folder, "train")
    assert sorted(texts) == sorted(f"Review {i}. Line two of {i}." for i in range(10))
    for text, label in zip(texts, labels):                    # even ids are positive
        assert label == 1 - int(text.split()[1].rstrip(".")) % 2
    again, _ = load_imdb(folder, "train")
    other, _ = load_imdb(folder, "train", seed=1)
    assert again == texts and other != texts
    subset, subset_labels = load_imdb(folder, "train", size=4)
    assert subset == texts[:4] and list(subset_labels) == list(labels[:4])
    _, unlabelled = load_imdb(folder, "unsup")
    assert list(unlabelled) == [-1, -1, -1]


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "valid"}, "split must be one of"), ({"split": "test"}, "test.parquet"),
    ({"size": 11}, "size must be in 1..10")])
def test_bad_requests_name_what_is_wrong(folder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_imdb(folder, **kwargs)


def test_the_hub_unreachable_offline_is_a_clear_error():
    with pytest.raises(ValueError, match="give a local folder"):
        load_imdb(None, "train")


@pytest.mark.skipif(not TOKENIZER.is_dir(), reason=f"no GPT-2 tokenizer at {TOKENIZER}")
def test_gpt2_tokens_truncated_and_right_padded():
    tokenizer = load_tokenizer(TOKENIZER)
    batch = tokenize(["Hello world", "Hello world " * 20], tokenizer, max_len=6)
    np.testing.assert_array_equal(batch["input_ids"][0], [15496, 995, 50256, 50256, 50256, 50256])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 0, 0, 0, 0], [1] * 6])
    assert batch["input_ids"].dtype == np.int32
    with pytest.raises(ValueError, match="not a folder"):
        load_tokenizer(TOKENIZER / "missing")


@pytest.mark.skipif(not IMDB.is_dir(), reason=f"no IMDb parquet files at {IMDB}")
def test_the_real_imdb_test_split_is_balanced():
    texts, labels = load_imdb(IMDB, "test")
    assert len(texts) == 25_000 and np.sum(labels == 1) == 12_500
    assert not any("<br" in text for text in texts[:1000])
