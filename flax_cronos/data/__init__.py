"""Input pipelines; they know nothing of models."""

from flax_cronos.data.images import load_cifar10, load_fashion_mnist, read_idx, standardize, subset

__all__ = ["load_cifar10", "load_fashion_mnist", "read_idx", "standardize", "subset"]
