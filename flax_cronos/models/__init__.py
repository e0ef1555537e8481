"""Backbones; they know nothing of CRONOS. ``load_pretrained`` is GPT-2's; EfficientNet-Lite0's is
``efficientnet.load_pretrained``."""

from flax_cronos.models import efficientnet
from flax_cronos.models.cnn import SmallCNN
from flax_cronos.models.gpt2 import (GPT2, GPT2Config, GPT2Features, load_pretrained, pool_last,
                                     pool_mean)
from flax_cronos.models.image_input import ImageInput
from flax_cronos.models.mlp import MLP, TwoLayerHead
from flax_cronos.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet50

__all__ = ["BasicBlock", "Bottleneck", "GPT2", "GPT2Config", "GPT2Features", "ImageInput", "MLP", "ResNet",
           "ResNet18", "ResNet50", "SmallCNN", "TwoLayerHead", "efficientnet", "load_pretrained",
           "pool_last", "pool_mean"]
