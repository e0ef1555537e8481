"""Randomized Nyström approximation of a PSD operator and the Nyström preconditioner.

For a PSD operator H of size N, a rank-r sketch gives H ≈ U diag(Λ) Uᵀ (Tropp et al. 2017,
"Fixed-rank approximation of a positive-semidefinite matrix from streaming data"):

    Ω = qr(randn(N, r)),  Y = H Ω,  ν = √N · eps(dtype) · ‖Y‖_F,  Y_ν = Y + ν Ω,
    B = Y_ν (Ωᵀ Y_ν)^{-1/2},  B = U Σ Vᵀ (thin SVD),  Λ = max(Σ² − ν, 0).

(Ωᵀ Y_ν)^{-1/2} is taken through a Cholesky factor; when that fails (Ωᵀ Y_ν numerically
singular, as for rank-deficient data in float32) an eigendecomposition with the tiny
eigenvalues dropped is used instead, so the result is always finite.

For the system (μI + αH) x = b the preconditioner (Frangella, Tropp, Udell 2023) is

    P⁻¹ = (αλ_r + μ) U (αΛ + μI)⁻¹ Uᵀ + (I − U Uᵀ),

with λ_r the smallest retained eigenvalue. α is an argument so that one sketch serves every α
(CRONOS changes α = c/ρ whenever it adapts ρ).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class NystromApprox(NamedTuple):
    """H ≈ eigvecs diag(eigvals) eigvecsᵀ.

    Attributes:
        eigvecs: [N, r] orthonormal columns.
        eigvals: [r] non-negative, descending.
    """

    eigvecs: jax.Array
    eigvals: jax.Array


def nystrom(matmat: Callable[[jax.Array], jax.Array], size: int, rank: int, key: jax.Array,
            dtype) -> NystromApprox:
    """Sketches a PSD operator from ``rank`` products with it.

    Args:
        matmat: Ω [N, r] ↦ H Ω [N, r].
        size: N.
        rank: r (clipped to N).
        key: PRNG key for the test matrix.
        dtype: working precision; sets the stability shift.
    """
    rank = min(rank, size)
    omega, _ = jnp.linalg.qr(jax.random.normal(key, (size, rank), dtype))
    sketch = matmat(omega)
    shift = jnp.sqrt(size) * jnp.finfo(dtype).eps * jnp.linalg.norm(sketch)
    shifted = sketch + shift * omega
    core = omega.T @ shifted
    core = 0.5 * (core + core.T)

    factor = jnp.linalg.cholesky(core)
    by_cholesky = jax.scipy.linalg.solve_triangular(factor, shifted.T, lower=True).T
    eigvals, eigvecs = jnp.linalg.eigh(core)
    keep = eigvals > jnp.finfo(dtype).eps * jnp.max(jnp.abs(eigvals)) * rank
    inv_sqrt = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, eigvals, 1.0)), 0.0)
    by_eigh = shifted @ (eigvecs * inv_sqrt)
    b = jnp.where(jnp.all(jnp.isfinite(by_cholesky)), by_cholesky, by_eigh)

    u, sigma, _ = jnp.linalg.svd(b, full_matrices=False)
    return NystromApprox(eigvecs=u, eigvals=jnp.maximum(sigma**2 - shift, 0.0))


def apply_inverse_preconditioner(approx: NystromApprox, x: jax.Array, alpha, mu=1.0) -> jax.Array:
    """P⁻¹ x for the system (μI + αH) x = b; ``x`` is [N, k] (k right-hand sides)."""
    u, lam = approx.eigvecs, alpha * approx.eigvals
    coeffs = u.T @ x
    scaled = ((lam[-1] + mu) / (lam + mu))[:, None] * coeffs
    return x + u @ (scaled - coeffs)
