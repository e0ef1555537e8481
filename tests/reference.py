"""Independent references: CVXPY (Clarabel) formulation of the convex programs of DESIGN.md,
and cone projections by SciPy's non-negative least squares (Lawson–Hanson in Fortran)."""

import cvxpy as cp
import numpy as np
from scipy.optimize import nnls


def reference_projection(a, z):
    """Π(z) onto {v : a v ≥ 0} through the NNLS dual min_{μ≥0} ‖z + aᵀμ‖."""
    mu, _ = nnls(-a.T, z, maxiter=10_000)
    return z + a.T @ mu


def cvxpy_solve(x, targets, gates, beta, activation):
    """Solves the program with the same gates; returns (objective, v [P, d, C], w or None).

    Args:
        x: [n, d] features (intercept column included if any).
        targets: [n, C] encoded targets (±1, one-hot or real).
        gates: [d, P].
    """
    x = np.asarray(x, np.float64)
    targets = np.asarray(targets, np.float64)
    masks = (x @ np.asarray(gates, np.float64) >= 0).astype(np.float64)
    dim, patterns, outputs = x.shape[1], masks.shape[1], targets.shape[1]
    v = [cp.Variable((dim, outputs)) for _ in range(patterns)]
    w = [cp.Variable((dim, outputs)) for _ in range(patterns)] if activation == "relu" else None
    prediction = 0
    constraints = []
    for i in range(patterns):
        weights = v[i] - w[i] if w is not None else v[i]
        prediction = prediction + cp.multiply(masks[:, i:i + 1], x @ weights)
        if w is not None:
            sign = (2 * masks[:, i:i + 1] - 1)
            constraints += [cp.multiply(sign, x @ v[i]) >= 0, cp.multiply(sign, x @ w[i]) >= 0]
    groups = v + (w or [])
    penalty = sum(cp.sum(cp.norm(g, 2, axis=0)) for g in groups)
    objective = 0.5 * cp.sum_squares(prediction - targets) + beta * penalty
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)
    v_value = np.stack([g.value for g in v])
    w_value = np.stack([g.value for g in w]) if w is not None else None
    return problem.value, v_value, w_value
