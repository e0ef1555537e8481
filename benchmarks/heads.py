"""What the pretrained-backbone benchmarks share (``cnn_imagenet.py``, ``gpt2_imdb.py``).

1. **Heads on frozen features** (standardised by the training features' mean and std):
   - the convex head: ``cronos.solve_path`` (gated ReLU, P patterns, β chosen on a 20% holdout
     of the training rows — nothing tuned on the test set);
   - the same head with the paper's settings: β = 1e-3 fixed, 10 iterations of plain ADMM (the
     paper's CRONOS has no Anderson acceleration, which would move the iterate this early
     stop lands on);
   - an AdamW-trained ``TwoLayerHead`` of width 2P over a log grid of learning rates, tuned two
     ways: on the convex head's holdout (learning rate and epochs; then one run on all the
     training rows), the fair competitor; and on the test set (each run's best test accuracy
     over the epochs, the best run reported), an optimistic one. With the seconds of the
     chosen run and of the whole grid;
   - logistic regression: multinomial, L2 weight 1/n (scikit-learn's default C = 1), L-BFGS.
2. **Fine-tuning** the parameters a regex selects: CRONOS-AM (rounds of D-Adapt AdamW steps on
   the backbone, a convex solve after each) against AdamW on the same parameters plus a fresh
   ``TwoLayerHead`` (width 2P, cross-entropy) for the same number of steps over a grid of
   learning rates, evaluated after every round's worth of steps.

Times exclude compilation: compiled functions are warmed up before their clocks start, and
compilation inside CRONOS-AM's rounds is measured with ``jax.monitoring`` and subtracted.
Both scripts take the same options for these parts (``parse_args``).
"""

import argparse
import dataclasses
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_cronos import cronos, models
from flax_cronos.baseline import train_end_to_end
from flax_cronos.cronos.path import holdout_split
from flax_cronos.cronos.problem import encode_targets
from flax_cronos.trainer import AlternatingConfig, Network
from flax_cronos.training import apply_in_batches, take
from timing import TimedTrainer, compile_seconds


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(parser: argparse.ArgumentParser, *, quick: dict, out: str, head_epochs: int,
               head_batch_size: int, rounds: int, steps_per_round: int, batch_size: int,
               feature_batch_size: int) -> argparse.Namespace:
    """The script's own options plus those of ``frozen_heads`` and ``fine_tuning`` (with these
    defaults), ``--quick`` (the settings ``quick``: a smoke test) and ``--out``; logs the machine
    and the settings."""
    parser.add_argument("--patterns", type=int, default=16)
    parser.add_argument("--head-epochs", type=int, default=head_epochs)
    parser.add_argument("--head-batch-size", type=int, default=head_batch_size)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--steps-per-round", type=int, default=steps_per_round)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--feature-batch-size", type=int, default=feature_batch_size)
    parser.add_argument("--skip-fine-tuning", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", default=out, help="the JSON report")
    args = parser.parse_args()
    if args.quick:
        vars(args).update(quick)
    log(f"# {platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
        f"JAX {jax.__version__}, {vars(args)}")
    return args


def outputs(labels: np.ndarray) -> int:
    """Outputs of a head for these class labels, as the convex program encodes them (one ±1
    output for two classes, else C)."""
    return encode_targets(labels, "classification", len(labels))[0].shape[1]


def timed_features(network, params, inputs, batch_size: int) -> tuple[np.ndarray, float]:
    """Features of ``inputs`` and the seconds they took (after one compiling batch)."""
    apply_in_batches(network, params, take(inputs, slice(0, batch_size)), batch_size)
    start = time.perf_counter()
    features = apply_in_batches(network, params, inputs, batch_size)
    return features, time.perf_counter() - start


def convex_head(x, y, x_test, y_test, patterns: int) -> dict:
    config = cronos.CronosConfig(patterns=patterns, activation="gated_relu", max_iters=100)
    warm_up = dataclasses.replace(config, max_iters=2)        # same shapes: compiles everything
    cronos.solve_path(x, y, warm_up, key=jax.random.key(0))
    start = time.perf_counter()
    path = cronos.solve_path(x, y, config, key=jax.random.key(0))
    seconds = time.perf_counter() - start
    return {"test_accuracy": cronos.score(path.best.params, x_test, y_test, "classification"),
            "seconds": seconds, "beta": path.points[path.best_index].beta,
            "path_points": len(path.points)}


def convex_head_fixed_beta(x, y, x_test, y_test, patterns: int, beta: float = 1e-3,
                           max_iters: int = 10) -> dict:
    """The paper's CRONOS settings: one solve of plain ADMM at β = 1e-3 stopped after a few
    iterations (docs/cronos.md §2.7: 3–20 on GPT-2 features), nothing chosen on data."""
    config = cronos.CronosConfig(patterns=patterns, beta=beta, activation="gated_relu",
                                 max_iters=max_iters, anderson=0)
    cronos.solve(x, y, config, key=jax.random.key(0))         # compiles
    start = time.perf_counter()
    solution = cronos.solve(x, y, config, key=jax.random.key(0))
    seconds = time.perf_counter() - start
    return {"test_accuracy": cronos.score(solution.params, x_test, y_test, "classification"),
            "seconds": seconds, "beta": beta, "admm_iterations": solution.stats.iterations}


def best_of(runs: list[dict]) -> dict:
    """The learning-rate grid's best run (by its best test accuracy), its seconds and the
    whole grid's."""
    best = max(runs, key=lambda r: r["best_test_accuracy"])
    return {"test_accuracy": best["best_test_accuracy"], "seconds": best["seconds"],
            "grid_seconds": sum(r["seconds"] for r in runs),
            "learning_rate": best["learning_rate"], "grid": runs}


def adamw_run(x, y, x_eval, y_eval, learning_rate: float, *, width: int, epochs: int,
              batch_size: int) -> list[dict]:
    """One AdamW-trained ``TwoLayerHead`` (cross-entropy): its accuracy on (x_eval, y_eval) and
    its training seconds after every epoch."""
    batch = min(batch_size, len(x))
    steps_per_epoch = len(x) // batch
    _, history = train_end_to_end(models.TwoLayerHead(width=width, outputs=outputs(y)),
                                  optax.adamw(learning_rate, weight_decay=1e-4), (x, y),
                                  (x_eval, y_eval), steps=epochs * steps_per_epoch,
                                  batch_size=batch, eval_every=steps_per_epoch,
                                  loss="cross_entropy")
    return history


def adamw_heads(x, y, x_test, y_test, *, learning_rates: list[float], **settings) -> dict:
    """The optimistic competitor: each learning rate's best test accuracy over the epochs."""
    runs = []
    for lr in learning_rates:
        history = adamw_run(x, y, x_test, y_test, lr, **settings)
        runs.append({"learning_rate": lr,
                     "best_test_accuracy": max(r["val_accuracy"] for r in history),
                     "final_test_accuracy": history[-1]["val_accuracy"],
                     "seconds": history[-1]["seconds"]})
    return best_of(runs)


def adamw_heads_tuned_on_holdout(x, y, x_test, y_test, *, learning_rates: list[float],
                                 epochs: int, **settings) -> dict:
    """The fair competitor, tuned as the convex head's β is: the learning rate and the number
    of epochs that score best on the same 20% holdout of the training rows
    (``cronos.path.holdout_split``), then one run with them on all the training rows, tested
    once. Seconds: that run, and the grid plus that run (tuning included)."""
    held, kept = holdout_split(len(x), 0.2)
    grid = []
    for lr in learning_rates:
        history = adamw_run(x[kept], y[kept], x[held], y[held], lr, epochs=epochs, **settings)
        best = max(range(len(history)), key=lambda i: history[i]["val_accuracy"])
        grid.append({"learning_rate": lr, "epochs": best + 1,
                     "holdout_accuracy": history[best]["val_accuracy"],
                     "seconds": history[-1]["seconds"]})
    chosen = max(grid, key=lambda run: run["holdout_accuracy"])
    final = adamw_run(x, y, x_test, y_test, chosen["learning_rate"], epochs=chosen["epochs"],
                      **settings)[-1]
    return {"test_accuracy": final["val_accuracy"], "seconds": final["seconds"],
            "grid_seconds": sum(run["seconds"] for run in grid) + final["seconds"],
            "learning_rate": chosen["learning_rate"], "epochs": chosen["epochs"], "grid": grid}


def logistic_regression(x, y, x_test, y_test, iterations: int = 300) -> dict:
    """Multinomial logistic regression, mean cross-entropy + (1/2n)‖W‖² (no penalty on the
    bias), minimised by L-BFGS."""
    n, classes = len(x), int(y.max()) + 1
    x1 = jnp.concatenate([jnp.asarray(x), jnp.ones((n, 1), x.dtype)], axis=1)

    def loss(w):
        logits = x1 @ w
        return (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
                + 0.5 / n * jnp.sum(w[:-1] ** 2))

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def fit(w):
        def step(_, carry):
            w, state = carry
            value, grad = value_and_grad(w, state=state)
            updates, state = solver.update(grad, state, w, value=value, grad=grad, value_fn=loss)
            return optax.apply_updates(w, updates), state
        return jax.lax.fori_loop(0, iterations, step, (w, solver.init(w)))[0]

    w0 = jnp.zeros((x1.shape[1], classes), x1.dtype)
    fit(w0).block_until_ready()
    start = time.perf_counter()
    w = fit(w0).block_until_ready()
    seconds = time.perf_counter() - start
    logits = jnp.concatenate([jnp.asarray(x_test), jnp.ones((len(x_test), 1), x.dtype)], 1) @ w
    return {"test_accuracy": float(np.mean(np.argmax(logits, 1) == y_test)), "seconds": seconds}


def frozen_heads(args, x, y, x_test, y_test, learning_rates: list[float]) -> dict:
    """The three heads on features x [n, d] / x_test, standardised by x's statistics."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    results = {"convex": convex_head(x, y, x_test, y_test, args.patterns),
               "convex_fixed_beta": convex_head_fixed_beta(x, y, x_test, y_test, args.patterns)}
    log(f"convex head: {results['convex']}")
    log(f"convex head, the paper's fixed β: {results['convex_fixed_beta']}")
    settings = dict(width=2 * args.patterns, epochs=args.head_epochs,
                    batch_size=args.head_batch_size, learning_rates=learning_rates)
    results["adamw"] = adamw_heads_tuned_on_holdout(x, y, x_test, y_test, **settings)
    results["adamw_tuned_on_test"] = adamw_heads(x, y, x_test, y_test, **settings)
    for name in ("adamw", "adamw_tuned_on_test"):
        log(f"{name} head: {results[name]['test_accuracy']:.3f} "
            f"(lr {results[name]['learning_rate']:.0e}) in {results[name]['seconds']:.2f}s, "
            f"grid {results[name]['grid_seconds']:.2f}s")
    results["logistic_regression"] = logistic_regression(x, y, x_test, y_test)
    log(f"logistic regression: {results['logistic_regression']}")
    return results


def cronos_am(args, network, params, train, test, trainable: str) -> dict:
    trainer = TimedTrainer(network, cronos.CronosConfig(patterns=args.patterns,
                                                        activation="gated_relu", max_iters=50),
                           AlternatingConfig(rounds=args.rounds,
                                             steps_per_round=args.steps_per_round,
                                             batch_size=args.batch_size, trainable=trainable,
                                             warm_start=True, auto_beta=True,
                                             feature_batch_size=args.feature_batch_size),
                           backbone_params=params)
    result = trainer.fit(train, test, progress=False)
    history, subtracted = [], 0.0
    for record in result.history:
        subtracted += compile_seconds(trainer.windows[record["round"]])
        history.append({"round": record["round"], "step": record["step"],
                        "seconds": record["seconds"] - subtracted,
                        "compile_seconds": subtracted, "test_accuracy": record["val_accuracy"]})
    return {"history": history, "test_accuracy": max(r["test_accuracy"] for r in history),
            "seconds": history[-1]["seconds"]}


def adamw_fine_tuning(args, network, params, train, test, trainable: str,
                      learning_rates: list[float]) -> dict:
    model = Network(network, models.TwoLayerHead(width=2 * args.patterns,
                                                 outputs=outputs(train[1])))
    start = model.init(jax.random.key(0), take(train[0], slice(0, 1)))["params"]
    start = {**start, "backbone": params}
    runs = []
    for lr in learning_rates:
        _, history = train_end_to_end(model, optax.adamw(lr, weight_decay=1e-4), train, test,
                                      steps=args.rounds * args.steps_per_round,
                                      batch_size=args.batch_size,
                                      eval_every=args.steps_per_round, loss="cross_entropy",
                                      eval_batch_size=args.feature_batch_size, params=start,
                                      trainable=f"{trainable}|^head/")
        runs.append({"learning_rate": lr, "history": history,
                     "best_test_accuracy": max(r["val_accuracy"] for r in history),
                     "seconds": history[-1]["seconds"]})
        log(f"AdamW fine-tuning lr {lr:.0e}: {runs[-1]['best_test_accuracy']:.3f} "
            f"in {runs[-1]['seconds']:.1f}s")
    return best_of(runs)


def fine_tuning(args, network, params, train, test, trainable: str,
                learning_rates: list[float]) -> dict:
    """CRONOS-AM and AdamW fine-tuning of the parameters ``trainable`` selects."""
    report = {"cronos_am": cronos_am(args, network, params, train, test, trainable)}
    log(f"CRONOS-AM: {report['cronos_am']['test_accuracy']:.3f} "
        f"in {report['cronos_am']['seconds']:.1f}s")
    report["adamw_fine_tuning"] = adamw_fine_tuning(args, network, params, train, test,
                                                    trainable, learning_rates)
    return report
