"""``fit-head``: solve a convex head on a features file and write ``head.npz`` + ``metrics.json``.

File contracts (DESIGN.md): a features file is an ``.npz`` with ``x`` [n, d] and ``y`` [n]
(labels 0..C−1, or floats for regression). ``head.npz`` holds ``gates`` [d, P]; ``v``, ``w``
[P, d, C] (relu) or ``u`` [P, d, C] (gated_relu); and the mapped network ``W1`` [d, m], ``b1``
[m], ``W2`` [m, C] (plus ``gate_W1``, ``gate_b1`` for gated_relu) with inactive units dropped.
"""

import dataclasses
import json
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from flax_cronos import cronos


def load_features(path: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``x`` and ``y`` from an .npz features file; ``role`` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{role} file {path} does not exist")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("x", "y") if k not in data.files]
        if missing:
            raise ValueError(f"{role} file {path} has no array {missing[0]!r} (found {data.files})")
        return data["x"], data["y"]


def fit_head(train: Path, out: Path, config: cronos.CronosConfig, seed: int = 0,
             val: Optional[Path] = None, gates: Optional[Path] = None,
             auto_beta: bool = False, devices: Optional[int] = None) -> dict:
    """Solves the head, writes ``out/head.npz`` and ``out/metrics.json``; returns the metrics.

    With ``auto_beta`` a warm-started β path is solved instead (``cronos.solve_path``; the
    validation file, or a 20% holdout of the training rows, picks β), and ``out/path.json`` and
    ``out/path.png`` describe it. With ``devices`` the rows are sharded over a one-axis mesh of
    that many local devices (0: all of them) during the solves (``cronos.row_mesh``).
    """
    x, y = load_features(train, "train")
    val_data = load_features(val, "val") if val is not None else None
    if val_data is not None:
        cronos.problem.check_features(val_data[0], "val x")
        if val_data[0].shape[1] != x.shape[1]:
            raise ValueError(f"val x has {val_data[0].shape[1]} features but train x has {x.shape[1]}")
    given_gates = np.load(gates, allow_pickle=False) if gates is not None else None

    key = jax.random.key(seed)
    mesh = None if devices is None else cronos.row_mesh(devices)
    if auto_beta:
        with tqdm(total=16, desc="β path", unit="β", leave=False, disable=None) as bar:
            path = cronos.solve_path(x, y, config, key=key, gates=given_gates, num=16,
                                     x_val=None if val_data is None else val_data[0],
                                     y_val=None if val_data is None else val_data[1],
                                     callback=lambda point: bar.update(1), mesh=mesh)
        solution = path.best
        config = dataclasses.replace(config, beta=path.points[path.best_index].beta)
        write_path(out, path)
    else:
        with tqdm(total=config.max_iters, desc="CRONOS", unit="it", leave=False, disable=None) as bar:
            def report(state):
                bar.update(int(state.iteration) - bar.n)
                bar.set_postfix(primal=f"{float(state.primal_residual):.1e}",
                                dual=f"{float(state.dual_residual):.1e}")

            solution = cronos.solve(x, y, config, key=key, gates=given_gates, callback=report,
                                    mesh=mesh)

    metrics = {**solution.stats._asdict(), "status": solution.status.name}
    task = config.task
    metric = "mse" if task == "regression" else "accuracy"
    for split, data in (("train", (x, y)), ("val", val_data)):
        metrics[f"{split}_accuracy"] = None          # DESIGN's keys, present for regression too
        metrics[f"{split}_{metric}"] = (cronos.score(solution.params, *data, task)
                                        if data is not None else None)
    metrics["config"] = {**dataclasses.asdict(config), "seed": seed,
                         "beta_choice": "auto" if auto_beta else "fixed",
                         "devices": 1 if mesh is None else mesh.size}
    write_head(out, solution.params)
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def write_head(out: Path, params: cronos.ConvexParams) -> None:
    """Writes ``head.npz`` (see module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {"gates": params.gates}
    if params.activation == "relu":
        weights.update(v=params.v, w=params.w)
    else:
        weights.update(u=params.v)
    weights.update(cronos.two_layer_weights(params, drop_inactive=True))
    np.savez(out / "head.npz", **{k: np.asarray(a) for k, a in weights.items()})


def write_path(out: Path, path: cronos.Path) -> None:
    """``path.json`` (one entry per β) and ``path.png`` (validation metric and active neurons)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = [{"beta": p.beta, "objective": p.solution.stats.objective,
                f"train_{path.metric}": p.train_metric, f"val_{path.metric}": p.val_metric,
                "active_neurons": p.active_neurons, "duality_gap": p.solution.stats.duality_gap,
                "iterations": p.solution.stats.iterations,
                "seconds": p.solution.stats.seconds, "status": p.solution.status.name}
               for p in path.points]
    summary = {"beta_max": path.beta_max, "chosen_beta": path.points[path.best_index].beta,
               "metric": path.metric, "screen_tol": path.screen_tol, "points": entries}
    (out / "path.json").write_text(json.dumps(summary, indent=2) + "\n")

    betas = [p.beta for p in path.points]
    figure, metric_axis = plt.subplots(figsize=(6, 4))
    metric_axis.semilogx(betas, [p.val_metric for p in path.points], "o-", color="C0")
    metric_axis.axvline(betas[path.best_index], color="C0", linestyle=":")
    metric_axis.set_xlabel("β")
    metric_axis.set_ylabel(f"validation {path.metric}", color="C0")
    neuron_axis = metric_axis.twinx()
    neuron_axis.semilogx(betas, [p.active_neurons for p in path.points], "s--", color="C1")
    neuron_axis.set_ylabel("active neurons", color="C1")
    figure.tight_layout()
    figure.savefig(out / "path.png", dpi=120)
    plt.close(figure)


def summary_line(metrics: dict, out: Path) -> str:
    """One line: status, objective, accuracy, iterations and time."""
    scores = " ".join(f"{k}={metrics[k]:.4f}" for k in ("train_accuracy", "val_accuracy", "train_mse",
                                                          "val_mse") if metrics.get(k) is not None)
    return (f"{metrics['status'].lower()}: beta={metrics['config']['beta']:.4g} "
            f"objective={metrics['objective']:.6g} {scores} "
            f"violation={metrics['constraint_violation']:.1e} iterations={metrics['iterations']} "
            f"pcg={metrics['pcg_iterations']} {metrics['seconds']:.2f}s -> {out}")
