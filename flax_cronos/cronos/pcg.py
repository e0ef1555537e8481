"""Preconditioned conjugate gradients for k independent systems A x_j = b_j at once.

Arrays have shape [..., k]: the last axis indexes the right-hand sides (the classes in CRONOS)
and every inner product reduces over the other axes, so each column runs its own CG with its
own step sizes. A column stops when ‖r_j‖₂ ≤ tol_j; on breakdown (pᵀAp ≤ 0 or a non-finite
value) it is frozen at its last good iterate and reported. Standard PCG (Saad, Alg. 9.1):

    r = b − A x₀,  z = P⁻¹ r,  p = z
    repeat:  α = rᵀz / pᵀAp,  x += α p,  r −= α A p,  z' = P⁻¹ r,  p = z' + (r'ᵀz' / rᵀz) p

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
    z = precondition(r)
    rz = _columns_dot(r, z)
    active = jnp.sqrt(_columns_dot(r, r)) > tol
    broken = jnp.zeros_like(active)

    def cond(carry):
        i, _, _, _, _, _, active, _ = carry
        return (i < max_iters) & jnp.any(active)

    def body(carry):
        i, x, r, z, p, rz, active, broken = carry
        ap = matvec(p)
        curvature = _columns_dot(p, ap)
        ok = jnp.isfinite(curvature) & (curvature > 0) & jnp.isfinite(rz)
        broken = broken | (active & ~ok)
        active = active & ok
        alpha = jnp.where(active, rz / jnp.where(ok, curvature, 1.0), 0.0)
        x_new = x + alpha * p
        r_new = r - alpha * ap
        z_new = precondition(r_new)
        rz_new = _columns_dot(r_new, z_new)
        gamma = jnp.where(active, rz_new / jnp.where(rz != 0, rz, 1.0), 0.0)
        p_new = z_new + gamma * p
        keep = lambda new, old: jnp.where(active, new, old)
        x, r, z, p, rz = keep(x_new, x), keep(r_new, r), keep(z_new, z), keep(p_new, p), keep(rz_new, rz)
        active = active & (jnp.sqrt(_columns_dot(r, r)) > tol)
        return i + 1, x, r, z, p, rz, active, broken

    init = (jnp.asarray(0), x0, r, z, z, rz, active, broken)
    iterations, x, r, _, _, _, active, broken = jax.lax.while_loop(cond, body, init)
    status = jnp.where(broken, PCGStatus.BREAKDOWN,
                       jnp.where(active, PCGStatus.MAX_ITERATIONS, PCGStatus.CONVERGED))
    return PCGResult(x, iterations, r, jnp.sqrt(_columns_dot(r, r)), status)
