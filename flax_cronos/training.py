"""What CRONOS-AM (``trainer.py``), the end-to-end baseline (``baseline.py``) and language-model
pretraining (``lm.py``) share: minibatch order, batched device calls over host data, the
Optax step, and the losses.

Inputs are an array [n, …] or a pytree of them (e.g. {'input_ids', 'attention_mask'}) kept on
the host; only one batch at a time goes to the device.
"""

import functools
import re
from typing import Callable, Optional

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from flax_cronos.cronos import classify
from flax_cronos.parallel import DataParallel

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


def minibatch(inputs, targets: np.ndarray, step: int, batch_size: int, seed: int,
              parallel: DataParallel = DataParallel()) -> tuple:
    """(inputs, targets, augmentation key) of global step ``step`` (``batch_indices`` and
    ``augment_key``), the rows split over ``parallel``'s mesh when it has one."""
    index = batch_indices(step, len(targets), batch_size, seed)
    return (*parallel.split_rows((take(inputs, index), targets[index])),
            parallel.replicate(augment_key(seed, step)))


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def map_batches(fn: Callable, inputs, batch_size: int, desc: str, progress: bool,
                parallel: DataParallel = DataParallel()) -> np.ndarray:
    """``fn`` over fixed-size batches (the last one padded), gathered on the host.

    Only one batch of inputs is on the device(s) at a time, split by rows over ``parallel``'s
    mesh when it has one; ``fn`` compiles once.
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
        outputs.append(np.asarray(fn(parallel.split_rows(batch)))[:rows])
    return np.concatenate(outputs)


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _apply(model, params: dict, batch, method=None):
    return model.apply({"params": params}, batch, method=method)


def apply_in_batches(model, params: dict, inputs, batch_size: int, desc: str = "apply",
                     progress: bool = False, method=None,
                     parallel: DataParallel = DataParallel()) -> np.ndarray:
    """``model.apply`` over ``inputs`` in batches of ``batch_size``, gathered on the host (data
    parallel over ``parallel``'s mesh, where ``params`` are then replicated).

    Compiled once per model, method and batch shape: Linen modules compare by their
    attributes, so the compilation outlives one call (and one ``fit``).
    """
    return map_batches(functools.partial(_apply, model, params, method=method), inputs,
                       batch_size, desc, progress, parallel)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose class (``cronos.classify`` of outputs [n, C]) equals the label."""
    return float(np.mean(np.asarray(classify(outputs)) == np.asarray(labels)))


def optax_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """One Optax step on ``loss_fn(params, *batch)``:
    ``(params, opt_state, *batch) → (params, opt_state, loss)``."""

    def step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def compiled(fn: Callable, *example_args, **jit_options):
    """``jax.jit(fn, **jit_options)`` compiled ahead of time for the shapes (and shardings) of
    ``example_args``, so that the clocks around its calls never include compilation."""
    return jax.jit(fn, **jit_options).lower(*example_args).compile()


def trainable_labels(params: dict, pattern: str) -> dict:
    """'train' for parameters whose path ('backbone/Dense_0/kernel') matches the regex
    ``pattern``, 'frozen' for the rest: the labels of :func:`partitioned`.

    Raises:
        ValueError: when the pattern is not a regular expression or selects nothing.
    """
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"trainable is not a regular expression ({error}): {pattern!r}") from None
    names = traverse_util.flatten_dict(params, sep="/")
    if not any(regex.search(name) for name in names):
        raise ValueError(f"trainable {pattern!r} selects no parameter; the paths are "
                         f"{list(names)[:8]}…")
    return traverse_util.unflatten_dict(
        {name: "train" if regex.search(name) else "frozen" for name in names}, sep="/")


def partitioned(optimizer: optax.GradientTransformation,
                labels: dict) -> optax.GradientTransformation:
    """``optimizer`` on the parameters labelled 'train'; zero updates (and no optimizer state)
    for those labelled 'frozen'."""
    return optax.partition({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def skip_zero_gradients(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer``, except that a gradient that is zero everywhere leaves the parameters and
    the optimizer state as they are (a zero update), as D-Adaptation's reference code does.

    CRONOS-AM's backbone gets such a gradient whenever the convex head is zero (β at or above
    β̄ of its features): no output depends on the features. Optax's ``dadapt_adamw`` (the
    trainer's default) then divides 0 by 0 in its step-size estimate, and the NaN it stores
    would poison every later step.
    """
    optimizer = optax.with_extra_args_support(optimizer)

    def update(updates, state, params=None, **extra_args):
        nonzero = jnp.any(jnp.stack([jnp.any(leaf != 0) for leaf in jax.tree.leaves(updates)]))
        return jax.lax.cond(
            nonzero, lambda: optimizer.update(updates, state, params, **extra_args),
            lambda: (jax.tree.map(jnp.zeros_like, updates), state))

    return optax.GradientTransformationExtraArgs(optimizer.init, update)


Augment = Callable[[jax.Array, jax.Array], jax.Array]


def no_augmentation(key: jax.Array, inputs):
    """The identity: ``augment(key, inputs)`` for training without augmentation."""
    del key
    return inputs


def describe(augment: Augment) -> str:
    """A name of an augmentation that is stable across processes (for run fingerprints):
    ``module.function`` and, for a ``functools.partial``, its keyword arguments."""
    options = ""
    if isinstance(augment, functools.partial):
        options = "(" + ", ".join(f"{k}={v!r}" for k, v in sorted(augment.keywords.items())) + ")"
        augment = augment.func
    return f"{getattr(augment, '__module__', '?')}.{getattr(augment, '__qualname__', repr(augment))}{options}"


_AUGMENT_STREAM = 0x41554745  # keeps augmentation keys apart from keys folded by round number


def augment_key(seed: int, step: int) -> jax.Array:
    """The augmentation key of global step ``step``: a pure function of (seed, step), so a
    resumed run draws the same augmentations as the uninterrupted one."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM), step)


def supervised_loss(model, loss: str, augment: Optional[Augment] = None) -> Callable:
    """``(params, inputs, targets, key) → loss_value(model(augment(key, inputs)), targets, loss)``."""
    augment = augment or no_augmentation

    def loss_fn(params, inputs, targets, key):
        return loss_value(model.apply({"params": params}, augment(key, inputs)), targets, loss)

    return loss_fn


def loss_value(outputs: jax.Array, targets: jax.Array, loss: str) -> jax.Array:
    """Mean loss of outputs [n, C] against encoded targets [n, C] (±1 for C = 1, one-hot)."""
    if loss == "mse":
        return jnp.mean((outputs - targets) ** 2)
    if outputs.shape[-1] == 1:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(outputs[:, 0], targets[:, 0] > 0))
    return jnp.mean(optax.softmax_cross_entropy(outputs, targets))
