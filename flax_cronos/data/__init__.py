"""Input pipelines; they know nothing of models."""

from flax_cronos.data.imdb import clean_text, load_imdb, load_tokenizer, tokenize
from flax_cronos.data.images import (ChannelStats, ImageSet, apply_normalization, augment,
                                     channel_stats, load_cifar10, load_fashion_mnist,
                                     load_hub_images, load_image_folder, normalize, read_idx,
                                     standardize, subset)

__all__ = ["clean_text", "load_imdb", "load_tokenizer", "tokenize", "ChannelStats", "ImageSet",
           "apply_normalization", "augment", "channel_stats", "load_cifar10", "load_fashion_mnist",
           "load_hub_images", "load_image_folder", "normalize", "read_idx", "standardize",
           "subset"]
