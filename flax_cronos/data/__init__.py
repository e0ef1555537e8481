"""Input pipelines; they know nothing of models."""

from flax_cronos.data.imdb import clean_text, load_imdb, load_tokenizer, tokenize
from flax_cronos.data.images import load_cifar10, load_fashion_mnist, read_idx, standardize, subset

__all__ = ["clean_text", "load_imdb", "load_tokenizer", "tokenize", "load_cifar10", "load_fashion_mnist", "read_idx", "standardize", "subset"]
