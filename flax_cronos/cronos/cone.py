"""Exact projection onto the activation cones K_i = {v : (2D_i − I) X v ≥ 0}, many at once.

Projecting z onto the polyhedral cone {v : A v ≥ 0} (rows a_j = e_j x_j, e_j = ±1) is dual to
the non-negative least-squares problem

    μ* = argmin_{μ ≥ 0} ½‖z + Aᵀμ‖²,     Π(z) = z + Aᵀμ*,

whose optimality conditions are μ ≥ 0, AΠ(z) ≥ 0, μ_j (AΠ(z))_j = 0. It is solved by the
Lawson–Hanson active-set method: the active set W holds the constraints with μ_j > 0; each
iteration either adds the most violated constraint (the most negative (AΠ)_j / ‖x_j‖) or, when
the least-squares multipliers on W turn negative, steps back to the boundary of μ ≥ 0 and drops
the constraints that reached zero. Only |W| ≤ d rows take part in a solve, so the cost per
iteration is one product X V (to find violations) plus small batched Cholesky solves.

Consecutive ADMM iterations project nearby points, so W is kept and reused (warm start): most
projections then end after a few iterations.

The rows of X are reached only through ``rows.reduce_rows`` (the most violated constraint: a
running argmin over row blocks) and ``rows.gather_rows`` (the active constraints' rows), so the
projections also run on rows sharded over devices or streamed from host memory. Zero rows
(padding) constrain nothing and are never chosen.

All groups (half, pattern, class) are projected together; arrays carry a leading group axis G.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_cronos.cronos.problem import Problem, cone_signs
from flax_cronos.cronos.rows import gather_rows, reduce_rows


class ActiveSet(NamedTuple):
    """Per group: the active constraints in ``k`` fixed-size slots, with their Gram matrix.

    Attributes:
        rows: [G, k] int32 row indices into X (meaningless where not ``used``).
        used: [G, k] bool.
        gram: [G, k, k] A_W A_Wᵀ of the rows in the slots, updated one row at a time (valid
            where both slots are used).
    """

    rows: jax.Array
    used: jax.Array
    gram: jax.Array


def empty_active_set(groups: int, slots: int, dtype) -> ActiveSet:
    return ActiveSet(jnp.zeros((groups, slots), jnp.int32), jnp.zeros((groups, slots), bool),
                     jnp.zeros((groups, slots, slots), dtype))


def pad(active: ActiveSet, slots: int) -> ActiveSet:
    """The same active sets with ``slots`` slots (more room)."""
    extra = slots - active.used.shape[1]
    return ActiveSet(jnp.pad(active.rows, ((0, 0), (0, extra))),
                     jnp.pad(active.used, ((0, 0), (0, extra))),
                     jnp.pad(active.gram, ((0, 0), (0, extra), (0, extra))))


class Projection(NamedTuple):
    """Attributes:
    point: [G, d] the projections.
    active: the final active sets (warm start for the next call).
    iterations: Lawson–Hanson iterations run.
    complete: [G] bool, False where the iteration cap or the slot count was reached.
    """

    point: jax.Array
    active: ActiveSet
    iterations: jax.Array
    complete: jax.Array


def _constraint_rows(problem: Problem, index: jax.Array, groups_pattern: jax.Array) -> jax.Array:
    """Rows e_{j,p(g)} x_j of the constraints j = ``index`` [G, ...] of each group g: [G, ..., d]."""
    x, masks = gather_rows(problem, index)                              # [G, ..., d], [G, ..., P]
    pattern = groups_pattern.reshape(groups_pattern.shape + (1,) * index.ndim)
    return x * (2.0 * jnp.take_along_axis(masks, pattern, axis=-1) - 1.0)


def _active_rows(problem: Problem, groups_pattern: jax.Array, active: ActiveSet) -> jax.Array:
    """[G, k, d] the rows e_j x_j of the active constraints (zeros in unused slots)."""
    rows = _constraint_rows(problem, active.rows, groups_pattern)
    return jnp.where(active.used[..., None], rows, 0.0)


def _most_violated(problem: Problem, groups_pattern: jax.Array,
                   point: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per group, the constraint with the smallest slack e_j x_j·v_g / ‖x_j‖ (the first one on
    ties) and that slack: ([G] int32, [G]); v = ``point`` [G, d]."""
    tiny = jnp.finfo(point.dtype).tiny

    def block(rows):
        norms = jnp.linalg.norm(rows.x, axis=1)[:, None]
        signs = cone_signs(rows)[:, groups_pattern]                    # [b, G]
        slack = (rows.x @ point.T) * signs * (1.0 / jnp.maximum(norms, tiny))
        slack = jnp.where(norms > 0, slack, jnp.inf)
        worst = jnp.argmin(slack, axis=0)
        return ((rows.start + worst).astype(jnp.int32),
                jnp.take_along_axis(slack, worst[None], axis=0)[0])

    def earlier_on_ties(a, b):
        later = b[1] < a[1]
        return jnp.where(later, b[0], a[0]), jnp.where(later, b[1], a[1])

    return reduce_rows(problem, block, earlier_on_ties)


def _multipliers(rows: jax.Array, gram: jax.Array, used: jax.Array, z: jax.Array) -> jax.Array:
    """Least-squares multipliers on the active set: μ_W = −(A_W A_Wᵀ)⁻¹ A_W z, 0 elsewhere."""
    scale = jnp.max(jnp.where(used, jnp.diagonal(gram, axis1=1, axis2=2), 0.0), axis=1)[:, None, None]
    ridge = 10 * jnp.finfo(z.dtype).eps * jnp.maximum(scale, jnp.finfo(z.dtype).tiny)
    both_used = used[:, :, None] & used[:, None, :]
    eye = jnp.eye(used.shape[1], dtype=z.dtype)
    gram = jnp.where(both_used, gram, 0.0) + eye * jnp.where(used[:, :, None], ridge, 1.0)
    rhs = -jnp.einsum("gkd,gd->gk", rows, z)
    factor = jnp.linalg.cholesky(gram)
    mu = jax.scipy.linalg.cho_solve((factor, True), rhs[..., None])[..., 0]
    return jnp.where(used, mu, 0.0)


def project(x: jax.Array, signs: jax.Array, groups_pattern: jax.Array, z: jax.Array,
            active: ActiveSet, tol, max_iters: int) -> Projection:
    """Projects every z_g onto its cone {v : e_{j,p(g)} x_j·v ≥ 0 for all j}.

    Args:
        x: [n, d] rows x_j.
        signs: [n, P] e_{j,p} = ±1 (2M − 1).
        groups_pattern: [G] the pattern p(g) of each group.
        z: [G, d] points to project.
        active: warm-start active sets (``empty_active_set`` for a cold start).
        tol: a constraint counts as violated when e x_j·v < −tol ‖x_j‖ ‖z‖.
        max_iters: cap on Lawson–Hanson iterations (static).
    """
    rows = Problem(x=x, masks=(signs + 1.0) / 2.0, targets=None, scale=jnp.ones((), x.dtype),
                   beta=jnp.zeros((), x.dtype))
    return project_rows(rows, groups_pattern, z, active, tol, max_iters)


def project_rows(problem: Problem, groups_pattern: jax.Array, z: jax.Array, active: ActiveSet,
                 tol, max_iters: int) -> Projection:
    """``project`` onto the cones of the rows of ``problem`` (in memory, sharded or streamed)."""
    slots = active.used.shape[1]
    mu0 = jnp.zeros(active.used.shape, z.dtype)
    z_norm = jnp.linalg.norm(z, axis=1)

    def body(carry):
        i, active, mu, done, _ = carry
        rows = _active_rows(problem, groups_pattern, active)
        target = _multipliers(rows, active.gram, active.used, z)
        feasible = jnp.all((target > 0) | ~active.used, axis=1)
        # Lawson–Hanson step back: move from μ towards the LS multipliers until one reaches 0.
        blocking = active.used & (target <= 0)
        ratio = jnp.where(blocking, mu / jnp.where(blocking, mu - target, 1.0), jnp.inf)
        alpha = jnp.where(feasible, 1.0, jnp.clip(jnp.min(ratio, axis=1), 0.0, 1.0))
        new_mu = mu + alpha[:, None] * (target - mu)
        # A warm start begins at μ = 0: drop every non-positive multiplier at once.
        cold_multipliers = ~jnp.any(mu > 0, axis=1, keepdims=True)
        reached_zero = jnp.where(cold_multipliers, blocking, blocking & (ratio <= alpha[:, None]))
        drop = ~feasible[:, None] & reached_zero
        used = active.used & ~drop
        new_mu = jnp.where(used, new_mu, 0.0)

        point = z + jnp.einsum("gk,gkd->gd", new_mu, rows)
        worst, worst_slack = _most_violated(problem, groups_pattern, point)
        violated = worst_slack < -tol * z_norm
        already = jnp.any(used & (active.rows == worst[:, None]), axis=1)
        free_slot = jnp.argmin(used, axis=1)
        has_room = ~jnp.all(used, axis=1)
        add = feasible & violated & ~already & has_room & ~done
        slot_hit = (jnp.arange(slots)[None] == free_slot[:, None]) & add[:, None]
        rows_idx = jnp.where(slot_hit, worst[:, None], active.rows)
        # the new row's inner products with the slots' rows fill its row and column of the Gram
        new_row = _constraint_rows(problem, worst, groups_pattern)
        products = jnp.einsum("gkd,gd->gk", rows, new_row)
        products = jnp.where(slot_hit, jnp.sum(new_row**2, axis=1)[:, None], products)
        gram = jnp.where(slot_hit[:, :, None], products[:, None, :], active.gram)
        gram = jnp.where(slot_hit[:, None, :], products[:, :, None], gram)
        used = used | slot_hit
        finished = done | (feasible & ~add)
        keep = done[:, None]
        new_active = ActiveSet(jnp.where(keep, active.rows, rows_idx), jnp.where(keep, active.used, used),
                               jnp.where(keep[..., None], active.gram, gram))
        new_mu = jnp.where(keep, mu, new_mu)
        # a violated row that is already active is rounding; a full active set needs more slots
        out_of_room = feasible & violated & ~already & ~has_room
        return i + 1, new_active, new_mu, finished, out_of_room

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < max_iters) & ~jnp.all(done)

    groups = z.shape[0]
    init = (jnp.asarray(0), active, mu0, jnp.zeros(groups, bool), jnp.zeros(groups, bool))
    iterations, active, mu, done, out_of_room = jax.lax.while_loop(cond, body, init)
    rows = _active_rows(problem, groups_pattern, active)
    point = z + jnp.einsum("gk,gkd->gd", mu, rows)
    return Projection(point, active, iterations, done & ~out_of_room)


# ----------------------------------------------------------------------------- groups of the program


def groups(z: jax.Array) -> jax.Array:
    """[H, d, P, C] → [H·P·C, d] (one row per group)."""
    return jnp.moveaxis(z, 1, -1).reshape(-1, z.shape[1])


def ungroup(rows: jax.Array, shape) -> jax.Array:
    """Inverse of ``groups``."""
    halves, dim, patterns, outputs = shape
    return jnp.moveaxis(rows.reshape(halves, patterns, outputs, dim), -1, 1)


def group_pattern_index(shape) -> jax.Array:
    """[H·P·C] the pattern of each group in ``groups`` order."""
    halves, _, patterns, outputs = shape
    return jnp.broadcast_to(jnp.arange(patterns)[:, None], (halves, patterns, outputs)).reshape(-1)


def cold_start_iterations(slots: int) -> int:
    """Lawson–Hanson iterations for a projection far from its warm start (or from none):
    each iteration adds or drops one row, so a few passes over the ``slots`` rows."""
    return 4 * slots + 10


def projection_tolerance(dtype) -> float:
    """Violations below 0.01 √eps · ‖x_j‖ ‖z‖ count as satisfied."""
    return 0.01 * float(np.sqrt(np.finfo(dtype).eps))


def project_groups(problem: Problem, rows: jax.Array, shape, active: ActiveSet,
                   max_iters: int) -> Projection:
    """Projects the groups ``rows`` [H·P·C, d] of a [H, d, P, C] array onto their cones."""
    return project_rows(problem, group_pattern_index(shape), rows, active,
                        projection_tolerance(rows.dtype), max_iters=max_iters)
