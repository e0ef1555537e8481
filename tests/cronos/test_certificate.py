"""The duality gap against one built from exact projections (SciPy's NNLS)."""

import jax
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.cronos import admm, certificate
from flax_cronos.data.synthetic import teacher_classes
from tests.reference import reference_projection


def reference_gap(problem, v):
    """(P(v) − D(sθ₀)) / P(v) with θ₀ = Y − Fv and s_c = min(1, β / max_g ‖Π_{K_g}(A_gᵀθ₀)‖),
    every projection by NNLS (module docstring of certificate.py)."""
    x, targets, masks = (np.asarray(a) for a in (problem.x, problem.targets, problem.masks))
    signs = 2.0 * masks - 1.0
    v = np.asarray(v)
    halves, _, patterns, classes = v.shape
    masked = [masks[:, [p]] * x for p in range(patterns)]                  # D_p X
    fitted = sum((1 - 2 * h) * masked[p] @ v[h, :, p, :]
                 for h in range(halves) for p in range(patterns))
    theta = targets - fitted
    beta = float(problem.beta)
    primal = 0.5 * np.sum(theta**2) + beta * np.sum(np.linalg.norm(v, axis=1))
    dual = 0.0
    for c in range(classes):
        worst = 0.0
        for h in range(halves):
            for p in range(patterns):
                correlation = (1 - 2 * h) * masked[p].T @ theta[:, c]
                worst = max(worst, np.linalg.norm(
                    reference_projection(signs[:, [p]] * x, correlation)))
        scale = min(1.0, beta / worst)
        dual += scale * theta[:, c] @ targets[:, c] - 0.5 * scale**2 * theta[:, c] @ theta[:, c]
    return (primal - dual) / primal


@pytest.mark.parametrize("iterations", [3, 40])
def test_duality_gap_equals_the_gap_from_exact_projections(iterations):
    """The gap's projections stop early for groups known to be below β (they cannot change
    the dual scaling): the gap is still the one of exact projections."""
    x, y = teacher_classes(80, 5, 3, width=4, noise=0.1, seed=3)
    config = cronos.CronosConfig(patterns=6, beta=0.3, intercept=True, dtype="float64",
                                 max_iters=iterations, tol=1e-9)
    problem, precond, _ = admm.prepare(x.astype(np.float64), y, config, key=jax.random.key(0))
    state = admm.iterate(problem, precond, admm.init_state(problem, config), config)
    gap, _ = certificate.duality_gap(problem, state.v, state.active, 200)
    assert float(gap) == pytest.approx(reference_gap(problem, state.v), rel=1e-8, abs=1e-12)
    assert 1e-6 < float(gap) < 1


def test_a_far_gap_is_checked_half_as_often():
    """ADMM checks the gap GAP_EVERY iterations after the last check, or twice the last
    interval after one above FAR_GAP · tol."""
    x, y = teacher_classes(80, 5, 2, width=4, noise=0.1, seed=3)
    config = cronos.CronosConfig(patterns=6, beta=0.3, dtype="float64", max_iters=3)
    problem, precond, _ = admm.prepare(x.astype(np.float64), y, config, key=jax.random.key(0))
    state = admm.with_gap(problem, admm.iterate(problem, precond,
                                                admm.init_state(problem, config), config))
    gap = float(state.gap)
    far = admm.with_gap(problem, state, tol=gap / (2 * admm.FAR_GAP))
    near = admm.with_gap(problem, far, tol=gap)
    assert int(state.gap_at) == int(state.iteration) == 3
    assert int(far.gap_every) == 2 * int(state.gap_every) == 2 * admm.GAP_EVERY
    assert int(near.gap_every) == admm.GAP_EVERY
