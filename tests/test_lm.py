"""Language-model pretraining: next-token loss against a closed form, and learning a pattern."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_cronos import lm
from flax_cronos.models.gpt2 import CONFIGS, GPT2


def cyclic_tokens(n, length, period=5, seed=0):
    """Sequences t_k = (start + k) mod period (+ 10), right-padded to ``length``: fully predictable."""
    rng = np.random.default_rng(seed)
    starts, lengths = rng.integers(0, period, n), rng.integers(length // 2, length + 1, n)
    ids = 10 + (starts[:, None] + np.arange(length)[None]) % period
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": (ids * mask).astype(np.int32), "attention_mask": mask}


def test_next_token_loss_is_the_masked_cross_entropy():
    model = GPT2(CONFIGS["tiny"])
    batch = cyclic_tokens(3, 8)
    params = model.init(jax.random.key(0), batch["input_ids"][:1])["params"]
    total, count = lm.next_token_loss(model, params, batch)
    logits = np.asarray(model.apply({"params": params}, batch["input_ids"],
                                    attention_mask=batch["attention_mask"], method="logits"),
                        np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = 0.0
    for b in range(3):
        for t in range(7):
            if batch["attention_mask"][b, t + 1]:
                expected -= log_probs[b, t, batch["input_ids"][b, t + 1]]
    assert float(count) == batch["attention_mask"][:, 1:].sum()
    assert float(total) == pytest.approx(expected, rel=1e-5)


def test_pretraining_learns_a_predictable_sequence():
    model = GPT2(CONFIGS["tiny"])
    params, history = lm.pretrain(model, cyclic_tokens(256, 16), val_tokens=cyclic_tokens(32, 16, seed=1),
                                  steps=150, batch_size=16, learning_rate=1e-2, warmup=10,
                                  eval_every=50, progress=False)
    assert [record["step"] for record in history] == [50, 100, 150]
    assert history[-1]["val_perplexity"] < 1.5                    # a fresh model: about 100
    assert history[-1]["tokens"] == pytest.approx(150 * 16 * 12, rel=0.2)
    assert jnp.all(jnp.isfinite(jax.tree.leaves(params)[0]))
