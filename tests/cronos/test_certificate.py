"""The duality gap against one built from exact projections (SciPy's NNLS)."""

import dataclasses

import jax
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.cronos import admm, certificate, cone, path, problem as pb
from flax_cronos.data.synthetic import teacher_classes
from tests.reference import reference_projection


def largest_projection(problem, theta):
    """max_g ‖Π_{K_g}(A_gᵀθ)‖ over the relu groups g = (half, pattern) of one output's θ [n],
    every projection by NNLS."""
    x, masks = np.asarray(problem.x), np.asarray(problem.masks)
    return max(np.linalg.norm(reference_projection((2 * masks[:, [p]] - 1) * x,
                                                   (1 - 2 * h) * (masks[:, [p]] * x).T @ theta))
               for h in range(2) for p in range(masks.shape[1]))


def reference_gap(problem, v, u):
    """(P(v) − D(sθ₀)) / P(v) with θ₀ = Y − Fu and s_c = ⟨θ₀_c, Y_c⟩ / ‖θ₀_c‖² capped at
    min(1, β / max_g ‖Π_{K_g}(A_gᵀθ₀_c)‖), every projection by NNLS (module docstring of
    certificate.py)."""
    x, targets, masks = (np.asarray(a) for a in (problem.x, problem.targets, problem.masks))
    v, u = np.asarray(v), np.asarray(u)
    halves, _, patterns, classes = v.shape
    masked = [masks[:, [p]] * x for p in range(patterns)]                  # D_p X

    def fitted(weights):
        return sum((1 - 2 * h) * masked[p] @ weights[h, :, p, :]
                   for h in range(halves) for p in range(patterns))

    theta = targets - fitted(u)
    beta = float(problem.beta)
    primal = 0.5 * np.sum((targets - fitted(v))**2) + beta * np.sum(np.linalg.norm(v, axis=1))
    dual = 0.0
    for c in range(classes):
        best = theta[:, c] @ targets[:, c] / (theta[:, c] @ theta[:, c])
        scale = np.clip(best, 0.0, min(1.0, beta / largest_projection(problem, theta[:, c])))
        dual += scale * theta[:, c] @ targets[:, c] - 0.5 * scale**2 * theta[:, c] @ theta[:, c]
    return (primal - dual) / primal


def _iterated(iterations):
    """A small three-class relu problem (float64, intercept) and its ADMM state after
    ``iterations`` iterations."""
    x, y = teacher_classes(80, 5, 3, width=4, noise=0.1, seed=3)
    config = cronos.CronosConfig(patterns=6, beta=0.3, intercept=True, dtype="float64",
                                 max_iters=iterations, tol=1e-9)
    problem, precond, _ = admm.prepare(x.astype(np.float64), y, config, key=jax.random.key(0))
    return problem, admm.iterate(problem, precond, admm.init_state(problem, config), config)


@pytest.mark.parametrize("iterations", [3, 40])
def test_duality_gap_equals_the_gap_from_exact_projections(iterations):
    """The gap's projections stop early for groups known to be below β (they cannot change
    the dual scaling): the gap is still the one of exact projections."""
    problem, state = _iterated(iterations)
    gap, _ = certificate.duality_gap(problem, state.v, state.u, state.active, 200)
    assert float(gap) == pytest.approx(reference_gap(problem, state.v, state.u), rel=1e-8,
                                       abs=1e-12)
    assert 1e-6 < float(gap) < 1


def test_a_gap_from_projections_cut_short_still_bounds_the_exact_one():
    """Gap checks cap their projections (``admm.GAP_PROJECTION_ITERS``): a projection stopped
    early has a norm above the exact one, so the dual scale is smaller and the gap larger than
    the gap of exact projections, never smaller."""
    problem, state = _iterated(3)
    exact = reference_gap(problem, state.v, state.u)
    cut_short = [float(certificate.duality_gap(problem, state.v, state.u, state.active, steps)[0])
                 for steps in (1, 2, 200)]
    assert cut_short[2] == pytest.approx(exact, rel=1e-8)
    assert all(gap >= exact * (1 - 1e-12) for gap in cut_short)
    assert cut_short[0] > exact * (1 + 1e-3)          # the cap did cut the projections short
    assert all(gap <= 1 for gap in cut_short)


def test_the_dual_candidate_from_u_bounds_the_true_gap_much_closer_than_the_residual():
    """At a small β, the candidate Y − Fu (ADMM's u-iterate; certificate.py) still bounds the
    true gap (P(v) − p*) / P(v), and it is several times tighter than the residual Y − Fv."""
    x, y = teacher_classes(80, 5, 3, width=4, noise=0.1, seed=3)
    config = cronos.CronosConfig(patterns=6, intercept=True, dtype="float64", tol=1e-9)
    problem, _, _ = admm.prepare(x.astype(np.float64), y, config, key=jax.random.key(0))
    config = dataclasses.replace(config, beta=1e-3 * path.beta_max(problem, "relu"))
    problem, precond, _ = admm.prepare(x.astype(np.float64), y, config, key=jax.random.key(0))
    start = admm.init_state(problem, config)
    optimum = admm.iterate(problem, precond, start, dataclasses.replace(config, max_iters=3000))
    early = admm.iterate(problem, precond, start, dataclasses.replace(config, max_iters=300))

    def objective(v):
        return sum(float(t) for t in certificate.objective_terms(problem, v)[:2])

    optimum_gap, _ = certificate.duality_gap(problem, optimum.v, optimum.u, optimum.active, 200)
    assert float(optimum_gap) < 1e-7
    true_gap = (objective(early.v) - objective(optimum.v)) / objective(early.v)
    from_u, _ = certificate.duality_gap(problem, early.v, early.u, early.active, 200)
    from_v, _ = certificate.duality_gap(problem, early.v, early.v, early.active, 200)
    assert true_gap <= float(from_u) < float(from_v) / 3


def test_gap_checks_come_at_doubling_intervals():
    """ADMM checks the gap GAP_EVERY iterations after a cold start, GAP_FIRST after a warm
    one, then at twice the last interval after a gap above FAR_GAP · tol, otherwise at the
    same interval, capped at GAP_EVERY."""
    x, y = teacher_classes(80, 5, 2, width=4, noise=0.1, seed=3)
    config = cronos.CronosConfig(patterns=6, beta=0.3, dtype="float64", max_iters=3)
    problem, precond, _ = admm.prepare(x.astype(np.float64), y, config, key=jax.random.key(0))
    cold = admm.init_state(problem, config)
    assert int(cold.gap_every) == admm.GAP_EVERY
    state = admm.with_gap(problem, admm.iterate(problem, precond, cold, config))
    gap = float(state.gap)
    assert int(state.gap_at) == int(state.iteration) == 3
    assert int(state.gap_every) == admm.GAP_FIRST
    intervals, far = [], state
    for _ in range(5):
        far = admm.with_gap(problem, far, tol=gap / (2 * admm.FAR_GAP))
        intervals.append(int(far.gap_every))
    assert intervals == [admm.GAP_FIRST * 2**k for k in range(1, 6)]
    assert intervals[-1] > admm.GAP_EVERY
    near = admm.with_gap(problem, far, tol=gap)
    assert int(near.gap_every) == admm.GAP_EVERY
    assert int(admm.with_gap(problem, state, tol=gap).gap_every) == admm.GAP_FIRST


def test_beta_max_is_the_largest_exact_projection_of_the_target_correlations():
    """β̄ = max_g ‖Π_{K_g}(A_gᵀY)‖ with every projection by NNLS, on an instance whose
    slowest projection needs more than one of ``beta_max``'s rounds."""
    x, y = teacher_classes(400, 30, 3, width=6, noise=0.3, seed=0)
    config = cronos.CronosConfig(patterns=6, activation="relu", dtype="float64")
    problem = admm.prepare(x.astype(np.float64), y, config, key=jax.random.key(0))[0]
    correlations = pb.targets_correlation(problem, 2)
    points, slots = cone.groups(correlations), min(problem.dim, problem.num_rows)
    cold = cone.project_groups(problem, points, correlations.shape,
                               cone.empty_active_set(len(points), slots, problem.dtype),
                               cone.cold_start_iterations(slots))
    assert int(cold.iterations) > certificate.BETA_MAX_ROUND
    targets = np.asarray(problem.targets)
    exact = max(largest_projection(problem, targets[:, c]) for c in range(targets.shape[1]))
    assert float(certificate.beta_max(problem, "relu")) == pytest.approx(exact, rel=1e-10)
