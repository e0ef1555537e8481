"""The Kronecker preconditioner against dense linear algebra and a case where it is exact."""

import jax.numpy as jnp
import numpy as np

from flax_cronos.cronos import admm, kronecker, problem as pb
from flax_cronos.cronos.pcg import pcg

DIM, PATTERNS = 4, 3


def problem_of(x: np.ndarray, masks: np.ndarray) -> pb.Problem:
    """The normalised program of x (whose XᵀX the preconditioner reuses)."""
    one = jnp.ones((), jnp.float64)
    return pb.normalise(pb.Problem(jnp.asarray(x), jnp.asarray(masks, jnp.float64),
                                   jnp.zeros((len(x), 1)), one, one))


def dense_pattern_gram(problem: pb.Problem) -> np.ndarray:
    """H as a [d·P, d·P] matrix in the row-major layout of z: [d, P]."""
    size = DIM * PATTERNS
    columns = admm.pattern_gram(problem, jnp.eye(size).reshape(DIM, PATTERNS, size))
    return np.asarray(columns).reshape(size, size)


def test_applies_the_inverse_of_identity_plus_alpha_a_kron_s():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, DIM)) * [3.0, 1.0, 0.1, 0.01]
    masks = rng.integers(0, 2, (50, PATTERNS))
    problem = problem_of(x, masks)
    approx = kronecker.kronecker(problem)
    x = np.asarray(problem.x)                                  # normalised
    blocks = dense_pattern_gram(problem).reshape(DIM, PATTERNS, DIM, PATTERNS)
    a = np.einsum("kikj->ij", blocks) / np.trace(x.T @ x)     # tr(H_ij) = a_ij tr(XᵀX)
    dense = np.eye(DIM * PATTERNS) + 0.7 * np.kron(x.T @ x, a)
    r = rng.normal(size=(DIM, PATTERNS, 2))
    expected = np.linalg.solve(dense, r.reshape(-1, 2)).reshape(r.shape)
    np.testing.assert_allclose(kronecker.apply_inverse_preconditioner(approx, jnp.asarray(r), 0.7),
                               expected, rtol=1e-10, atol=1e-12)


def test_is_exact_when_every_block_is_a_multiple_of_the_gram_matrix():
    """Four copies of the same rows, each pattern keeping whole copies: Xᵀ D_i D_j X is then
    (copies both keep) · X₀ᵀX₀, so H = A ⊗ S exactly and PCG needs a single iteration."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(30, DIM))
    x = np.concatenate([base] * 4)
    keeps = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]])       # copy × pattern
    problem = problem_of(x, np.repeat(keeps, 30, axis=0))
    approx = kronecker.kronecker(problem)
    s = np.asarray(problem.x).T @ np.asarray(problem.x)       # normalised
    a = np.linalg.multi_dot([approx.pattern_eigvecs, np.diag(approx.pattern_eigvals),
                             approx.pattern_eigvecs.T])
    np.testing.assert_allclose(dense_pattern_gram(problem), np.kron(s, a), rtol=1e-10, atol=1e-10)

    alpha = 5.0
    b = jnp.asarray(rng.normal(size=(DIM, PATTERNS, 1)))
    result = pcg(lambda z: z + alpha * admm.pattern_gram(problem, z), b, jnp.zeros_like(b),
                 lambda r: kronecker.apply_inverse_preconditioner(approx, r, alpha),
                 1e-10 * jnp.linalg.norm(b), 50)
    assert int(result.iterations) == 1
