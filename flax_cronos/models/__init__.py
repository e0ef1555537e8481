"""Backbones; they know nothing of CRONOS."""

from flax_cronos.models.cnn import SmallCNN
from flax_cronos.models.gpt2 import (GPT2, GPT2Config, GPT2Features, load_pretrained, pool_last,
                                     pool_mean)
from flax_cronos.models.mlp import MLP, TwoLayerHead

__all__ = ["GPT2", "GPT2Config", "GPT2Features", "MLP", "SmallCNN", "TwoLayerHead",
           "load_pretrained", "pool_last", "pool_mean"]
