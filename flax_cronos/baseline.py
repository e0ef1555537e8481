"""End-to-end training with one Optax optimizer: the baseline CRONOS-AM is compared against.

The model (e.g. the backbone followed by ``models.TwoLayerHead``) is trained as a whole on the
same minibatches, loss and targets as ``trainer.AlternatingTrainer``. Times exclude
compilation (the step is compiled before the clock starts) and evaluation, and are taken after
``block_until_ready``.
"""

import time
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jax.sharding import Mesh

from flax_cronos.cronos.problem import encode_targets
from flax_cronos.parallel import DataParallel
from flax_cronos.training import (Augment, accuracy, apply_in_batches, compiled, minibatch,
                                  num_rows, optax_step, partitioned, supervised_loss, take,
                                  trainable_labels)


def train_end_to_end(model: nn.Module, optimizer: optax.GradientTransformation,
                     train: tuple[Any, np.ndarray], val: tuple[Any, np.ndarray], *, steps: int,
                     batch_size: int, eval_every: int, loss: str = "mse", seed: int = 0,
                     eval_batch_size: int = 1024, progress: bool = False,
                     params: Optional[dict] = None, trainable: str = ".*",
                     augment: Optional[Augment] = None,
                     mesh: Optional[Mesh] = None) -> tuple[dict, list[dict]]:
    """Trains ``model`` (outputs [n, C]) for ``steps`` Optax steps, evaluating every ``eval_every``.

    Args:
        params: starting parameters (e.g. a pretrained backbone under a fresh head); default
            ``model.init`` with the seed.
        trainable: regex on parameter paths selecting what the optimizer trains (e.g. the last
            stages of a pretrained backbone and the head); the rest stays fixed.
        augment: ``augment(key, inputs)`` applied to every minibatch, keyed as in CRONOS-AM.
        mesh: run data parallel over this one-axis mesh, as CRONOS-AM does
            (``parallel.DataParallel``); ``batch_size`` and ``eval_batch_size`` must be
            multiples of its size.

    Returns:
        (the final parameters, the history): one record per evaluation, ``step``, ``seconds`` (training wall-clock so far),
        ``train_loss`` (mean since the last evaluation), ``val_accuracy``.
    """
    inputs, labels = train
    n = num_rows(inputs)
    if n // batch_size == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training rows")
    parallel = DataParallel(mesh)
    parallel.check_batch(batch_size, "batch_size")
    parallel.check_batch(eval_batch_size, "eval_batch_size")
    targets, _ = encode_targets(labels, "classification", n, "train labels")
    targets = targets.astype(np.float32)
    if params is None:
        params = model.init(jax.random.key(seed), take(inputs, slice(0, 1)))["params"]
    optimizer = partitioned(optimizer, trainable_labels(params, trainable))
    params, opt_state = parallel.replicate((params, optimizer.init(params)))

    def batch(step_index):
        return minibatch(inputs, targets, step_index, batch_size, seed, parallel)

    step = compiled(optax_step(supervised_loss(model, loss, augment), optimizer), params,
                    opt_state, *batch(0), **parallel.replicated_outputs())
    history, seconds, losses = [], 0.0, []
    for index in tqdm(range(steps), desc="end-to-end", unit="step", disable=not progress):
        start = time.perf_counter()
        params, opt_state, value = step(params, opt_state, *batch(index))
        jax.block_until_ready(value)
        seconds += time.perf_counter() - start
        losses.append(value)
        if (index + 1) % eval_every == 0 or index + 1 == steps:
            outputs = apply_in_batches(model, params, val[0], eval_batch_size,
                                       parallel=parallel)
            history.append({"step": index + 1, "seconds": seconds,
                            "train_loss": float(np.mean(jax.device_get(losses))),
                            "val_accuracy": accuracy(outputs, val[1])})
            losses = []
    return params, history
