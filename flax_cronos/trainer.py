"""CRONOS-AM: convex solves of the head alternating with Optax steps on the backbone.

The network is ``head(backbone(x))`` with a ``ConvexHead``. Checkpoint r (r = 0 … rounds) holds
the network right after its r-th convex solve:

    round 0:  X̃ = backbone(X) on the whole training set;  head ← CRONOS(X̃, Y)
    round r:  K Optax steps on the trainable backbone parameters (the head frozen), then
              X̃ = backbone(X);  head ← CRONOS(X̃, Y)

so ``rounds = 0`` is the "no fine-tuning" setting (features once, a convex head), and every
checkpoint's head is the optimal head of its backbone. The gates are the head's and stay fixed;
the patterns change as X̃ does. The backbone loss is the paper's MSE on the ±1 / one-hot targets
of ``cronos.problem.encode_targets``, or cross-entropy.

Determinism and resume: the minibatch of global step s is a slice of the permutation of epoch
⌊s / (n / B)⌋ seeded by (seed, epoch), and each solve's key is ``fold_in(key, round)``, so a
run resumed from checkpoint r replays exactly what the uninterrupted run did after it.

Several devices: with a one-axis ``mesh`` (``cronos.row_mesh``) every device call is data
parallel (``parallel.DataParallel``: parameters replicated, minibatches and feature batches
split by rows, gradients all-reduced) and the solves shard the features' rows over the same
mesh. Checkpoints hold the arrays, not their placement: a run resumes on any device count.
"""

import dataclasses
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax
from tqdm.auto import tqdm

from flax_cronos import cronos
from flax_cronos.checkpoint import RunCheckpoints, check_run_config
from flax_cronos.cronos.problem import encode_targets
from flax_cronos.head import ConvexHead, head_params
from flax_cronos.parallel import DataParallel
from flax_cronos.run_log import RunLog
from flax_cronos.training import (LOSSES, Augment, accuracy, apply_in_batches, compiled,
                                  describe, loss_value, minibatch, no_augmentation,
                                  num_rows, optax_step, partitioned, skip_zero_gradients,
                                  supervised_loss, take, trainable_labels)


@dataclasses.dataclass(frozen=True)
class AlternatingConfig:
    """Settings of CRONOS-AM (the head's own settings are a ``cronos.CronosConfig``).

    Attributes:
        rounds: backbone phases; the run makes ``rounds + 1`` convex solves.
        steps_per_round: K, Optax steps on the backbone between two solves.
        batch_size: minibatch of the backbone steps.
        loss: "mse" (on ±1 / one-hot targets, the paper's) or "cross_entropy".
        trainable: regex on parameter paths ("backbone/Dense_0/kernel") selecting what Optax
            trains; the rest (always the head) stays fixed.
        warm_start: start each solve from the previous round's head instead of zero.
        auto_beta: choose β at round 0 on a warm-started path (``cronos.solve_path``, 20% of
            the training rows held out) and keep it (the default: no β to tune); False uses
            ``CronosConfig.beta``.
        feature_batch_size: rows per device call when extracting features and evaluating.
        seed: parameters, gates, sketches and data order.
        max_to_keep: latest checkpoints kept (the best one by validation accuracy is kept too).
    """

    rounds: int = 10
    steps_per_round: int = 10
    batch_size: int = 1024
    loss: str = "mse"
    trainable: str = r"^backbone/"
    warm_start: bool = False
    auto_beta: bool = True
    feature_batch_size: int = 1024
    seed: int = 0
    max_to_keep: int = 3

    def check(self) -> None:
        """Raises ValueError naming the first impossible setting."""
        for name in ("steps_per_round", "batch_size", "feature_batch_size", "max_to_keep"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if not isinstance(self.rounds, int) or self.rounds < 0:
            raise ValueError(f"rounds must be an integer >= 0; got {self.rounds!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {self.loss!r}")
        try:
            re.compile(self.trainable)
        except re.error as error:
            raise ValueError(f"trainable is not a regular expression ({error}): "
                             f"{self.trainable!r}") from None


class Network(nn.Module):
    """``head(backbone(x))``; parameters ``{'backbone': …, 'head': …}``."""

    backbone: nn.Module
    head: nn.Module

    def __call__(self, inputs):
        return self.head(self.backbone(inputs))

    def features(self, inputs):
        return self.backbone(inputs)


class TrainResult(NamedTuple):
    network: Network
    params: dict
    history: list[dict]


# ----------------------------------------------------------------------------- labels


def backbone_labels(params: dict, pattern: str) -> dict:
    """``training.trainable_labels``, refusing a pattern that selects a head parameter."""
    labels = trainable_labels(params, pattern)
    head = [name for name, label in traverse_util.flatten_dict(labels, sep="/").items()
            if label == "train" and name.startswith("head/")]
    if head:
        raise ValueError(f"trainable {pattern!r} selects head parameters ({head[0]}); the head "
                         "is solved, not trained")
    return labels


def _shapes(tree) -> dict:
    return {name: np.shape(leaf) for name, leaf in traverse_util.flatten_dict(tree, sep="/").items()}


def _matching(given, expected):
    """``given`` backbone parameters, checked against the shapes the backbone initialises."""
    got, want = _shapes(given), _shapes(expected)
    if got != want:
        wrong = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        raise ValueError(f"backbone_params do not fit the backbone: {wrong[0]} is "
                         f"{got.get(wrong[0])}, the backbone needs {want.get(wrong[0])}")
    return jax.tree.map(jnp.asarray, given)


def default_optimizer() -> optax.GradientTransformation:
    """D-Adaptation AdamW with learning rate 1, as in the paper: nothing to tune."""
    return optax.contrib.dadapt_adamw(learning_rate=1.0)


# ----------------------------------------------------------------------------- the trainer


class AlternatingTrainer:
    """CRONOS-AM for any Linen backbone whose output is a [n, d] feature matrix.

    Args:
        backbone: a Linen module; ``backbone.apply({'params': p}, x)`` gives features [n, d].
        cronos_config: settings of the head and its solves.
        config: settings of the alternation.
        optimizer: the backbone's Optax optimizer (default ``default_optimizer()``); the
            frozen parameters are masked with ``optax.partition``, and a step whose gradient
            is zero everywhere (a zero head) is skipped (``training.skip_zero_gradients``).
        backbone_params: starting parameters of the backbone (e.g. a pretrained GPT-2 from
            ``models.gpt2.load_pretrained``); default: ``backbone.init`` with the seed.
        augment: ``augment(key, inputs) → inputs`` applied (jitted) to each minibatch of the
            backbone steps, e.g. ``data.images.augment``; never to the features of a solve.
            Its key is ``training.augment_key(seed, step)``, so resumed runs replay it.
        mesh: a one-axis mesh of this process's devices (``cronos.row_mesh``) to run data
            parallel over; ``batch_size`` and ``feature_batch_size`` must be multiples of its
            size. None: the default device.
    """

    def __init__(self, backbone: nn.Module, cronos_config: cronos.CronosConfig = cronos.CronosConfig(),
                 config: AlternatingConfig = AlternatingConfig(),
                 optimizer: Optional[optax.GradientTransformation] = None,
                 backbone_params: Optional[dict] = None, augment: Optional[Augment] = None,
                 mesh: Optional[Mesh] = None):
        cronos_config.check()
        config.check()
        self.parallel = DataParallel(mesh)
        self.parallel.check_batch(config.batch_size, "batch_size")
        self.parallel.check_batch(config.feature_batch_size, "feature_batch_size")
        self.backbone = backbone
        self.cronos_config = cronos_config
        self.config = config
        self.optimizer = default_optimizer() if optimizer is None else optimizer
        self.backbone_params = backbone_params
        self.augment = augment or no_augmentation

    def network(self, outputs: int) -> Network:
        c = self.cronos_config
        head = ConvexHead(patterns=c.patterns, outputs=outputs, activation=c.activation,
                          intercept=c.intercept, param_dtype=jnp.dtype(c.dtype))
        return Network(self.backbone, head)

    def fit(self, train: tuple[Any, np.ndarray], val: Optional[tuple[Any, np.ndarray]] = None,
            workdir: Optional[Path] = None, run_config: Optional[dict] = None,
            progress: bool = True,
            on_round: Optional[Callable[[dict], None]] = None) -> TrainResult:
        """Runs (or resumes) CRONOS-AM.

        Args:
            train: (inputs, labels); inputs an array [n, …] or a pytree of them, labels [n].
            val: validation (inputs, labels), evaluated after every solve.
            workdir: run directory for checkpoints and logs; an existing run there is resumed
                from its last readable checkpoint. None keeps everything in memory.
            run_config: extra settings recorded in ``config.json`` (e.g. the recipe); a resumed
                run must match them, except ``trainer.rounds``.
            progress: show progress bars.
            on_round: called with each round's record once it is logged (console lines).

        Returns:
            ``TrainResult(network, params, history)``; ``history`` has one record per round.
        """
        c = self.config
        inputs, labels = train
        n = num_rows(inputs)
        targets, classes = encode_targets(labels, self.cronos_config.task, n, "train labels")
        if n // c.batch_size == 0 and c.rounds > 0:
            raise ValueError(f"batch_size {c.batch_size} exceeds the {n} training rows")
        if val is not None:
            val_targets, _ = encode_targets(val[1], self.cronos_config.task, num_rows(val[0]),
                                            "val labels", classes or None)
        targets = targets.astype(jnp.dtype(self.cronos_config.dtype))
        network, optimizer, state = self.initial_state(inputs, targets.shape[1])
        meta = {"history": [], "seconds": 0.0, "beta": self.cronos_config.beta}

        checkpoints = None
        if workdir is not None:
            check_run_config(workdir, self._fingerprint(network, n, run_config),
                             may_change=("alternating.rounds", "recipe.trainer.rounds"))
            checkpoints = RunCheckpoints(workdir, c.max_to_keep)
            restored = checkpoints.restore(state)
            if restored is not None:
                state, meta = restored.state, restored.meta
        log = RunLog(workdir, meta["history"])

        first_round = int(state["round"]) + 1
        train_step = None
        if max(first_round, 1) <= c.rounds:                 # some backbone phase is left
            train_step = self._compiled_train_step(network, optimizer, state, inputs, targets)
        try:
            for round_ in range(first_round, c.rounds + 1):
                start = time.perf_counter()
                state, train_loss = self._backbone_phase(state, train_step, inputs, targets,
                                                         round_, progress)
                state, solution, beta, train_metric = self._solve_phase(
                    state, network, inputs, labels, meta["beta"], round_, progress)
                meta["seconds"] += time.perf_counter() - start
                meta["beta"] = beta
                record = self._record(state, solution, train_loss, train_metric,
                                      meta["seconds"], beta)
                if val is not None:
                    record.update(self.evaluate(network, state["params"], val[0], val[1],
                                                val_targets, progress))
                log.append(record)
                if on_round is not None:
                    on_round(record)
                meta["history"] = log.history
                if checkpoints is not None:
                    checkpoints.save(round_, state, meta,
                                     {"val_accuracy": record.get("val_accuracy") or 0.0})
        finally:
            if checkpoints is not None:
                checkpoints.wait()
                checkpoints.close()
        return TrainResult(network, state["params"], log.history)

    def initial_state(self, inputs, outputs: int):
        """The network for ``outputs`` outputs, its masked optimizer and the state before round 0:
        ``{'params', 'opt_state', 'rng', 'round', 'step'}`` (what a checkpoint holds)."""
        c = self.config
        network = self.network(outputs)
        params = self._initial_params(network, take(inputs, slice(0, 1)), jax.random.key(c.seed))
        optimizer = partitioned(skip_zero_gradients(self.optimizer),
                                backbone_labels(params, c.trainable))
        state = {"params": params, "opt_state": optimizer.init(params),
                 "rng": jax.random.key_data(jax.random.key(c.seed)),
                 "round": jnp.asarray(-1), "step": jnp.asarray(0)}
        return network, optimizer, self.parallel.replicate(state)

    def _initial_params(self, network: Network, sample, key: jax.Array) -> dict:
        """Fresh parameters. With given backbone parameters only the head is initialised: the
        backbone's random init (half a minute for EfficientNet on a CPU) is traced for its
        shapes, never run."""
        if self.backbone_params is None:
            return network.init(key, sample)["params"]
        shapes = jax.eval_shape(network.init, key, sample)["params"]
        backbone = _matching(self.backbone_params, shapes["backbone"])
        features = jax.eval_shape(network.backbone.apply, {"params": backbone}, sample)
        head = network.head.init(jax.random.fold_in(key, 1),
                                 jnp.zeros(features.shape, features.dtype))["params"]
        return {"backbone": backbone, "head": head}

    def load(self, workdir: Path, inputs, outputs: int, round_: Optional[int] = None):
        """The network and parameters of a run's checkpoint (the latest by default).

        Raises:
            ValueError: when the run directory has no readable checkpoint (of that round).
        """
        network, _, state = self.initial_state(inputs, outputs)
        checkpoints = RunCheckpoints(workdir, self.config.max_to_keep)
        try:
            restored = checkpoints.restore(state, round_)
        finally:
            checkpoints.close()
        if restored is None:
            raise ValueError(f"{workdir} has no readable checkpoint"
                             + ("" if round_ is None else f" of round {round_}"))
        return network, restored.state["params"], restored.meta

    # --------------------------------------------------------------------- phases

    def _compiled_train_step(self, network: Network, optimizer: optax.GradientTransformation,
                             state: dict, inputs, targets: np.ndarray):
        """One Optax step, compiled before any clock starts (round times exclude compilation)."""
        loss = supervised_loss(network, self.config.loss, self.augment)
        return compiled(optax_step(loss, optimizer), state["params"], state["opt_state"],
                        *self._minibatch(inputs, targets, 0),
                        **self.parallel.replicated_outputs())

    def _minibatch(self, inputs, targets: np.ndarray, step: int) -> tuple:
        c = self.config
        return minibatch(inputs, targets, step, c.batch_size, c.seed, self.parallel)

    def _backbone_phase(self, state: dict, train_step, inputs, targets: np.ndarray, round_: int,
                        progress: bool):
        """K Optax steps (none in round 0); returns the new state and the mean loss."""
        if round_ == 0:
            return state, None
        c = self.config
        params, opt_state = state["params"], state["opt_state"]
        if not any(np.any(np.asarray(weights)) for name, weights in params["head"].items()
                   if name != "gates"):
            warnings.warn(f"round {round_}: the convex head is zero (β is at or above β̄ of these "
                          "features; with auto_beta, the held-out rows preferred a constant "
                          "prediction), so no output depends on the backbone and its "
                          f"{c.steps_per_round} steps change nothing", RuntimeWarning)
        first = int(state["step"])
        losses = []
        for step in tqdm(range(first, first + c.steps_per_round), desc=f"round {round_} backbone",
                         unit="step", leave=False, disable=not progress):
            params, opt_state, loss = train_step(params, opt_state,
                                                 *self._minibatch(inputs, targets, step))
            losses.append(loss)
        loss = float(np.mean(jax.device_get(losses)))
        return {**state, "params": params, "opt_state": opt_state,
                "step": jnp.asarray(first + c.steps_per_round)}, loss

    def _solve_phase(self, state: dict, network: Network, inputs, labels: np.ndarray, beta,
                     round_: int, progress: bool):
        """Features of the training set, then the head's convex solve."""
        params = state["params"]
        features = self.features(network, params, inputs, progress)
        head = network.head
        previous = head.to_convex(params["head"])
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), round_)
        config = dataclasses.replace(self.cronos_config, beta=beta)
        if self.config.auto_beta and round_ == 0:
            path = cronos.solve_path(features, labels, config, key=key, gates=previous.gates,
                                     mesh=self.parallel.mesh)
            solution, config = path.best, dataclasses.replace(config, beta=path.points[path.best_index].beta)
        else:
            init = previous if self.config.warm_start and round_ > 0 else None
            with tqdm(total=config.max_iters, desc=f"round {round_} CRONOS", unit="it",
                      leave=False, disable=not progress) as bar:
                solution = cronos.solve(features, labels, config, key=key, gates=previous.gates,
                                        init=init, mesh=self.parallel.mesh,
                                        callback=lambda s: bar.update(int(s.iteration) - bar.n))
        weights = self.parallel.replicate(
            {k: jnp.asarray(v, head.param_dtype) for k, v in head_params(solution.params).items()})
        state = {**state, "params": {**params, "head": weights}, "round": jnp.asarray(round_)}
        train_metric = cronos.score(solution.params, features, labels, config.task)
        return state, solution, float(config.beta), train_metric

    def features(self, network: Network, params: dict, inputs, progress: bool = False) -> np.ndarray:
        """Backbone features [n, d] of ``inputs``, in batches of ``feature_batch_size``."""
        return apply_in_batches(network, params, inputs, self.config.feature_batch_size,
                                "features", progress, method=Network.features,
                                parallel=self.parallel)

    def evaluate(self, network: Network, params: dict, inputs, labels: np.ndarray,
                 targets: np.ndarray, progress: bool = False) -> dict:
        """Validation accuracy and loss of the network."""
        outputs = apply_in_batches(network, params, inputs, self.config.feature_batch_size,
                                   "evaluate", progress, parallel=self.parallel)
        record = {"val_loss": float(loss_value(outputs, targets.astype(outputs.dtype), self.config.loss))}
        if self.cronos_config.task == "classification":
            record["val_accuracy"] = accuracy(outputs, labels)
        return record

    def _record(self, state: dict, solution: cronos.Solution, train_loss, train_metric: float,
                seconds: float, beta: float) -> dict:
        stats = solution.stats
        metric = "train_mse" if self.cronos_config.task == "regression" else "train_accuracy"
        return {"round": int(state["round"]), "step": int(state["step"]), "seconds": seconds,
                "train_loss": train_loss, metric: train_metric, "beta": beta,
                "objective": stats.objective,
                "duality_gap": stats.duality_gap, "admm_iterations": stats.iterations,
                "solve_seconds": stats.seconds, "status": solution.status.name}

    def _fingerprint(self, network: Network, n: int, run_config: Optional[dict]) -> dict:
        """What ``config.json`` records and a resumed run must match."""
        return {"cronos": dataclasses.asdict(self.cronos_config),
                "alternating": dataclasses.asdict(self.config),
                "network": repr(network), "augment": describe(self.augment), "train_rows": n,
                "recipe": run_config or {}}
