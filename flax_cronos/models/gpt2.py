"""GPT-2 in Flax Linen, with the Hugging Face parameter layout and a torch-free weight loader.

The forward pass, for token ids ``ids: [b, t]`` and ``attention_mask: [b, t]`` (1 = token, 0 = pad)::

    x = wte[ids] + wpe[positions]                     positions = 0 … t−1 (right padding)
    for each block h_i:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    hidden = ln_f(x)                                  [b, t, d]
    logits = hidden @ wteᵀ                            [b, t, vocab] (the tied embedding)

``attn`` is causal multi-head attention whose keys are also masked by ``attention_mask``;
``mlp`` is ``c_proj(gelu(c_fc(x)))`` with the tanh GELU ("gelu_new"). There is no dropout: the
model is the deterministic GPT-2 of inference and of feature extraction.

Parameter tree (Hugging Face name → Linen path; see ``hf_to_flax_path``)::

    wte.weight               → wte/embedding           [vocab, d]
    wpe.weight               → wpe/embedding           [n_positions, d]
    h.{i}.ln_1.weight, bias  → h_{i}/ln_1/scale, bias  [d]
    h.{i}.attn.c_attn.weight → h_{i}/attn/c_attn/kernel [d, 3d]   (HF Conv1D weights are [in, out],
    h.{i}.attn.c_proj.weight → h_{i}/attn/c_proj/kernel [d, d]     exactly a Dense kernel)
    h.{i}.mlp.c_fc.weight    → h_{i}/mlp/c_fc/kernel    [d, 4d]
    h.{i}.mlp.c_proj.weight  → h_{i}/mlp/c_proj/kernel  [4d, d]
    ln_f.weight, bias        → ln_f/scale, bias        [d]

Typical use::

    model, params = load_pretrained("gpt2")             # or a local folder
    hidden = model.apply({"params": params}, ids, attention_mask=mask)           # [b, t, d]
    logits = model.apply({"params": params}, ids, attention_mask=mask, method="logits")
    backbone = GPT2Features(model.config, pooling="last")   # same parameters
    features = backbone.apply({"params": params}, {"input_ids": ids, "attention_mask": mask})
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from flax_cronos.models.torch_weights import load_torch_state_dict

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Sizes of a GPT-2 (the fields of Hugging Face's ``config.json`` that the forward pass uses).

    Attributes:
        vocab_size: number of tokens.
        n_positions: longest sequence (rows of ``wpe``).
        n_embd: width d.
        n_layer: number of blocks.
        n_head: attention heads; must divide ``n_embd``.
        layer_norm_epsilon: epsilon of every LayerNorm.
        activation_function: "gelu_new" (tanh approximation, GPT-2's), "gelu_pytorch_tanh",
            "gelu_fast" (the same function) or "gelu" (exact).
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if self.activation_function not in (*_TANH_GELUS, "gelu"):
            raise ValueError(f"activation_function must be one of {(*_TANH_GELUS, 'gelu')}, "
                             f"got {self.activation_function!r}")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> GPT2Config:
        """The config of a Hugging Face ``config.json`` (``n_ctx`` is used if ``n_positions`` is absent)."""
        raw = json.loads(Path(path).read_text())
        if "n_positions" not in raw and "n_ctx" in raw:
            raw["n_positions"] = raw["n_ctx"]
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


CONFIGS: dict[str, GPT2Config] = {
    "gpt2": GPT2Config(),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPT2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPT2Config(n_embd=1600, n_layer=48, n_head=25),
    "mini": GPT2Config(n_positions=512, n_embd=128, n_layer=2, n_head=2),   # full vocabulary
    "tiny": GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=2),
    "tiny-4": GPT2Config(vocab_size=1000, n_positions=128, n_embd=64, n_layer=4, n_head=4),
}


# ----------------------------------------------------------------------------- modules


def _mask_or_ones(input_ids: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    return jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)


class Attention(nn.Module):
    """Causal multi-head self-attention whose keys are also masked by ``mask``."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Args: x: [b, t, d]; mask: [b, t] bool, False at padding. Returns: [b, t, d]."""
        b, t, d = x.shape
        heads = self.config.n_head
        q, k, v = jnp.split(nn.Dense(3 * d, name="c_attn")(x), 3, axis=-1)
        q, k, v = (z.reshape(b, t, heads, d // heads) for z in (q, k, v))
        allowed = nn.combine_masks(nn.make_causal_mask(mask), mask[:, None, None, :])
        out = nn.dot_product_attention(q, k, v, mask=allowed)                # [b, t, h, d/h]
        return nn.Dense(d, name="c_proj")(out.reshape(b, t, d))


class FeedForward(nn.Module):
    """``c_proj(gelu(c_fc(x)))`` with a 4d-wide hidden layer."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x: [b, t, d]. Returns: [b, t, d]."""
        d = x.shape[-1]
        tanh = self.config.activation_function in _TANH_GELUS
        h = nn.gelu(nn.Dense(4 * d, name="c_fc")(x), approximate=tanh)
        return nn.Dense(d, name="c_proj")(h)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Args: x: [b, t, d]; mask: [b, t] bool. Returns: [b, t, d]."""
        eps = self.config.layer_norm_epsilon
        x = x + Attention(self.config, name="attn")(nn.LayerNorm(eps, name="ln_1")(x), mask)
        return x + FeedForward(self.config, name="mlp")(nn.LayerNorm(eps, name="ln_2")(x))


class GPT2(nn.Module):
    """GPT-2 returning the last hidden states; ``method="logits"`` gives next-token logits.

    Attributes:
        config: the sizes.
    """

    config: GPT2Config = GPT2Config()

    def setup(self):
        c = self.config
        self.wte = nn.Embed(c.vocab_size, c.n_embd)
        self.wpe = nn.Embed(c.n_positions, c.n_embd)
        self.h = [Block(c) for _ in range(c.n_layer)]  # Linen names them h_0, h_1, …
        self.ln_f = nn.LayerNorm(c.layer_norm_epsilon)

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               position_ids: jax.Array | None = None) -> jax.Array:
        """Last hidden states (after ``ln_f``).

        Args:
            input_ids: [b, t] int token ids.
            attention_mask: [b, t], 1 at tokens and 0 at padding; None means no padding. Padding
                keys are hidden from every query; outputs at padded positions are meaningless.
            position_ids: [b, t] or [t] int; default ``0 … t−1``, right for right-padded batches
                (for left padding pass ``cumsum(mask) − 1`` clipped at 0).

        Returns:
            [b, t, n_embd] float32 hidden states.
        """
        t = input_ids.shape[-1]
        if t > self.config.n_positions:
            raise ValueError(f"input_ids has {t} positions; this GPT-2 takes at most "
                             f"{self.config.n_positions}")
        mask = _mask_or_ones(input_ids, attention_mask)
        positions = jnp.arange(t) if position_ids is None else position_ids
        x = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            x = block(x, mask)
        return self.ln_f(x)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None) -> jax.Array:
        """``encode``: [b, t] ids → [b, t, n_embd] last hidden states."""
        return self.encode(input_ids, attention_mask, position_ids)

    def logits(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               position_ids: jax.Array | None = None) -> jax.Array:
        """Next-token logits through the tied embedding, ``hidden @ wteᵀ``.

        Call as ``model.apply({"params": params}, ids, attention_mask=mask, method="logits")``.

        Returns:
            [b, t, vocab_size] logits.
        """
        return self.wte.attend(self.encode(input_ids, attention_mask, position_ids))


def pool_last(hidden: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Hidden state at each row's last token (the last position where ``mask`` is 1).

    Args:
        hidden: [b, t, d] hidden states.
        mask: [b, t], 1 at tokens, 0 at padding (either side); None means all tokens. A row with
            no token gives position 0.

    Returns:
        [b, d] features.
    """
    b, t, _ = hidden.shape
    if mask is None:
        return hidden[:, -1]
    last = jnp.max(jnp.where(mask.astype(bool), jnp.arange(t), 0), axis=1)
    return hidden[jnp.arange(b), last]


def pool_mean(hidden: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean of the hidden states over each row's tokens.

    Args:
        hidden: [b, t, d] hidden states.
        mask: [b, t], 1 at tokens, 0 at padding; None means all tokens. A row with no token
            gives zeros.

    Returns:
        [b, d] features.
    """
    if mask is None:
        return hidden.mean(axis=1)
    weights = mask.astype(hidden.dtype)[..., None]
    return (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)


POOLINGS = {"last": pool_last, "mean": pool_mean}


class GPT2Features(GPT2):
    """GPT-2 as a feature backbone: a batch → pooled ``[b, d]`` features.

    Same parameters as ``GPT2`` (so ``load_pretrained``'s ``params`` fit), called the way
    ``AlternatingTrainer`` calls backbones::

        backbone.apply({"params": params}, {"input_ids": ids, "attention_mask": mask})

    Attributes:
        config: the sizes.
        pooling: "last" (``pool_last``, the last token, GPT-2's usual choice) or "mean".
    """

    pooling: str = "last"

    def __call__(self, batch: dict[str, jax.Array] | jax.Array) -> jax.Array:
        """Pooled features of a batch.

        Args:
            batch: ``{"input_ids": [b, t] int, "attention_mask": [b, t] (optional),
                "position_ids": [b, t] (optional)}``, or bare [b, t] ids.

        Returns:
            [b, n_embd] features.
        """
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, got {self.pooling!r}")
        if not isinstance(batch, dict):
            batch = {"input_ids": batch}
        mask = batch.get("attention_mask")
        hidden = self.encode(batch["input_ids"], mask, batch.get("position_ids"))
        return POOLINGS[self.pooling](hidden, mask)


# ----------------------------------------------------------------------------- weights


def hf_to_flax_path(name: str) -> tuple[str, ...] | None:
    """The Linen parameter path of a Hugging Face GPT-2 state-dict name; None for what is skipped.

    ``transformer.`` (GPT2LMHeadModel's prefix) is dropped; ``lm_head.weight`` (tied to ``wte``)
    and the attention buffers ``attn.bias`` / ``attn.masked_bias`` give None. Examples:
    ``h.0.attn.c_attn.weight`` → ``("h_0", "attn", "c_attn", "kernel")``;
    ``ln_f.weight`` → ``("ln_f", "scale")``; ``wte.weight`` → ``("wte", "embedding")``.
    """
    name = name.removeprefix("transformer.")
    if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
        return None
    parts = name.split(".")
    if parts[0] == "h" and len(parts) > 1:
        parts = [f"h_{parts[1]}", *parts[2:]]
    module, leaf = parts[-2], parts[-1]
    if leaf == "weight":
        leaf = ("embedding" if module in ("wte", "wpe")
                else "scale" if module.startswith("ln_") else "kernel")
    return (*parts[:-1], leaf)


def flax_to_hf_name(path: tuple[str, ...]) -> str:
    """The Hugging Face state-dict name of a Linen parameter path (inverse of
    ``hf_to_flax_path``): ``("h_0", "attn", "c_attn", "kernel")`` → ``h.0.attn.c_attn.weight``."""
    *modules, leaf = path
    if modules[0].startswith("h_"):
        modules = ["h", modules[0][2:], *modules[1:]]
    return ".".join([*modules, "bias" if leaf == "bias" else "weight"])


def save_pretrained(config: GPT2Config, params: dict, folder: str | os.PathLike) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` in the Hugging Face GPT-2 layout
    (``GPT2Model`` names), which ``load_pretrained`` and transformers both read."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {flax_to_hf_name(path): np.ascontiguousarray(np.asarray(array, np.float32))
               for path, array in traverse_util.flatten_dict(jax.device_get(params)).items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    hf_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                 "n_ctx": config.n_positions, **dataclasses.asdict(config)}
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return folder


def params_from_state_dict(state_dict: dict[str, np.ndarray], config: GPT2Config) -> dict:
    """The Linen parameter tree of a Hugging Face state dict (NumPy arrays), as float32.

    Raises:
        ValueError: on missing or unexpected names, or a shape that does not fit ``config``.
    """
    shapes = jax.eval_shape(GPT2(config).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    expected = {path: s.shape for path, s in
                traverse_util.flatten_dict(shapes["params"]).items()}
    found = {}
    for name, array in state_dict.items():
        path = hf_to_flax_path(name)
        if path is None:
            continue
        if path not in expected:
            raise ValueError(f"unexpected weight {name!r} for GPT-2 (no parameter {'/'.join(path)})")
        if tuple(array.shape) != tuple(expected[path]):
            raise ValueError(f"weight {name!r} has shape {tuple(array.shape)}, expected "
                             f"{tuple(expected[path])} for {config}")
        found[path] = np.asarray(array, np.float32)
    missing = sorted("/".join(p) for p in expected.keys() - found.keys())
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} GPT-2 weights, e.g. {missing[:3]}")
    return traverse_util.unflatten_dict({path: jnp.asarray(a) for path, a in found.items()})


def _read_weights(folder: Path) -> dict[str, np.ndarray]:
    if (folder / "model.safetensors").is_file():
        from safetensors.numpy import load_file
        return load_file(folder / "model.safetensors")
    return load_torch_state_dict(folder / "pytorch_model.bin")


def _download(name: str, cache_dir: str | None) -> Path:
    """The Hub repository ``name``'s config and weights, downloaded (or cached); its folder."""
    from huggingface_hub import hf_hub_download
    config = Path(hf_hub_download(name, "config.json", cache_dir=cache_dir))
    for weights in ("model.safetensors", "pytorch_model.bin"):
        try:
            hf_hub_download(name, weights, cache_dir=cache_dir)
            return config.parent
        except Exception:  # noqa: BLE001 - the next format, then the caller's ValueError
            continue
    raise FileNotFoundError(f"{name} has neither model.safetensors nor pytorch_model.bin")


def load_pretrained(name_or_path: str | os.PathLike, *, pooling: str | None = None,
                    cache_dir: str | None = None) -> tuple[GPT2, dict]:
    """A pretrained GPT-2 and its parameters, from a local folder or the Hugging Face Hub.

    Args:
        name_or_path: a folder holding ``config.json`` and ``model.safetensors`` or
            ``pytorch_model.bin`` (read without torch), or a Hub name ("gpt2",
            "openai-community/gpt2-medium", …), downloaded and cached with ``huggingface_hub``.
        pooling: None for ``GPT2`` (hidden states), or "last" / "mean" for ``GPT2Features``.
        cache_dir: the ``huggingface_hub`` cache (default: its own).

    Returns:
        ``(model, params)`` with ``model.apply({"params": params}, ids, attention_mask=mask)``.

    Raises:
        ValueError: when ``name_or_path`` is neither a folder with a config and weights nor
            reachable on the Hub (offline, unknown name, no network).
    """
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        try:
            folder = _download(str(name_or_path), cache_dir)
        except Exception as error:  # noqa: BLE001 - offline, unknown repo, network, …
            raise ValueError(
                f"name_or_path {str(name_or_path)!r} is not a local folder and could not be fetched "
                f"from the Hugging Face Hub ({type(error).__name__}: {error}); give a folder with "
                "config.json and model.safetensors or pytorch_model.bin, or go online "
                "(HF_HUB_OFFLINE unset)") from error
    weights = [folder / w for w in ("model.safetensors", "pytorch_model.bin")]
    if not (folder / "config.json").is_file() or not any(w.is_file() for w in weights):
        raise ValueError(f"name_or_path {str(name_or_path)!r}: expected config.json and "
                         f"model.safetensors or pytorch_model.bin in {folder}")
    config = GPT2Config.from_json(folder / "config.json")
    params = params_from_state_dict(_read_weights(folder), config)
    model = GPT2(config) if pooling is None else GPT2Features(config, pooling=pooling)
    return model, params
