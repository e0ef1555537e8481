"""PCG against dense solves: per-column convergence, warm starts and breakdown."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_cronos.cronos.pcg import PCGStatus, pcg


def spd(rng, size, condition):
    q, _ = np.linalg.qr(rng.normal(size=(size, size)))
    return (q * np.geomspace(1, condition, size)) @ q.T


def test_solves_several_right_hand_sides_independently():
    rng = np.random.default_rng(0)
    a = spd(rng, 30, 1e3)
    b = rng.normal(size=(30, 4)) * np.array([1.0, 1e-3, 1e3, 0.0])
    result = pcg(lambda x: jnp.asarray(a) @ x, jnp.asarray(b), jnp.zeros((30, 4)), lambda r: r,
                 tol=1e-10 * np.maximum(np.linalg.norm(b, axis=0), 1e-30), max_iters=200)
    np.testing.assert_allclose(result.x, np.linalg.solve(a, b), rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(result.status, PCGStatus.CONVERGED)
    np.testing.assert_allclose(result.residual_norm, np.linalg.norm(b - a @ np.asarray(result.x), axis=0),
                               atol=1e-9)


def test_exact_preconditioner_converges_in_one_iteration_and_warm_start_in_none():
    rng = np.random.default_rng(1)
    a = spd(rng, 25, 1e4)
    inverse = np.linalg.inv(a)
    b = rng.normal(size=(25, 2))
    result = pcg(lambda x: jnp.asarray(a) @ x, jnp.asarray(b), jnp.zeros((25, 2)),
                 lambda r: jnp.asarray(inverse) @ r, tol=1e-8, max_iters=50)
    assert int(result.iterations) == 1
    warm = pcg(lambda x: jnp.asarray(a) @ x, jnp.asarray(b), result.x, lambda r: r, tol=1e-8,
               max_iters=50)
    assert int(warm.iterations) == 0


def test_the_preconditioner_is_applied_once_per_iteration_and_never_to_a_converged_start():
    rng = np.random.default_rng(4)
    a = jnp.asarray(spd(rng, 30, 1e3))
    b = jnp.asarray(rng.normal(size=(30, 1)))
    applied = []

    def counted_identity(r):
        jax.debug.callback(lambda: applied.append(1))
        return r

    result = pcg(lambda x: a @ x, b, jnp.zeros((30, 1)), counted_identity, tol=1e-8, max_iters=200)
    jax.effects_barrier()
    assert int(result.iterations) > 5 and len(applied) == int(result.iterations)
    applied.clear()
    warm = pcg(lambda x: a @ x, b, result.x, counted_identity, tol=1e-6, max_iters=200)
    jax.effects_barrier()
    assert int(warm.iterations) == 0 and applied == []


def test_iteration_cap_and_breakdown_are_reported():
    rng = np.random.default_rng(2)
    a = spd(rng, 40, 1e6)
    b = jnp.asarray(rng.normal(size=(40, 1)))
    capped = pcg(lambda x: jnp.asarray(a) @ x, b, jnp.zeros((40, 1)), lambda r: r, tol=1e-12, max_iters=3)
    assert int(capped.iterations) == 3 and capped.status[0] == PCGStatus.MAX_ITERATIONS
    indefinite = np.diag(np.concatenate([np.ones(20), -np.ones(20)]))
    broken = pcg(lambda x: jnp.asarray(indefinite) @ x, jnp.ones((40, 1)), jnp.zeros((40, 1)),
                 lambda r: r, tol=1e-12, max_iters=10)
    assert broken.status[0] == PCGStatus.BREAKDOWN
    assert np.all(np.isfinite(broken.x))


def test_a_carried_residual_starts_the_next_system_without_a_product():
    """The returned residual is b − A x, so a warm start for b' begins at r + (b' − b): the
    next solve then traces A once (its loop body) instead of twice, and still solves A x = b'."""
    rng = np.random.default_rng(3)
    a = spd(rng, 30, 1e3)
    b, b_next = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    first = pcg(lambda x: jnp.asarray(a) @ x, jnp.asarray(b), jnp.zeros((30, 2)), lambda r: r,
                tol=1e-10, max_iters=200)
    np.testing.assert_allclose(first.residual, b - a @ np.asarray(first.x), atol=1e-9)
    traced = []

    def counted_matvec(x):
        traced.append(x.shape)
        return jnp.asarray(a) @ x

    second = pcg(counted_matvec, jnp.asarray(b_next), first.x, lambda r: r, tol=1e-10,
                 max_iters=200, start_residual=first.residual + (b_next - b))
    assert len(traced) == 1
    np.testing.assert_allclose(second.x, np.linalg.solve(a, b_next), rtol=1e-6, atol=1e-12)
