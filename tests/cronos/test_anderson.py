"""Anderson acceleration (``cronos/anderson.py``): on an affine map it solves the fixed-point
equation as a Krylov method would, its memory starts afresh when the map changes or the
residual jumps, and in a solve it reaches CVXPY's optimum in a fraction of plain ADMM's
iterations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.cronos import anderson
from flax_cronos.cronos import problem as pb
from tests.cronos.test_admm import rho_grows_early_instance
from tests.reference import cvxpy_solve

SIZE = 8


def affine_contraction(seed=0):
    """T(z) = M z + c with M symmetric, eigenvalues in [0, 0.98]: plain iteration shrinks the
    error by at most 0.98 per step. Returns (T, its fixed point (I − M)⁻¹ c)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(SIZE, SIZE)))
    matrix = basis @ np.diag(np.linspace(0.0, 0.98, SIZE)) @ basis.T
    offset = rng.normal(size=SIZE)
    return (lambda z: jnp.asarray(matrix) @ z + jnp.asarray(offset),
            np.linalg.solve(np.eye(SIZE) - matrix, offset))


def iterate(step, depth, steps, rho=jnp.asarray(1.0)):
    """``steps`` accelerated steps from z = 0 with memory ``depth``; returns the last point
    and the memory."""
    memory = anderson.empty_memory(SIZE, depth, jnp.float64)
    z = jnp.zeros(SIZE)
    for k in range(steps):
        z, memory = anderson.accelerate(memory, z, step(z), rho, fresh=jnp.asarray(k == 0))
    return z, memory


def test_on_an_affine_map_it_converges_like_gmres():
    """With a memory as deep as the dimension, type-II Anderson acceleration of an affine map
    is GMRES on (I − M) z = c (Walker & Ni 2011): exact after at most SIZE + 1 steps, up to the
    regularisation. Plain iteration is still ≥ 0.98^10 ≈ 0.8 of its start away then."""
    step, fixed_point = affine_contraction()
    error = np.linalg.norm(iterate(step, SIZE, SIZE + 2)[0] - fixed_point)
    plain = jnp.zeros(SIZE)
    for _ in range(SIZE + 2):
        plain = step(plain)
    assert error < 1e-5 * np.linalg.norm(fixed_point)
    assert np.linalg.norm(plain - fixed_point) > 0.5 * np.linalg.norm(fixed_point)


def test_the_memory_starts_afresh_when_the_map_changes_or_the_residual_jumps():
    """The step after a restart is the plain image T(z): at a fresh start, after ρ changed,
    and after the residual grew more than GROWTH-fold; otherwise the point is extrapolated."""
    step, _ = affine_contraction()
    rho = jnp.asarray(1.0)
    z, memory = iterate(step, 4, 3, rho)

    def next_point(z, image, rho=rho, fresh=False):
        return anderson.accelerate(memory, z, image, rho, jnp.asarray(fresh))[0]

    image = step(z)
    assert not np.allclose(next_point(z, image), image)
    np.testing.assert_array_equal(next_point(z, image, fresh=True), image)
    np.testing.assert_array_equal(next_point(z, image, rho=jnp.asarray(2.0)), image)
    jumped = z + 1.01 * anderson.GROWTH * memory.g               # ‖g‖ grew GROWTH·1.01-fold
    np.testing.assert_array_equal(next_point(z, jumped), jumped)


def test_an_accelerated_relu_solve_reaches_the_cvxpy_optimum_in_fewer_iterations():
    """The relu instance whose plain ADMM converges slowly (550 iterations to tol 1e-6 in our
    run) reaches CVXPY's optimum with the default acceleration in at most half as many."""
    x, y, gates, beta, config = rho_grows_early_instance()
    config = dataclasses.replace(config, tol=1e-6)
    plain = cronos.solve(x, y, config, key=jax.random.key(0), gates=gates)
    default = cronos.CronosConfig().anderson
    accelerated = cronos.solve(x, y, dataclasses.replace(config, anderson=default),
                               key=jax.random.key(0), gates=gates)
    targets, _ = pb.encode_targets(y, "classification", len(y))
    expected = cvxpy_solve(x, targets, gates, beta, "relu")[0]
    for solution in (plain, accelerated):
        assert solution.status == cronos.SolveStatus.CONVERGED
        assert solution.stats.objective == pytest.approx(expected, rel=1e-5)
    assert accelerated.stats.iterations <= plain.stats.iterations // 2
