"""A warm-started regularisation path over β, with β chosen on validation data.

β̄ (``beta_max``, see ``certificate.py``) is the smallest β whose optimum is zero.

``solve_path`` solves β_1 = β̄ > β_2 > … > β_K = β̄·ratio (a log grid). Each point starts from
the previous one's ADMM state (iterates, scaled dual, active sets of the cone projections);
the first, zero, is certified without an iteration (the optimum at β̄), the others check their
gap ``admm.GAP_FIRST`` iterations in and then as often while it is near. The patterns and the
preconditioner, which do not depend on β, are built once. β is chosen by the validation metric
(accuracy, or mean squared error for regression; ties go to the larger β). Without validation
data, a seeded random ``holdout`` fraction of the training rows is held out for the choice,
and the chosen β is then solved again on all the training rows, warm-started from its path
point.

Screening. ADMM's tail is linear: a warm start a factor δ closer to the optimum saves only
log δ of the log(1/tol) iterations a point needs, so 16 points solved to the final tolerance
cost 5–6 cold solves. The validation metric needs far less: the points are solved to
``screen_tol`` (default ``max(config.tol, SCREEN_TOL)``), and only the chosen one is solved on
to ``config.tol``, from its own state (measurements in docs/benchmarks.md).
"""

import dataclasses
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from flax_cronos.cronos import admm, certificate, problem as pb
from flax_cronos.cronos.network import score
from flax_cronos.cronos.precision import full_precision

SCREEN_TOL = 1e-2   # default tolerance of the path points (see the module docstring)


class PathPoint(NamedTuple):
    """One β of the path: the solution and its metrics (accuracy, or MSE for regression)."""

    beta: float
    solution: admm.Solution
    train_metric: float
    val_metric: float
    active_neurons: int


class Path(NamedTuple):
    """Attributes:
    points: the path, from β̄ down, each solved to the screening tolerance.
    best_index: the point chosen by the validation metric.
    best: the chosen solution, solved to ``config.tol`` (on all training rows when a holdout
        was used).
    metric: "accuracy" or "mse".
    beta_max: β̄.
    screen_tol: the tolerance the points were solved to.
    """

    points: list
    best_index: int
    best: admm.Solution
    metric: str
    beta_max: float
    screen_tol: float


def beta_max(problem: pb.Problem, activation: str) -> float:
    """β̄ of the un-normalised program (see the module docstring)."""
    return float(certificate.beta_max(problem, activation) * problem.scale)


def default_betas(top: float, num: int = 16, ratio: float = 1e-4) -> np.ndarray:
    """A decreasing log grid from β̄ to β̄·ratio."""
    return np.geomspace(top, top * ratio, num)


def _at(problem: pb.Problem, beta: float) -> pb.Problem:
    """The normalised problem at β (β of the original program)."""
    return problem._replace(beta=jnp.asarray(beta, problem.dtype) / problem.scale)


def holdout_split(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows, kept rows): a ``fraction`` of range(n) drawn by a permutation seeded
    by ``seed`` (at least one row held out), and the rest."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout must be in (0, 1); got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(round(fraction * n)))
    return order[:cut], order[cut:]


def _restart(state: Optional[admm.AdmmState], problem: pb.Problem,
             config: admm.CronosConfig) -> admm.AdmmState:
    """The starting state of a path point: zero, certified, for the first (the optimum at β̄);
    otherwise the previous point's state carried to the new β (ρ for the new β, same dual
    θ = ρλ, counters, residuals and gap reset) with its first gap check ``admm.GAP_FIRST``
    iterations in. No check at the start: after a decrease of β it is far from certified, and
    its projections, from active sets built for the previous β, cost as much as ten
    iterations."""
    if state is None:
        return admm.certify(problem, admm.init_state(problem, config))
    rho = admm.initial_rho(problem, config)
    unknown = admm.unknown_residual(rho.dtype)
    zero = jnp.zeros_like(state.iteration)
    return state._replace(lam=state.lam * (state.rho / rho), rho=rho,
                          rho_growth=jnp.ones_like(rho), iteration=zero,
                          pcg_iterations=zero, projection_iterations=zero, scanned_groups=zero,
                          primal_residual=unknown, dual_residual=unknown, gap=unknown,
                          small_residual_run=zero,
                          gap_at=jnp.full_like(state.gap_at, -1),
                          gap_every=jnp.full_like(state.gap_every, admm.GAP_FIRST))


@full_precision
def solve_path(x, y, config: admm.CronosConfig = admm.CronosConfig(), betas=None, *,
               key: jax.Array, x_val=None, y_val=None, gates=None, holdout: float = 0.2,
               holdout_seed: int = 0, num: int = 16, ratio: float = 1e-4,
               callback: Optional[Callable[[PathPoint], None]] = None,
               mesh: Optional[Mesh] = None, screen_tol: Optional[float] = None) -> Path:
    """Solves a warm-started β path and picks β on validation data.

    Args:
        x, y: training data as for ``solve``.
        config: solver settings; ``config.beta`` is ignored.
        betas: decreasing β values; default ``default_betas(β̄, num, ratio)``.
        key: PRNG key for the gates and the sketch.
        x_val, y_val: validation data; without them a ``holdout`` fraction of the training
            rows (a permutation seeded by ``holdout_seed``) is used.
        gates: optional [d, P] gates.
        callback: called with each ``PathPoint`` when it is solved (progress bars).
        mesh: solve with the rows sharded over this one-axis device mesh (as ``admm.solve``);
            the validation metrics are computed on the default device.
        screen_tol: tolerance of the path points (default ``max(config.tol, SCREEN_TOL)``);
            ``config.tol`` makes every point a solution to ``config.tol``.

    Returns:
        A ``Path``.
    """
    config.check()
    x = pb.check_features(x)
    y = np.asarray(y)
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val, or neither")
    refit = x_val is None
    fit_x, fit_y = x, y
    if refit:
        held, kept = holdout_split(len(x), holdout, holdout_seed)
        x_val, y_val = x[held], y[held]
        fit_x, fit_y = x[kept], y[kept]
    else:
        x_val = pb.check_features(x_val, "x_val")
        if x_val.shape[1] != x.shape[1]:
            raise ValueError(f"x_val has {x_val.shape[1]} features but x has {x.shape[1]}")

    problem, precond, gates = admm.prepare(fit_x, fit_y, config, key=key, gates=gates, mesh=mesh)
    top = beta_max(problem, config.activation)
    betas = default_betas(top, num, ratio) if betas is None else np.asarray(betas, float)
    if betas.ndim != 1 or betas.size == 0 or np.any(betas < 0) or np.any(np.diff(betas) > 0):
        raise ValueError("betas must be a non-empty decreasing sequence of values >= 0")

    screen_tol = max(config.tol, SCREEN_TOL) if screen_tol is None else screen_tol
    if not 0 < screen_tol < 1:
        raise ValueError(f"screen_tol must be in (0, 1); got {screen_tol}")
    metric = "mse" if config.task == "regression" else "accuracy"
    better = np.less if metric == "mse" else np.greater
    points, state, chosen = [], None, None
    for beta in betas:
        start = time.perf_counter()
        point_config = dataclasses.replace(config, beta=float(beta), tol=screen_tol)
        point_problem = _at(problem, beta)
        state = admm.iterate(point_problem, precond, _restart(state, point_problem, point_config),
                             point_config)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - start
        solution = admm.finish(point_problem, state, gates, point_config, seconds)
        active = sum(int(np.sum(np.linalg.norm(np.asarray(g), axis=1) > 0))
                     for g in (solution.params.v, solution.params.w) if g is not None)
        points.append(PathPoint(float(beta), solution, score(solution.params, fit_x, fit_y, config.task),
                                score(solution.params, x_val, y_val, config.task), active))
        if chosen is None or better(points[-1].val_metric, points[chosen[0]].val_metric):
            chosen = (len(points) - 1, state, seconds)
        if callback is not None:
            callback(points[-1])

    best_index, best_state, seconds = chosen
    best_config = dataclasses.replace(config, beta=points[best_index].beta)
    best_problem = _at(problem, best_config.beta)
    if refit:
        best = admm.solve(x, y, best_config, key=key, gates=gates, mesh=mesh,
                          init=points[best_index].solution.params)
    elif screen_tol > config.tol:
        start = time.perf_counter()
        best_state = admm.iterate(best_problem, precond, best_state, best_config)
        jax.block_until_ready(best_state)
        best = admm.finish(best_problem, best_state, gates, best_config,
                           seconds + time.perf_counter() - start)
    else:
        best = points[best_index].solution
    return Path(points, best_index, best, metric, top, screen_tol)
