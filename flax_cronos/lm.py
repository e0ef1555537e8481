"""Pretraining GPT-2 as a language model, to make a backbone where no weights can be downloaded.

Loss: next-token cross-entropy over real tokens,

    L = Σ_{b,t} m_{b,t+1} · CE(logits_{b,t}, ids_{b,t+1}) / Σ_{b,t} m_{b,t+1},

with the attention mask m (padding never predicted); perplexity = exp(L) on held-out text.
AdamW with linear warm-up and cosine decay; minibatches as in ``training.batch_indices``. The
result is saved in the Hugging Face format (``models.gpt2.save_pretrained``) that
``load_pretrained`` and ``recipes/gpt2_imdb.py`` read.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from flax_cronos.models.gpt2 import GPT2
from flax_cronos.training import batch_indices, compiled, map_batches, num_rows, optax_step, take


def next_token_loss(model: GPT2, params: dict, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(summed cross-entropy, number of predicted tokens) of a {'input_ids', 'attention_mask'} batch."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model.apply({"params": params}, ids, attention_mask=mask, method="logits")
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
    weights = mask[:, 1:].astype(losses.dtype)
    return jnp.sum(losses * weights), jnp.sum(weights)


def perplexity(model: GPT2, params: dict, tokens: dict, batch_size: int = 64) -> float:
    """exp of the mean next-token cross-entropy over all real tokens of ``tokens``."""
    totals = map_batches(lambda batch: jnp.stack(_loss_sums(model, params, batch))[None],
                         tokens, batch_size, "perplexity", False)
    return float(np.exp(totals[:, 0].sum() / max(totals[:, 1].sum(), 1.0)))


_loss_sums = jax.jit(next_token_loss, static_argnums=0)


def pretrain(model: GPT2, tokens: dict, *, steps: int, batch_size: int, learning_rate: float,
             val_tokens: dict, eval_every: int, seed: int = 0, warmup: int = 100,
             weight_decay: float = 0.01, progress: bool = True) -> tuple[dict, list[dict]]:
    """Trains ``model`` from a fresh initialisation on ``tokens`` ({'input_ids',
    'attention_mask'} int32 [n, T]).

    Returns:
        (params, history): one record per evaluation with ``step``, ``tokens`` (real tokens
        seen), ``seconds`` (training wall-clock, compilation excluded), ``train_loss`` and
        ``val_perplexity``.
    """
    n = num_rows(tokens)
    if n // batch_size == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training sequences")
    params = model.init(jax.random.key(seed), tokens["input_ids"][:1])["params"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(warmup, steps // 2),
                                                 max(steps, 1))
    optimizer = optax.adamw(schedule, weight_decay=weight_decay)
    opt_state = optimizer.init(params)

    def mean_loss(params, batch):
        total, count = next_token_loss(model, params, batch)
        return total / jnp.maximum(count, 1.0)

    def batch(index):
        return take(tokens, batch_indices(index, n, batch_size, seed))

    step = compiled(optax_step(mean_loss, optimizer), params, opt_state, batch(0))
    history, seconds, seen, losses = [], 0.0, 0, []
    for index in tqdm(range(steps), desc="pretrain", unit="step", disable=not progress):
        inputs = batch(index)
        start = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, inputs)
        jax.block_until_ready(loss)
        seconds += time.perf_counter() - start
        seen += int(inputs["attention_mask"].sum())
        losses.append(loss)
        if (index + 1) % eval_every == 0 or index + 1 == steps:
            history.append({"step": index + 1, "tokens": seen, "seconds": seconds,
                            "train_loss": float(np.mean(jax.device_get(losses))),
                            "val_perplexity": perplexity(model, params, val_tokens)})
            losses = []
    return params, history
