"""Runs pyscnn's cone-constrained solver (augmented Lagrangian) on one instance.

Called by ``solver.py`` with the Python of a separate virtualenv that has pyscnn and torch:
    python scnn_runner.py INSTANCE.npz RESULT.npz
INSTANCE holds x [n, d], y [n] (±1), gates [d, P], beta, max_iters and budget (seconds).
pyscnn scales its loss by 1/(n·C) and sums the neurons' l2 norms, so λ = β / (n·C) makes its
objective ours / (n·C).

pyscnn has no time limit, and a run killed at a timeout reports nothing, so the runner fits
the iteration cap to the budget: a probe of ``PROBE_ITERS`` iterations measures the seconds an
iteration takes, and the run proper gets at most as many iterations as the rest of the budget
allows. Its result then says how far pyscnn got in that time.
"""

import sys
import time

import numpy as np
from scnn.metrics import Metrics
from scnn.models import ConvexReLU
from scnn.optimize import optimize_model
from scnn.regularizers import NeuronGL1
from scnn.solvers import AL

PROBE_ITERS = 20


def run(x, y, gates, beta, iterations):
    """pyscnn's AL solver with at most ``iterations`` primal and dual iterations."""
    n, outputs = y.shape
    model = ConvexReLU(gates, c=outputs)
    solver = AL(model, max_primal_iters=iterations, max_dual_iters=iterations)
    metrics = Metrics(metric_freq=10, objective=True, model_loss=True, time=True)
    start = time.perf_counter()
    model, metrics = optimize_model(model, solver, metrics, x, y,
                                    regularizer=NeuronGL1(beta / (n * outputs)),
                                    return_convex=True, unitize_data=False, dtype="float32")
    return model, metrics, time.perf_counter() - start


def main(instance_path: str, result_path: str) -> None:
    data = np.load(instance_path)
    x, y, gates, beta = data["x"], data["y"].reshape(-1, 1), data["gates"], float(data["beta"])
    n, outputs = y.shape
    budget, iterations = float(data["budget"]), int(data["max_iters"])
    probe_seconds = run(x, y, gates, beta, PROBE_ITERS)[2]
    affordable = int((budget - probe_seconds) / probe_seconds * PROBE_ITERS)
    iterations = max(PROBE_ITERS, min(iterations, affordable))
    model, metrics, seconds = run(x, y, gates, beta, iterations)
    v, w = (np.asarray(p) for p in model.parameters)                 # [C, P, d] each
    np.savez(result_path, v=np.moveaxis(v, 0, -1), w=np.moveaxis(w, 0, -1), seconds=seconds,
             iterations=iterations, times=np.asarray(metrics.time),
             objectives=np.asarray(metrics.model_loss) * n * outputs)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
