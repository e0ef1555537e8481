"""IMDb movie reviews (Maas et al., 2011) tokenised for GPT-2.

Reviews come from a local folder of parquet files (``train.parquet``, ``test.parquet``,
``unsup.parquet`` with columns ``text`` and ``label``; ``../shared/data/imdb`` on the project's
machines) or from the Hugging Face Hub (``stanfordnlp/imdb``), both through ``datasets``. HTML
line breaks (``<br />``) become spaces. Tokens: GPT-2's byte-level BPE from a local folder
(``vocab.json`` + ``merges.txt``) or the Hub, truncated and right-padded to ``max_len`` with the
end-of-text token, with an attention mask (1 = token, 0 = padding).
"""

import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

SPLITS = ("train", "test", "unsup")
HUB_DATASET = "stanfordnlp/imdb"
_BREAKS = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Replaces HTML line breaks by spaces and collapses runs of whitespace."""
    return " ".join(_BREAKS.sub(" ", text).split())


def load_imdb(path: Optional[Union[str, Path]] = None, split: str = "train",
              size: Optional[int] = None, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Cleaned reviews and their labels, in a seeded random order.

    Args:
        path: folder holding ``{split}.parquet``; None loads ``stanfordnlp/imdb`` from the Hub.
        split: "train", "test" (25,000 labelled reviews each) or "unsup" (50,000, label −1).
        size: keep the first ``size`` reviews of the shuffled split; None keeps all.
        seed: the shuffle's seed.

    Returns:
        (texts, labels int32 [n]: 1 = positive, 0 = negative, −1 = unlabelled).
    """
    import datasets

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if path is None:
        try:
            dataset = datasets.load_dataset(HUB_DATASET, split=split)
        except Exception as error:                 # offline, unknown name, network failure
            raise ValueError(f"cannot load {HUB_DATASET!r} from the Hugging Face Hub ({error}); "
                             "give a local folder of parquet files instead") from None
    else:
        file = Path(path) / f"{split}.parquet"
        if not file.is_file():
            raise ValueError(f"path {path} must be a folder holding {split}.parquet; "
                             f"{file} does not exist")
        dataset = datasets.load_dataset("parquet", data_files={split: str(file)}, split=split)
    if size is not None and not 0 < size <= len(dataset):
        raise ValueError(f"size must be in 1..{len(dataset)} for the {split} split; got {size}")
    dataset = dataset.shuffle(seed=seed)
    if size is not None:
        dataset = dataset.select(range(size))
    labels = (np.asarray(dataset["label"], np.int32) if "label" in dataset.column_names
              else np.full(len(dataset), -1, np.int32))
    return [clean_text(text) for text in dataset["text"]], labels


def load_tokenizer(path: Optional[Union[str, Path]] = None):
    """GPT-2's tokenizer from a local folder or, with None, the Hub name "gpt2"; pads with
    the end-of-text token."""
    from transformers import GPT2TokenizerFast

    source = "gpt2" if path is None else str(path)
    if path is not None and not Path(path).is_dir():
        raise ValueError(f"tokenizer path {path} is not a folder (vocab.json and merges.txt)")
    try:
        tokenizer = GPT2TokenizerFast.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a GPT-2 tokenizer from {source!r}: {error}") from None
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def tokenize(texts: list[str], tokenizer, max_len: int) -> dict[str, np.ndarray]:
    """Token ids and attention mask, truncated and right-padded: {'input_ids',
    'attention_mask'} int32 [n, max_len] — the batch GPT2Features takes."""
    if max_len <= 0:
        raise ValueError(f"max_len must be positive; got {max_len}")
    encoded = tokenizer(texts, max_length=max_len, truncation=True, padding="max_length",
                        return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int32),
            "attention_mask": encoded["attention_mask"].astype(np.int32)}
