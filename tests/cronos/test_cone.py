"""Cone projections against SciPy's non-negative least squares (Lawson–Hanson in Fortran)."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import nnls

from flax_cronos.cronos import cone


def reference_projection(a, z):
    """Π(z) onto {v : a v ≥ 0} through the NNLS dual min_{μ≥0} ‖z + aᵀμ‖."""
    mu, _ = nnls(-a.T, z, maxiter=10_000)
    return z + a.T @ mu


def test_projection_matches_nnls_cold_and_warm():
    rng = np.random.default_rng(0)
    n, d, patterns = 300, 8, 3
    x = rng.normal(size=(n, d))
    gates = rng.normal(size=(d, patterns))
    signs = np.where(x @ gates >= 0, 1.0, -1.0)
    group_pattern = np.array([0, 1, 2, 0, 1, 2])
    project = jax.jit(cone.project, static_argnames="max_iters")
    z = rng.normal(size=(6, d))
    z[0] = 2 * gates[:, 0]                 # a gate lies in its own cone: its projection is itself
    result = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(group_pattern), jnp.asarray(z),
                     cone.empty_active_set(6, d, jnp.float64), 1e-10, 100)
    assert bool(jnp.all(result.complete))
    for g in range(6):
        a = signs[:, [group_pattern[g]]] * x
        np.testing.assert_allclose(result.point[g], reference_projection(a, z[g]), atol=1e-9)
    np.testing.assert_allclose(result.point[0], z[0], atol=1e-12)

    moved = z + 0.05 * rng.normal(size=z.shape)
    warm = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(group_pattern), jnp.asarray(moved),
                   result.active, 1e-10, 100)
    assert int(warm.iterations) < int(result.iterations)
    for g in range(6):
        a = signs[:, [group_pattern[g]]] * x
        np.testing.assert_allclose(warm.point[g], reference_projection(a, moved[g]), atol=1e-9)
