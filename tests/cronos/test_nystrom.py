"""The Nyström sketch against exact eigendecompositions, and its float32 robustness."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_cronos.cronos.nystrom import apply_inverse_preconditioner, nystrom


def test_recovers_a_low_rank_psd_matrix_exactly():
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(60, 5))
    matrix = factor @ factor.T
    approx = nystrom(lambda omega: jnp.asarray(matrix) @ omega, 60, 8, jax.random.key(0), jnp.float64)
    rebuilt = approx.eigvecs @ jnp.diag(approx.eigvals) @ approx.eigvecs.T
    np.testing.assert_allclose(rebuilt, matrix, atol=1e-8 * np.abs(matrix).max())
    np.testing.assert_allclose(np.sort(approx.eigvals)[::-1][:5],
                               np.sort(np.linalg.eigvalsh(matrix))[::-1][:5], rtol=1e-8)


def test_preconditioner_matches_its_formula_and_whitens_the_top_spectrum():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    spectrum = np.concatenate([[1e4, 3e3, 1e3], np.full(37, 0.5)])
    matrix = (q * spectrum) @ q.T
    approx = nystrom(lambda omega: jnp.asarray(matrix) @ omega, 40, 4, jax.random.key(2), jnp.float64)
    u, lam = np.asarray(approx.eigvecs), np.asarray(approx.eigvals)
    alpha, mu = 0.1, 1.0
    expected = (alpha * lam[-1] + mu) * u @ np.diag(1 / (alpha * lam + mu)) @ u.T + np.eye(40) - u @ u.T
    applied = apply_inverse_preconditioner(approx, jnp.eye(40), alpha, mu)
    np.testing.assert_allclose(applied, expected, atol=1e-10)
    system = mu * np.eye(40) + alpha * matrix
    before = np.linalg.cond(system)
    after = np.linalg.cond(np.asarray(applied) @ system)
    assert before > 500 and after < 2


def test_float32_on_rank_deficient_operator_is_finite():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 6)).astype(np.float32)
    x = np.concatenate([x, x[:, :2], np.ones((100, 2), np.float32)], axis=1)   # duplicated, constant
    gram = jnp.asarray(x.T @ x)
    approx = nystrom(lambda omega: gram @ omega, 10, 10, jax.random.key(0), jnp.float32)
    assert np.all(np.isfinite(approx.eigvals)) and np.all(np.isfinite(approx.eigvecs))
    assert np.all(np.asarray(approx.eigvals) >= 0)
    np.testing.assert_allclose(np.max(approx.eigvals), np.linalg.eigvalsh(x.T @ x).max(), rtol=1e-3)
