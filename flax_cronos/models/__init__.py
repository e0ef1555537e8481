"""Backbones; they know nothing of CRONOS."""

from flax_cronos.models.cnn import SmallCNN
from flax_cronos.models.mlp import MLP, TwoLayerHead

__all__ = ["MLP", "SmallCNN", "TwoLayerHead"]
