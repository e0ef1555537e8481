"""Preconditioned conjugate gradients for k independent systems A x_j = b_j at once.

Arrays have shape [..., k]: the last axis indexes the right-hand sides (the classes in CRONOS)
and every inner product reduces over the other axes, so each column runs its own CG with its
own step sizes. A column stops when ‖r_j‖₂ ≤ tol_j; on breakdown (pᵀAp ≤ 0 or a non-finite
value) it is frozen at its last good iterate and reported. Standard PCG (Saad, Alg. 9.1):

    r = b − A x₀
    repeat:  z = P⁻¹ r,  p = z + (rᵀz / r₋ᵀz₋) p  (p = z at first),  α = rᵀz / pᵀAp,
             x += α p,  r −= α A p

with r₋, z₋ the previous iteration's. Preconditioning at the top of the loop skips the
product P⁻¹ r of the final residual, which the textbook order computes and never uses: a
warm start that already meets its tolerance costs no product at all.

The residual r is updated by recursion, never recomputed, and returned: a caller that solves
a sequence of systems with the same A, each warm-started at the last solution, knows the next
starting residual b' − A x = r + (b' − b) without a product with A (``start_residual``).
"""

import enum
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp


class PCGStatus(enum.IntEnum):
    CONVERGED = 0
    MAX_ITERATIONS = 1
    BREAKDOWN = 2


class PCGResult(NamedTuple):
    """Attributes:
    x: [..., k] the solution.
    iterations: number of iterations run (the slowest column).
    residual: [..., k] the final residual b − A x (by PCG's recursion: exact up to rounding).
    residual_norm: [k] its norm per column.
    status: [k] a ``PCGStatus`` per column.
    """

    x: jax.Array
    iterations: jax.Array
    residual: jax.Array
    residual_norm: jax.Array
    status: jax.Array


def _columns_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(a * b, axis=tuple(range(a.ndim - 1)))


def pcg(matvec: Callable[[jax.Array], jax.Array], b: jax.Array, x0: jax.Array,
        precondition: Callable[[jax.Array], jax.Array], tol: jax.Array,
        max_iters: int, start_residual: Optional[jax.Array] = None) -> PCGResult:
    """Solves A x = b column by column for a symmetric positive definite A.

    Args:
        matvec: x [..., k] ↦ A x.
        b: [..., k] right-hand sides.
        x0: [..., k] starting point (warm start).
        precondition: r ↦ P⁻¹ r, symmetric positive definite.
        tol: scalar or [k] absolute residual tolerance.
        max_iters: iteration cap (static).
        start_residual: b − A x₀ when the caller knows it (default: computed, one product).
    """
    tol = jnp.broadcast_to(jnp.asarray(tol, b.dtype), b.shape[-1:])
    r = b - matvec(x0) if start_residual is None else start_residual
    active = jnp.sqrt(_columns_dot(r, r)) > tol
    broken = jnp.zeros_like(active)

    def cond(carry):
        i, _, _, _, _, active, _ = carry
        return (i < max_iters) & jnp.any(active)

    def body(carry):
        i, x, r, p, last_rz, active, broken = carry
        z = precondition(r)
        rz = _columns_dot(r, z)
        gamma = jnp.where(i > 0, rz / jnp.where(last_rz != 0, last_rz, 1.0), 0.0)
        p = jnp.where(active, z + gamma * p, p)      # a finished column's p stays as it was
        ap = matvec(p)
        curvature = _columns_dot(p, ap)
        ok = jnp.isfinite(curvature) & (curvature > 0) & jnp.isfinite(rz)
        broken = broken | (active & ~ok)
        active = active & ok
        alpha = jnp.where(active, rz / jnp.where(ok, curvature, 1.0), 0.0)
        x = jnp.where(active, x + alpha * p, x)
        r = jnp.where(active, r - alpha * ap, r)
        last_rz = jnp.where(active, rz, last_rz)
        active = active & (jnp.sqrt(_columns_dot(r, r)) > tol)
        return i + 1, x, r, p, last_rz, active, broken

    init = (jnp.asarray(0), x0, r, jnp.zeros_like(b), jnp.ones_like(tol), active, broken)
    iterations, x, r, _, _, active, broken = jax.lax.while_loop(cond, body, init)
    status = jnp.where(broken, PCGStatus.BREAKDOWN,
                       jnp.where(active, PCGStatus.MAX_ITERATIONS, PCGStatus.CONVERGED))
    return PCGResult(x, iterations, r, jnp.sqrt(_columns_dot(r, r)), status)
