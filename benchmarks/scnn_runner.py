"""Runs pyscnn's cone-constrained solver (augmented Lagrangian) on one instance.

Called by ``solver.py`` with the Python of a separate virtualenv that has pyscnn and torch:
    python scnn_runner.py INSTANCE.npz RESULT.npz
INSTANCE holds x [n, d], y [n] (±1), gates [d, P], beta, max_iters. pyscnn scales its loss by
1/(n·C) and sums the neurons' l2 norms, so λ = β / (n·C) makes its objective ours / (n·C).
"""

import sys
import time

import numpy as np
from scnn.metrics import Metrics
from scnn.models import ConvexReLU
from scnn.optimize import optimize_model
from scnn.regularizers import NeuronGL1
from scnn.solvers import AL


def main(instance_path: str, result_path: str) -> None:
    data = np.load(instance_path)
    x, y, gates = data["x"], data["y"].reshape(-1, 1), data["gates"]
    n, outputs = y.shape
    model = ConvexReLU(gates, c=outputs)
    solver = AL(model, max_primal_iters=int(data["max_iters"]), max_dual_iters=int(data["max_iters"]))
    metrics = Metrics(metric_freq=10, objective=True, model_loss=True, time=True)
    start = time.perf_counter()
    model, metrics = optimize_model(model, solver, metrics, x, y,
                                    regularizer=NeuronGL1(float(data["beta"]) / (n * outputs)),
                                    return_convex=True, unitize_data=False, dtype="float32")
    seconds = time.perf_counter() - start
    v, w = (np.asarray(p) for p in model.parameters)                 # [C, P, d] each
    np.savez(result_path, v=np.moveaxis(v, 0, -1), w=np.moveaxis(w, 0, -1), seconds=seconds,
             times=np.asarray(metrics.time), objectives=np.asarray(metrics.model_loss) * n * outputs)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
