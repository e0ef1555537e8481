"""What CRONOS-AM (``trainer.py``) and the end-to-end baseline (``baseline.py``) share:
minibatch order, batched device calls over host data, and the losses.

Inputs are an array [n, …] or a pytree of them (e.g. {'input_ids', 'attention_mask'}) kept on
the host; only one batch at a time goes to the device.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

LOSSES = ("mse", "cross_entropy")


def num_rows(inputs) -> int:
    """Rows of an input pytree (an array, or a dict such as {'input_ids', 'attention_mask'})."""
    lengths = {len(leaf) for leaf in jax.tree.leaves(inputs)}
    if len(lengths) != 1:
        raise ValueError(f"inputs must be arrays with the same number of rows; got {sorted(lengths)}")
    return lengths.pop()


def take(inputs, index):
    return jax.tree.map(lambda leaf: leaf[index], inputs)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of global step ``step``: epochs are seeded permutations cut into n // B batches."""
    epoch, position = divmod(step, n // batch_size)
    order = _epoch_order(n, seed, epoch)
    return order[position * batch_size:(position + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def map_batches(fn: Callable, inputs, batch_size: int, desc: str, progress: bool) -> np.ndarray:
    """``fn`` over fixed-size batches (the last one padded), gathered on the host.

    Only one batch of inputs is on the device at a time; ``fn`` compiles once.
    """
    n = num_rows(inputs)
    outputs = []
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", leave=False,
                      disable=not progress):
        batch = take(inputs, slice(start, start + batch_size))
        rows = num_rows(batch)
        if rows < batch_size:
            batch = jax.tree.map(lambda a: np.concatenate(
                [a, np.repeat(a[-1:], batch_size - rows, axis=0)]), batch)
        outputs.append(np.asarray(fn(batch))[:rows])
    return np.concatenate(outputs)


def loss_value(outputs: jax.Array, targets: jax.Array, loss: str) -> jax.Array:
    """Mean loss of outputs [n, C] against encoded targets [n, C] (±1 for C = 1, one-hot)."""
    if loss == "mse":
        return jnp.mean((outputs - targets) ** 2)
    if outputs.shape[-1] == 1:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(outputs[:, 0], targets[:, 0] > 0))
    return jnp.mean(optax.softmax_cross_entropy(outputs, targets))
