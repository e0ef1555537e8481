"""Pretrained EfficientNet-Lite0 on CIFAR-10 (10 classes): convex head vs trained heads, and
CRONOS-AM vs AdamW fine-tuning of the last stages.

    python benchmarks/cnn_imagenet.py [--train-size 2000] [--test-size 500] [--size 96]
        [--patterns 16] [--rounds 2] [--steps-per-round 10] [--batch-size 64]
    python benchmarks/cnn_imagenet.py --quick       # a smoke test, a few minutes on 2 cores

CIFAR-10 images (a seeded random subset of the train and test splits) are resized on the device
to ``--size`` (bilinear) and normalised as the ImageNet weights expect, (pixel − 127) / 128.

1. **Heads on frozen features.** The pooled 1280-d features of the training and test images
   (extraction speed in images/s), standardised by the training features' mean and std, then:
   - the convex head: ``cronos.solve_path`` (gated ReLU, P patterns, β chosen on a 20% holdout
     of the training rows — nothing tuned on the test set);
   - an AdamW-trained ``TwoLayerHead`` of width 2P, cross-entropy, over a 5-point log grid of
     learning rates (1e-4 … 1e-2), ``--head-epochs`` epochs; its best test accuracy over the
     grid and epochs is reported (tuned on the test set: an optimistic competitor);
   - logistic regression: multinomial, L2 weight 1/n (scikit-learn's default C = 1), L-BFGS.
2. **Fine-tuning** the parameters matching ``^backbone/(stage7|top)/``: CRONOS-AM (``--rounds``
   rounds of ``--steps-per-round`` D-Adapt AdamW steps, a convex solve after each) against AdamW
   on the same parameters plus a fresh ``TwoLayerHead`` (width 2P, cross-entropy) for the same
   number of steps over a 3-point learning-rate grid, evaluated after every
   ``--steps-per-round`` steps.

Times exclude compilation: compiled functions are warmed up before their clocks start, and
compilation inside CRONOS-AM's rounds is measured with ``jax.monitoring`` and subtracted.
Writes ``docs/cnn_imagenet.json``.
"""

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_cronos import cronos, models
from flax_cronos.baseline import train_end_to_end
from flax_cronos.data import images
from flax_cronos.trainer import AlternatingConfig, Network
from flax_cronos.training import apply_in_batches
from timing import TimedTrainer, compile_seconds

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"
FINE_TUNED = r"^backbone/(stage7|top)/"
HEAD_LEARNING_RATES = [float(v) for v in np.logspace(-4, -2, 5)]
FINE_TUNE_LEARNING_RATES = [1e-4, 1e-3, 1e-2]
QUICK = dict(train_size=200, test_size=100, size=64, rounds=1, steps_per_round=2,
             batch_size=32, head_epochs=5)


def log(message: str) -> None:
    print(message, flush=True)


def load(args):
    train = images.subset(*images.load_cifar10(args.data, "train"), args.train_size, seed=0)
    test = images.subset(*images.load_cifar10(args.data, "test"), args.test_size, seed=0)
    return train, test


def backbone(size: int):
    model, variables = models.efficientnet.load_pretrained(top=False)
    return models.ImageInput(model, mean=(127.0,), std=(128.0,), size=size), variables["params"]


def extract(network, params, x, batch_size: int) -> tuple[np.ndarray, float]:
    """Features of ``x`` and the extraction rate in images/s (after one compiling batch)."""
    apply_in_batches(network, params, x[:batch_size], batch_size)
    start = time.perf_counter()
    features = apply_in_batches(network, params, x, batch_size)
    return features, len(x) / (time.perf_counter() - start)


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


def adamw_heads(x, y, x_test, y_test, width: int, epochs: int) -> dict:
    batch = min(256, len(x))
    steps_per_epoch = len(x) // batch
    runs = []
    for lr in HEAD_LEARNING_RATES:
        _, history = train_end_to_end(models.TwoLayerHead(width=width, outputs=10),
                                      optax.adamw(lr, weight_decay=1e-4), (x, y),
                                      (x_test, y_test), steps=epochs * steps_per_epoch,
                                      batch_size=batch, eval_every=steps_per_epoch,
                                      loss="cross_entropy")
        runs.append({"learning_rate": lr, "best_test_accuracy": max(r["val_accuracy"] for r in history),
                     "final_test_accuracy": history[-1]["val_accuracy"],
                     "seconds": history[-1]["seconds"]})
    best = max(runs, key=lambda r: r["best_test_accuracy"])
    return {"test_accuracy": best["best_test_accuracy"], "seconds": best["seconds"],
            "learning_rate": best["learning_rate"], "grid": runs}


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


def heads(args, network, params, train, test) -> dict:
    x, rate = extract(network, params, train[0], args.feature_batch_size)
    x_test, _ = extract(network, params, test[0], args.feature_batch_size)
    log(f"features {x.shape} at {rate:.1f} images/s")
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    results = {"feature_images_per_second": rate,
               "convex": convex_head(x, train[1], x_test, test[1], args.patterns)}
    log(f"convex head: {results['convex']}")
    results["adamw"] = adamw_heads(x, train[1], x_test, test[1], 2 * args.patterns,
                                   args.head_epochs)
    log(f"AdamW head: best {results['adamw']['test_accuracy']:.3f} "
        f"(lr {results['adamw']['learning_rate']:.0e})")
    results["logistic_regression"] = logistic_regression(x, train[1], x_test, test[1])
    log(f"logistic regression: {results['logistic_regression']}")
    return results


def cronos_am(args, network, params, train, test) -> dict:
    trainer = TimedTrainer(network, cronos.CronosConfig(patterns=args.patterns,
                                                        activation="gated_relu", max_iters=50),
                           AlternatingConfig(rounds=args.rounds,
                                             steps_per_round=args.steps_per_round,
                                             batch_size=args.batch_size, trainable=FINE_TUNED,
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


def adamw_fine_tuning(args, network, params, train, test) -> dict:
    model = Network(network, models.TwoLayerHead(width=2 * args.patterns, outputs=10))
    start = model.init(jax.random.key(0), train[0][:1])["params"]
    start = {**start, "backbone": params}
    runs = []
    for lr in FINE_TUNE_LEARNING_RATES:
        _, history = train_end_to_end(model, optax.adamw(lr, weight_decay=1e-4), train, test,
                                      steps=args.rounds * args.steps_per_round,
                                      batch_size=args.batch_size,
                                      eval_every=args.steps_per_round, loss="cross_entropy",
                                      eval_batch_size=args.feature_batch_size, params=start,
                                      trainable=f"{FINE_TUNED}|^head/")
        runs.append({"learning_rate": lr, "history": history,
                     "best_test_accuracy": max(r["val_accuracy"] for r in history),
                     "seconds": history[-1]["seconds"]})
        log(f"AdamW fine-tuning lr {lr:.0e}: {runs[-1]['best_test_accuracy']:.3f} "
            f"in {runs[-1]['seconds']:.1f}s")
    best = max(runs, key=lambda r: r["best_test_accuracy"])
    return {"test_accuracy": best["best_test_accuracy"], "seconds": best["seconds"],
            "learning_rate": best["learning_rate"], "grid": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(CIFAR10), help="CIFAR-10 parquet or its folder")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--size", type=int, default=96, help="image side fed to the network")
    parser.add_argument("--patterns", type=int, default=16)
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--feature-batch-size", type=int, default=100)
    parser.add_argument("--skip-fine-tuning", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", default=str(ROOT / "docs" / "cnn_imagenet.json"))
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    device = jax.devices()[0]
    log(f"# {platform.processor() or platform.machine()}, {device.device_kind}, "
        f"JAX {jax.__version__}, {vars(args)}")
    train, test = load(args)
    network, params = backbone(args.size)
    report = {"device": device.device_kind, "jax": jax.__version__, "settings": vars(args),
              "heads": heads(args, network, params, train, test)}
    if not args.skip_fine_tuning:
        report["cronos_am"] = cronos_am(args, network, params, train, test)
        log(f"CRONOS-AM: {report['cronos_am']['test_accuracy']:.3f} "
            f"in {report['cronos_am']['seconds']:.1f}s")
        report["adamw_fine_tuning"] = adamw_fine_tuning(args, network, params, train, test)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
