"""CRONOS-AM against tuned end-to-end optimizers: the paper's protocol (docs/cronos.md §3, §4.2).

    python benchmarks/cronos_am.py [--datasets fashion_mnist,cifar10_cat_dog] [--seeds 3]
        [--grid-points 5] [--train-size 10000] [--val-size 2000] [--rounds 10]
        [--steps-per-round 10] [--batch-size 1024] [--methods adam,adamw,sgd,dadapt_adamw,yogi]
    python benchmarks/cronos_am.py --quick          # a smoke test, 3-4 minutes on 2 busy cores

Per dataset the recipe's CRONOS-AM (``experiment.make_trainer``: convex head solves alternating
with untuned D-Adapt AdamW steps on the backbone) runs once per seed; every competitor trains the
same architecture end to end (backbone + ``TwoLayerHead(width=2P, outputs=C)``) with one Optax
optimizer over a log-uniform learning-rate grid and the same seeds, MSE loss on the ±1 / one-hot
targets, batch size and number of backbone steps (rounds × steps per round), evaluated every
``steps_per_round`` steps:

- fashion_mnist: 10 classes, ``recipes/mlp_fashion_mnist.py`` (Dense 256–ReLU–Dense 256–ReLU).
- cifar10_cat_dog: classes (3, 5), ``recipes/cnn_cifar10.py`` (Conv 32–ReLU–AvgPool, twice).

Timing excludes compilation and evaluation. Competitors: ``baseline.train_end_to_end`` discards
a compiled first step and synchronises every step. CRONOS-AM: one untimed warm-up run per
dataset (``rounds = 1``, two ADMM iterations per solve, same shapes) compiles the solver and
the β path, and any compilation that still happens inside the timed rounds (the trainer
compiles its train step before its clock starts; other shapes may still compile) is measured with
``jax.monitoring`` (tracing, lowering and XLA compile spans) and subtracted; the raw times are
kept as ``seconds_raw``. Without the warm-up (``--no-warmup``) the subtraction over-counts:
cold compiles overlap asynchronous execution, so the timings come out too small.

Reported per (dataset, method): the peak validation accuracy (the median over seeds of each
run's best evaluation, at the learning rate whose median is highest; the range of those medians
over the grid), the wall-clock of one run, and whether CRONOS-AM reaches the best tuned
competitor's accuracy (minus ``--match-tolerance``) within the time of one run of that
competitor at its best learning rate. Writes ``docs/cronos_am.json`` and one plot per dataset,
``docs/cronos_am_<dataset>.png``: validation accuracy against time, the median over the
learning-rate grid and seeds with a 5–95% band (a finished run keeps its final accuracy).
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

from flax_cronos import experiment, models
from flax_cronos.baseline import train_end_to_end
from flax_cronos.cronos.problem import encode_targets
from flax_cronos.trainer import Network
from timing import TimedTrainer, compile_seconds

ROOT = Path(__file__).resolve().parents[1]

DATASETS = {
    "fashion_mnist": {"recipe": "recipes/mlp_fashion_mnist.py", "overrides": {},
                      "adaptive_range": (-4.0, -1.5)},
    "cifar10_cat_dog": {"recipe": "recipes/cnn_cifar10.py", "overrides": {"data.classes": (3, 5)},
                        "adaptive_range": (-3.5, -1.5)},
}

# name -> (Optax factory of the learning rate, exponent range of the grid; None: the dataset's
# adaptive range). D-Adaptation estimates its own step size, so its grid is a multiplier of 1.
COMPETITORS = {
    "adam": (lambda lr: optax.adam(lr), None),
    "adamw": (lambda lr: optax.adamw(lr, weight_decay=1e-4), None),
    "sgd": (lambda lr: optax.sgd(lr, momentum=0.9), (-3.0, -0.5)),
    "dadapt_adamw": (lambda lr: optax.contrib.dadapt_adamw(learning_rate=lr), (-1.0, 1.0)),
    "yogi": (lambda lr: optax.yogi(lr), None),
}

QUICK = dict(datasets="fashion_mnist,cifar10_cat_dog", seeds=1, grid_points=2, train_size=600,
             val_size=400, rounds=2, steps_per_round=5, batch_size=200,
             set=["cronos.max_iters=5", "cronos.pcg_max_iters=10"])

def lr_grid(exponents: tuple[float, float], points: int) -> list[float]:
    lo, hi = exponents
    if points == 1:
        return [float(10 ** ((lo + hi) / 2))]
    return [float(v) for v in np.logspace(lo, hi, points)]


def dataset_config(name: str, args, seed: int):
    spec = DATASETS[name]
    overrides = dict(spec["overrides"])
    for key, value in (("data.train_size", args.train_size), ("data.val_size", args.val_size),
                       ("trainer.rounds", args.rounds),
                       ("trainer.steps_per_round", args.steps_per_round),
                       ("trainer.batch_size", args.batch_size)):
        if value is not None:
            overrides[key] = value
    for item in args.set:
        key, _, value = item.partition("=")
        target, _, key = key.rpartition(":")
        if target in ("", name):
            overrides[key] = experiment.parse_setting(value)
    overrides["trainer.seed"] = seed
    config = experiment.load_recipe(ROOT / spec["recipe"], overrides)
    if config.data.path is not None and not Path(config.data.path).is_absolute():
        config.data.path = str(ROOT / config.data.path)     # recipes name paths from the repo root
    return config


def run_cronos_am(config, train, val) -> dict:
    base = experiment.make_trainer(config, train[0])
    trainer = TimedTrainer(base.backbone, base.cronos_config, base.config, base.optimizer,
                           base.backbone_params, base.augment)
    result = trainer.fit(train, val, workdir=None, progress=False)
    history, subtracted = [], 0.0
    for record in result.history:
        subtracted += compile_seconds(trainer.windows[record["round"]])
        history.append({"round": record["round"], "step": record["step"],
                        "seconds": record["seconds"] - subtracted,
                        "seconds_raw": record["seconds"], "compile_seconds": subtracted,
                        "solve_seconds": record["solve_seconds"],
                        "admm_iterations": record["admm_iterations"], "beta": record["beta"],
                        "train_loss": record["train_loss"], "val_accuracy": record["val_accuracy"]})
    return {"history": history}


def warm_up(config, train, val) -> float:
    """An untimed CRONOS-AM run on the same shapes: compiles the solver and the path.

    Two ADMM iterations per solve suffice (the iteration limit is not a static argument)."""
    config = config.copy_and_resolve_references()
    config.trainer.rounds = 1
    config.cronos.max_iters = min(2, config.cronos.max_iters)
    start = time.perf_counter()
    experiment.make_trainer(config, train[0]).fit(train, val, workdir=None, progress=False)
    return time.perf_counter() - start


def run_competitor(method: str, lr: float, config, train, val, outputs: int, seed: int) -> dict:
    network = Network(experiment.make_backbone(config.model, train[0])[0],
                      models.TwoLayerHead(width=2 * config.cronos.patterns, outputs=outputs))
    t = config.trainer
    _, history = train_end_to_end(network, COMPETITORS[method][0](lr), train, val,
                               steps=t.rounds * t.steps_per_round, batch_size=t.batch_size,
                               eval_every=t.steps_per_round, loss=t.loss, seed=seed,
                               eval_batch_size=t.feature_batch_size, progress=False)
    return {"history": history}


def peak(run: dict) -> float:
    return max(r["val_accuracy"] for r in run["history"])


def final_seconds(run: dict) -> float:
    return run["history"][-1]["seconds"]


def best_by(run: dict, seconds: float) -> float:
    """Best validation accuracy among the evaluations made within ``seconds``; −∞ if none (a
    run with nothing to show yet ranks below every accuracy in a median over seeds)."""
    values = [r["val_accuracy"] for r in run["history"] if r["seconds"] <= seconds]
    return max(values) if values else -np.inf


def first_reaching(run: dict, target: float) -> float:
    return next((r["seconds"] for r in run["history"] if r["val_accuracy"] >= target), float("inf"))


def summarise(runs: dict, tolerance: float) -> dict:
    """Per-method peak accuracy, grid range and times, and the CRONOS-AM match verdict."""
    methods = {}
    cronos = runs["cronos_am"]
    peaks = [peak(r) for r in cronos]
    methods["cronos_am"] = {
        "best_lr": None, "peak_val_accuracy": float(np.median(peaks)),
        "range": [float(min(peaks)), float(max(peaks))], "range_over": "seeds",
        "seconds_per_run": float(np.median([final_seconds(r) for r in cronos])),
        "first_solve_seconds": float(np.median([r["history"][0]["seconds"] for r in cronos])),
        "compile_seconds_subtracted": float(np.median(
            [r["history"][-1]["compile_seconds"] for r in cronos]))}
    for method, by_lr in runs.items():
        if method == "cronos_am":
            continue
        per_lr = {lr: float(np.median([peak(r) for r in seeds])) for lr, seeds in by_lr.items()}
        best_lr = max(per_lr, key=per_lr.get)
        times = {lr: float(np.median([final_seconds(r) for r in seeds])) for lr, seeds in by_lr.items()}
        methods[method] = {
            "best_lr": float(best_lr), "peak_val_accuracy": per_lr[best_lr],
            "range": [min(per_lr.values()), max(per_lr.values())], "range_over": "learning rates",
            "peak_by_lr": {f"{lr:.3g}": v for lr, v in per_lr.items()},
            "seconds_per_run": times[best_lr], "grid_seconds": float(sum(times.values()))}
    competitors = [m for m in methods if m != "cronos_am"]
    if not competitors:
        return {"methods": methods}
    best = max(competitors, key=lambda m: methods[m]["peak_val_accuracy"])
    target = methods[best]["peak_val_accuracy"] - tolerance
    one_run, grid = methods[best]["seconds_per_run"], methods[best]["grid_seconds"]
    within_run = float(np.median([best_by(r, one_run) for r in cronos]))
    within_grid = float(np.median([best_by(r, grid) for r in cronos]))
    reach = float(np.median([first_reaching(r, target) for r in cronos]))
    match = {"best_competitor": best, "best_competitor_accuracy": methods[best]["peak_val_accuracy"],
             "tolerance": tolerance, "one_run_seconds": one_run, "grid_seconds": grid,
             "cronos_am_accuracy_within_one_run": None if np.isinf(within_run) else within_run,
             "cronos_am_accuracy_within_grid": None if np.isinf(within_grid) else within_grid,
             "matches_within_one_run": bool(within_run >= target),
             "matches_within_grid": bool(within_grid >= target),
             "cronos_am_seconds_to_target": None if np.isinf(reach) else reach,
             "matches_eventually": bool(methods["cronos_am"]["peak_val_accuracy"] >= target)}
    return {"methods": methods, "match": match}


def curves(run_list: list, grid: np.ndarray) -> np.ndarray:
    """[runs, len(grid)] accuracy of the latest evaluation by each time (NaN before the first)."""
    out = np.full((len(run_list), len(grid)), np.nan)
    for i, run in enumerate(run_list):
        seconds = np.array([r["seconds"] for r in run["history"]])
        values = np.array([r["val_accuracy"] for r in run["history"]])
        index = np.searchsorted(seconds, grid, side="right") - 1
        out[i] = np.where(index >= 0, values[np.maximum(index, 0)], np.nan)
    return out


def plot(name: str, runs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_runs = {m: (v if m == "cronos_am" else [r for seeds in v.values() for r in seeds])
                for m, v in runs.items()}
    times = [r["seconds"] for v in all_runs.values() for run in v for r in run["history"]]
    grid = np.geomspace(max(min(times), 1e-3), max(times) * 1.05, 400)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, run_list in all_runs.items():
        values = curves(run_list, grid)
        started = ~np.isnan(values).any(axis=0)         # once every run has an evaluation
        if not started.any():
            continue
        median = np.median(values[:, started], axis=0)
        low, high = np.percentile(values[:, started], [5, 95], axis=0)
        label = "CRONOS-AM" if method == "cronos_am" else method
        width = 2.5 if method == "cronos_am" else 1.3
        (line,) = ax.plot(grid[started], median, label=label, lw=width)
        ax.fill_between(grid[started], low, high, color=line.get_color(), alpha=0.15, lw=0)
        if method == "cronos_am":
            ends = [run["history"][-1]["seconds"] for run in run_list]
            ax.axvline(np.median(ends), color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training wall-clock, s (compilation and evaluation excluded; log scale)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{name}: median over learning-rate grid and seeds, 5–95% band")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict) -> str:
    lines = ["| dataset | method | best LR | peak val acc (median over seeds) | range | "
             "s / run | s for the LR grid |", "|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        methods = result["summary"]["methods"]
        for method, row in methods.items():
            lr = "none (untuned)" if row["best_lr"] is None else f"{row['best_lr']:.2g}"
            spread = f"{row['range'][0]:.3f}–{row['range'][1]:.3f} ({row['range_over']})"
            grid = f"{row['grid_seconds']:.2f}" if "grid_seconds" in row else "–"
            label = "**CRONOS-AM**" if method == "cronos_am" else method
            lines.append(f"| {name} | {label} | {lr} | {row['peak_val_accuracy']:.3f} | {spread} | "
                         f"{row['seconds_per_run']:.2f} | {grid} |")
    for name, result in results.items():
        match = result["summary"].get("match")
        if match is None:
            continue
        acc = lambda v: "no evaluation yet" if v is None else f"{v:.3f}"
        reach = match["cronos_am_seconds_to_target"]
        lines.append("")
        lines.append(
            f"- {name}: best tuned competitor {match['best_competitor']} "
            f"{match['best_competitor_accuracy']:.3f} (target −{match['tolerance']:g}); "
            f"CRONOS-AM within one of its runs ({match['one_run_seconds']:.2f} s): "
            f"{acc(match['cronos_am_accuracy_within_one_run'])} → "
            f"{'matches' if match['matches_within_one_run'] else 'does not match'}; within its "
            f"LR grid ({match['grid_seconds']:.2f} s): {acc(match['cronos_am_accuracy_within_grid'])}"
            f" → {'matches' if match['matches_within_grid'] else 'does not match'}; reaches the "
            f"target {'never' if reach is None else f'at {reach:.2f} s'}.")
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated, from {sorted(DATASETS)}")
    parser.add_argument("--methods", default=",".join(COMPETITORS),
                        help=f"competitors, from {sorted(COMPETITORS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (paper: 3)")
    parser.add_argument("--grid-points", type=int, default=5, help="learning rates per optimizer")
    parser.add_argument("--train-size", type=int, help="training rows (default: the recipe's)")
    parser.add_argument("--val-size", type=int, help="validation rows (default: the recipe's)")
    parser.add_argument("--rounds", type=int, help="CRONOS-AM rounds (default: the recipe's)")
    parser.add_argument("--steps-per-round", type=int, help="backbone steps between solves")
    parser.add_argument("--batch-size", type=int, help="minibatch (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="[DATASET:]KEY=VALUE",
                        help="extra recipe override (repeatable), for every dataset or only the "
                             "named one, e.g. cifar10_cat_dog:cronos.max_iters=5")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="an untimed CRONOS-AM run (rounds=1) per dataset before the timed "
                             "ones; without it all compilation is subtracted from the timings")
    parser.add_argument("--match-tolerance", type=float, default=0.005,
                        help="accuracy below the best competitor's that still counts as a match")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test setting: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "cronos_am.json")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value if key != "set" else value + args.set)
        if args.out == ROOT / "docs" / "cronos_am.json":
            args.out = ROOT / "docs" / "cronos_am_quick.json"
    names = [n for n in args.datasets.split(",") if n]
    methods = [m for m in args.methods.split(",") if m]
    for name in names:
        if name not in DATASETS:
            parser.error(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    for method in methods:
        if method not in COMPETITORS:
            parser.error(f"unknown method {method!r}; choose from {sorted(COMPETITORS)}")
    if args.seeds < 1 or args.grid_points < 1:
        parser.error("--seeds and --grid-points must be >= 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure_prefix = args.out.stem                   # cronos_am or cronos_am_quick

    results = {"settings": {
        "argv": sys.argv[1:], "seeds": list(range(args.seeds)), "grid_points": args.grid_points,
        "match_tolerance": args.match_tolerance, "warmup": args.warmup, "platform": platform.platform(),
        "device": jax.devices()[0].device_kind, "jax": jax.__version__, "optax": optax.__version__,
        "timing": "compilation and evaluation excluded; CRONOS-AM "
                  + ("after a warm-up run, with the " if args.warmup else "without a warm-up "
                     "(approximate: over-subtracts), with all ")
                  + "compilation inside its timed rounds measured and subtracted"},
        "datasets": {}}
    print(f"# {platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
          f"JAX {jax.__version__}")
    for name in names:
        base = dataset_config(name, args, seed=0)
        if base.trainer.rounds < 1:
            parser.error("--rounds must be >= 1 (the competitors get rounds × steps_per_round steps)")
        start = time.perf_counter()
        train, val = experiment.load_data(base.data)
        log(f"[{name}] data {train[0].shape} / {val[0].shape} in {time.perf_counter() - start:.1f}s")
        outputs = encode_targets(train[1], "classification", len(train[1]))[0].shape[1]
        exponents = {m: COMPETITORS[m][1] or DATASETS[name]["adaptive_range"] for m in methods}
        grids = {m: lr_grid(exponents[m], args.grid_points) for m in methods}
        if args.warmup:
            log(f"[{name}] CRONOS-AM warm-up (rounds=1): {warm_up(base, train, val):.1f}s")
        runs = {"cronos_am": []}
        for seed in range(args.seeds):
            run = run_cronos_am(dataset_config(name, args, seed), train, val)
            run["seed"] = seed
            runs["cronos_am"].append(run)
            h = run["history"][-1]
            log(f"[{name}] cronos_am seed {seed}: peak {peak(run):.3f}, {h['seconds']:.2f}s "
                f"({h['seconds_raw']:.2f}s raw, {h['compile_seconds']:.2f}s compile subtracted)")
        for method in methods:
            runs[method] = {}
            for lr in grids[method]:
                runs[method][lr] = []
                for seed in range(args.seeds):
                    run = run_competitor(method, lr, base, train, val, outputs, seed)
                    run.update(seed=seed, learning_rate=lr)
                    runs[method][lr].append(run)
                    log(f"[{name}] {method} lr {lr:.3g} seed {seed}: peak {peak(run):.3f}, "
                        f"{final_seconds(run):.2f}s")
        summary = summarise(runs, args.match_tolerance)
        figure = args.out.with_name(f"{figure_prefix}_{name}.png")
        plot(name, runs, figure)
        results["datasets"][name] = {
            "recipe": DATASETS[name]["recipe"], "config": base.to_dict(),
            "train_rows": len(train[1]), "val_rows": len(val[1]), "outputs": outputs,
            "backbone_steps": base.trainer.rounds * base.trainer.steps_per_round,
            "lr_grids": grids, "lr_exponent_ranges": exponents, "figure": str(figure.relative_to(ROOT))
            if figure.is_relative_to(ROOT) else str(figure), "summary": summary,
            "runs": {"cronos_am": runs["cronos_am"],
                     **{m: [r for seeds in v.values() for r in seeds]
                        for m, v in runs.items() if m != "cronos_am"}}}
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"[{name}] done; wrote {args.out} and {figure}")
    print(table({n: results["datasets"][n] for n in names}))


if __name__ == "__main__":
    main()
