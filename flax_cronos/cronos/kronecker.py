"""A Kronecker preconditioner for the pattern Gram operator H of the u-step.

H acts on z: [d, P] as (H z)_i = Σ_j Xᵀ D_i D_j X z_j, so its (i, j) block is Xᵀ D_i D_j X.
If which rows a pattern keeps were unrelated to where the rows point, each block would be a
multiple of one Gram matrix, H_ij ≈ a_ij S with S = XᵀX, and H ≈ A ⊗ S. The weights match
every block's trace, tr(Xᵀ D_i D_j X) = a_ij tr(XᵀX):

    a_ij = Σ_r m_ri m_rj ‖x_r‖² / Σ_r ‖x_r‖².

A = Mᵀ diag(‖x_r‖²) M / tr(S) is positive semidefinite, and so is S. With S = Q_S diag(s) Q_Sᵀ
and A = Q_A diag(a) Q_Aᵀ, the approximation of the system matrix (I + αH) inverts in closed form:

    (I + α A ⊗ S)⁻¹ z = Q_S [(Q_Sᵀ z Q_A) / (1 + α s_k a_l)] Q_Aᵀ,

O(d²P + dP²) per right-hand side, symmetric positive definite for every α ≥ 0 (all its
eigenvalues lie in (0, 1]), and exact when every block Xᵀ D_i D_j X is a multiple of XᵀX.

Why not only Nyström (``nystrom.py``, the paper's): with random gates, a_ij ≈ ¼ off the
diagonal and ½ on it, so H's large eigenvalues form a d-dimensional cluster (the direction
where all patterns agree) at about (P + 1)/4 times XᵀX's spectrum. A rank-r sketch with r ≪ d
captures r of those d directions; this preconditioner captures all of them, from two Gram
matrices: XᵀX, which ``problem.normalise`` computed already, and one pass over the rows for
A. Measured in docs/benchmarks.md.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from flax_cronos.cronos.rows import reduce_rows


class KroneckerApprox(NamedTuple):
    """H ≈ A ⊗ S through the eigendecompositions of S [d, d] and A [P, P].

    Attributes:
        gram_eigvecs: [d, d] Q_S.
        gram_eigvals: [d] s ≥ 0.
        pattern_eigvecs: [P, P] Q_A.
        pattern_eigvals: [P] a ≥ 0.
    """

    gram_eigvecs: jax.Array
    gram_eigvals: jax.Array
    pattern_eigvecs: jax.Array
    pattern_eigvals: jax.Array


def kronecker(problem) -> KroneckerApprox:
    """The factors S = XᵀX and A of a normalised ``problem.Problem`` (``problem.normalise``
    keeps S), A summed over its row blocks."""

    def weighted_pattern_gram(rows):
        weighted = rows.masks * rows.row_norms()[:, None] ** 2
        return weighted.T @ rows.masks

    gram = problem.gram
    pattern_gram = reduce_rows(problem, weighted_pattern_gram)
    pattern_gram = pattern_gram / jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)
    gram_eigvals, gram_eigvecs = jnp.linalg.eigh(gram)
    pattern_eigvals, pattern_eigvecs = jnp.linalg.eigh(pattern_gram)
    return KroneckerApprox(gram_eigvecs, jnp.maximum(gram_eigvals, 0.0),
                           pattern_eigvecs, jnp.maximum(pattern_eigvals, 0.0))


def apply_inverse_preconditioner(approx: KroneckerApprox, r: jax.Array, alpha) -> jax.Array:
    """(I + α A ⊗ S)⁻¹ r for r: [d, P, k] (k right-hand sides)."""
    q_s, q_a = approx.gram_eigvecs, approx.pattern_eigvecs
    rotated = jnp.einsum("dk,dpc,pl->klc", q_s, r, q_a)
    scaled = rotated / (1.0 + alpha * approx.gram_eigvals[:, None, None]
                        * approx.pattern_eigvals[None, :, None])
    return jnp.einsum("dk,klc,pl->dpc", q_s, scaled, q_a)
