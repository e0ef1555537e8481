"""ResNet-18 and ResNet-50 (He et al. 2016) with GroupNorm, to be trained from scratch as backbones.

Normalisation: GroupNorm (Wu & He 2018), not BatchNorm. CRONOS-AM solves the convex head on the
features of the whole training set and then trains the backbone on minibatches; both must see the
same function of the input. With BatchNorm a feature would depend on the other images in its
batch (and on train/eval mode), and the network would need a mutable ``batch_stats`` collection,
which the trainer, holding only ``params``, does not carry. GroupNorm normalises each image on
its own, so features are a fixed function of the parameters and the image. Its scale and bias
are the same parameters as BatchNorm's affine ones, so parameter counts equal torchvision's.
Each norm uses ``gcd(32, channels)`` groups: 32 at the standard widths, fewer for narrow
networks whose channel counts 32 does not divide.

Architecture as torchvision's ``resnet18`` / ``resnet50``: bottleneck blocks stride on the 3×3
convolution ("ResNet v1.5"); projection shortcuts (1×1 conv + norm) where the shape changes;
convolutions have no bias; kernels are He-normal (fan-out) initialised as in torchvision.
By default the last norm scale of each residual branch starts at zero (Goyal et al. 2017), so
every block starts as (ReLU of) its shortcut and the initial network is shallow and easy to train.

Parameter names, for regex selection: ``stem_conv``, ``stem_norm``, ``stage{1..4}_block{i}``
(each with ``conv1``, ``norm1``, ``conv2``, ``norm2``, bottlenecks also ``conv3``, ``norm3``,
and ``shortcut_conv``, ``shortcut_norm`` where the block changes shape), ``classifier``.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_NORM_GROUPS = 32


class _Layers(nn.Module):
    """Shared convolution and norm factories of the blocks and the network."""

    dtype: Any = jnp.float32

    def conv(self, features: int, size: int, strides: int, name: str) -> nn.Conv:
        """A bias-free ``size``×``size`` convolution padded by ``size // 2`` as in PyTorch."""
        pad = size // 2
        return nn.Conv(features, (size, size), strides=(strides, strides),
                       padding=((pad, pad), (pad, pad)), use_bias=False,
                       kernel_init=_KERNEL_INIT, dtype=self.dtype, name=name)

    def norm(self, channels: int, name: str, zero_scale: bool = False) -> nn.GroupNorm:
        """GroupNorm over ``gcd(32, channels)`` groups; its scale starts at 0 or 1."""
        scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
        return nn.GroupNorm(num_groups=math.gcd(_NORM_GROUPS, channels), epsilon=1e-5,
                            scale_init=scale_init, dtype=self.dtype, name=name)


class _Block(_Layers):
    """A residual block: ``relu(branch(x) + shortcut(x))``.

    Attributes:
        features: width of the block's 3×3 convolutions; the output has
            ``features * expansion`` channels.
        strides: stride of the block (1, or 2 to halve the spatial size).
        zero_init_residual: whether the branch's last norm scale starts at zero.
    """

    features: int = 64
    strides: int = 1
    zero_init_residual: bool = True
    expansion: ClassVar[int]

    def branch(self, x: jax.Array) -> jax.Array:
        """The residual branch, [n, H, W, C] -> [n, H / strides, W / strides, out_channels]."""
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """The block's output, [n, H, W, C] -> [n, H / strides, W / strides, out_channels],
        ``out_channels = features * expansion``."""
        out_channels = self.features * self.expansion
        shortcut = x
        if self.strides != 1 or x.shape[-1] != out_channels:
            shortcut = self.conv(out_channels, 1, self.strides, "shortcut_conv")(x)
            shortcut = self.norm(out_channels, "shortcut_norm")(shortcut)
        return nn.relu(self.branch(x) + shortcut)

    def last_norm(self, channels: int, name: str) -> nn.GroupNorm:
        """The branch's final norm, zero-initialised when ``zero_init_residual``."""
        return self.norm(channels, name, zero_scale=self.zero_init_residual)


class BasicBlock(_Block):
    """Two 3×3 convolutions (ResNet-18/34); the first carries the stride."""

    expansion: ClassVar[int] = 1

    def branch(self, x: jax.Array) -> jax.Array:
        """conv3×3/s–norm–ReLU–conv3×3–norm."""
        y = self.conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(self.norm(self.features, "norm1")(y))
        y = self.conv(self.features, 3, 1, "conv2")(y)
        return self.last_norm(self.features, "norm2")(y)


class Bottleneck(_Block):
    """1×1 reduce, 3×3 (carrying the stride, "v1.5"), 1×1 expand by 4 (ResNet-50/101/152)."""

    expansion: ClassVar[int] = 4

    def branch(self, x: jax.Array) -> jax.Array:
        """conv1×1–norm–ReLU–conv3×3/s–norm–ReLU–conv1×1–norm."""
        y = self.conv(self.features, 1, 1, "conv1")(x)
        y = nn.relu(self.norm(self.features, "norm1")(y))
        y = self.conv(self.features, 3, self.strides, "conv2")(y)
        y = nn.relu(self.norm(self.features, "norm2")(y))
        y = self.conv(self.features * self.expansion, 1, 1, "conv3")(y)
        return self.last_norm(self.features * self.expansion, "norm3")(y)


class ResNet(_Layers):
    """Stem, stages of residual blocks, global average pooling, optional Dense classifier.

    Stage ``k`` (1-based) has ``stage_sizes[k - 1]`` blocks of width ``width * 2**(k - 1)``;
    every stage but the first halves the spatial size in its first block. With the paper's four
    stages the pooled features have ``8 * width * block.expansion`` channels: 512 for ResNet-18,
    2048 for ResNet-50.

    Attributes:
        stage_sizes: number of blocks in each stage, e.g. (2, 2, 2, 2) for ResNet-18.
        block: ``BasicBlock`` or ``Bottleneck``.
        num_classes: ``None`` to return the pooled features (the backbone use), else the
            number of logits of a Dense classifier on top of them.
        width: width of the first stage (64 in the paper).
        stem: ``"imagenet"``: 7×7/2 conv–norm–ReLU–3×3/2 max pool (for 224×224 images);
            ``"cifar"``: 3×3/1 conv–norm–ReLU, no pool (for 32×32 images).
        zero_init_residual: whether each residual branch's last norm scale starts at zero.
        dtype: computation dtype; inputs are cast to it. Parameters are float32.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: type[_Block] = BasicBlock
    num_classes: int | None = None
    width: int = 64
    stem: str = "imagenet"
    zero_init_residual: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Features or logits of a batch of images.

        Args:
            x: [n, H, W, C] images, or [n, H, W] grey images (a channel axis is added).

        Returns:
            [n, width * 2**(len(stage_sizes) - 1) * block.expansion] pooled features when
            ``num_classes`` is None (e.g. [n, 512] for ResNet-18), else [n, num_classes] logits;
            in ``dtype``.

        Raises:
            ValueError: when ``x`` is not 3- or 4-dimensional, or ``stem`` is unknown.
        """
        if x.ndim not in (3, 4):
            raise ValueError(f"x must be [n, H, W, C] or [n, H, W] images, got shape {x.shape}")
        if x.ndim == 3:
            x = x[..., None]
        x = self.apply_stem(jnp.asarray(x, self.dtype))
        for stage, size in enumerate(self.stage_sizes):
            for index in range(size):
                x = self.block(features=self.width * 2**stage,
                               strides=2 if stage > 0 and index == 0 else 1,
                               zero_init_residual=self.zero_init_residual,
                               dtype=self.dtype,
                               name=f"stage{stage + 1}_block{index}")(x)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes is None:
            return x
        return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)

    def apply_stem(self, x: jax.Array) -> jax.Array:
        """The stem, [n, H, W, C] -> [n, H / 4, W / 4, width] ("imagenet") or [n, H, W, width]."""
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        imagenet = self.stem == "imagenet"
        x = self.conv(self.width, 7 if imagenet else 3, 2 if imagenet else 1, "stem_conv")(x)
        x = nn.relu(self.norm(self.width, "stem_norm")(x))
        if imagenet:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


# ResNet18(num_classes=None, width=64, stem="imagenet", ...): [n, 8 · width] features.
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
# ResNet50(...): [n, 32 · width] features (2048 at the default width).
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
