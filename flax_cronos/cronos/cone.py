"""Exact projection onto the activation cones K_i = {v : (2D_i − I) X v ≥ 0}, many at once.

Projecting z onto the polyhedral cone {v : A v ≥ 0} (rows a_j = e_j x_j, e_j = ±1) is dual to
the non-negative least-squares problem

    μ* = argmin_{μ ≥ 0} ½‖z + Aᵀμ‖²,     Π(z) = z + Aᵀμ*,

whose optimality conditions are μ ≥ 0, AΠ(z) ≥ 0, μ_j (AΠ(z))_j = 0. It is solved by the
Lawson–Hanson active-set method: the active set W holds the constraints with μ_j > 0; each
iteration either adds the most violated constraint (the most negative (AΠ)_j / ‖x_j‖) or, when
the least-squares multipliers on W turn negative, steps back to the boundary of μ ≥ 0 and drops
the constraints that reached zero. Only |W| ≤ d rows take part in a solve, and the inverse H of
their Gram matrix A_W A_Wᵀ changes by one row and column per iteration, so it is updated in
O(|W|²) (bordering to add, a Schur complement to drop) instead of re-factorised in O(|W|³);
the least-squares multipliers on W are updated alongside in O(|W|) from the vectors those
updates compute, so a step only checks them (through the active rows) instead of solving for
them anew. The cost per iteration is one product X V (to find violations) plus a few batched
matrix-vector products with H and the active rows.

Consecutive ADMM iterations project nearby points, so W and H are kept and reused (warm start):
most projections then end after a few iterations, and a group's H is re-factorised only when
rounding has made its multipliers inaccurate (that group's alone: re-factorising all 320 groups
of a 10-class head at k = 256 takes 0.3 s, about a dozen steps).

Groups finish at different steps, and a step costs the same for a finished group as for a live
one (each pass covers every group's H and A_W). So once at most 1/``COMPACTION`` of the groups
are unfinished, they are gathered into a batch that size and go on alone, and so on down
(320 groups: batches of 40 and 5; 32: of 4; under 32: none).

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

COMPACTION = 8      # once at most 1/COMPACTION of the groups are unfinished, only they go on
SMALLEST_BATCH = 4  # ... in a batch of at least this many groups (fewer save too little to compile)
REFINEMENTS = 4     # refinements of the multipliers after the first, before H is re-factorised
REPAIR_BATCH = 8    # groups re-factorised (stale H) or refined (inaccurate t) at a time
GATHERED_REFINEMENTS_FROM = 64  # ... refined so only from this many groups on (else all at once)


class ActiveSet(NamedTuple):
    """Per group: the active constraints in ``k`` fixed-size slots and the inverse of their
    Gram matrix.

    Attributes:
        rows: [G, k] int32 row indices into X (meaningless where not ``used``).
        used: [G, k] bool.
        inverse: [G, k, k] H, the inverse of the regularised Gram matrix A_W A_Wᵀ on the used
            slots and the identity on the others (``_regularised_gram``), updated one row at
            a time.
    """

    rows: jax.Array
    used: jax.Array
    inverse: jax.Array


def empty_active_set(groups: int, slots: int, dtype) -> ActiveSet:
    eye = jnp.broadcast_to(jnp.eye(slots, dtype=dtype), (groups, slots, slots))
    return ActiveSet(jnp.zeros((groups, slots), jnp.int32), jnp.zeros((groups, slots), bool), eye)


def pad(active: ActiveSet, slots: int) -> ActiveSet:
    """The same active sets with ``slots`` slots (more room)."""
    extra = slots - active.used.shape[1]
    new_slots = jnp.diag(jnp.arange(slots) >= active.used.shape[1]).astype(active.inverse.dtype)
    return ActiveSet(jnp.pad(active.rows, ((0, 0), (0, extra))),
                     jnp.pad(active.used, ((0, 0), (0, extra))),
                     jnp.pad(active.inverse, ((0, 0), (0, extra), (0, extra))) + new_slots)


def any_full(active: ActiveSet) -> jax.Array:
    """Whether some group has used all its slots."""
    return jnp.any(jnp.all(active.used, axis=1))


class Projection(NamedTuple):
    """Attributes:
    point: [G, d] the projections.
    active: the final active sets (warm start for the next call).
    iterations: Lawson–Hanson iterations run.
    complete: [G] bool, False where the iteration cap or the slot count was reached.
    out_of_room: [G] bool, True where the slot count was reached (a violated constraint found
        no free slot).
    refactorisations: how many groups' H rounding made inaccurate enough to re-factorise.
    scanned: the scans of X for violated constraints, counted in groups (a step's scan of a
        batch of G groups is one [n, d] × [d, G] product and counts G).
    """

    point: jax.Array
    active: ActiveSet
    iterations: jax.Array
    complete: jax.Array
    out_of_room: jax.Array
    refactorisations: jax.Array
    scanned: jax.Array


class _Loop(NamedTuple):
    """The Lawson–Hanson loop's carry: iteration count, active sets, their rows A_W [G, k, d]
    but for the row that entered in the last step (``entering_row`` [G, d], in slot
    ``entering_slot`` [G], out of range where none entered; ``_with_entering_row`` writes it),
    the rows' squared norms [G, k] and −A_W z [G, k] (zero on the unused slots), multipliers μ
    [G, k], the least-squares multipliers on the active sets, kept up to date as rows enter
    and leave (``target`` [G, k]), and per group whether it is done or out of room;
    ``stale`` [G]: the last step found the group's H inaccurate and changed nothing for it;
    ``trusted`` [G]: the group's H was just re-factorised, so the next step takes it without
    checking; ``scanned``: see ``Projection``.
    Every field but the scalars has a leading group axis.

    A step writes the row it adds at the start of the next step, before anything reads A_W:
    XLA then updates A_W in place. Written at the end of the step that found it, after that
    step's reads of A_W, it cost two copies of A_W (8 MB each at k = d = 256 and 32 groups)
    per step."""

    iteration: jax.Array
    active: ActiveSet
    rows: jax.Array
    entering_slot: jax.Array
    entering_row: jax.Array
    squared_norms: jax.Array
    rhs: jax.Array
    mu: jax.Array
    target: jax.Array
    done: jax.Array
    out_of_room: jax.Array
    stale: jax.Array
    trusted: jax.Array
    refactorisations: jax.Array
    scanned: jax.Array


def _over_groups(per_pattern: jax.Array, groups: int, outputs: int) -> jax.Array:
    """[..., P] → [..., G]: each group's entry for its pattern, the groups laid out as
    [G / (P·C), P, C] (``groups`` order), so group g has pattern (g // C) mod P."""
    *lead, patterns = per_pattern.shape
    layout = (*lead, groups // (patterns * outputs), patterns, outputs)
    return jnp.broadcast_to(per_pattern[..., None, :, None], layout).reshape(*lead, groups)


def _per_group(per_pattern: jax.Array, groups: int, outputs: int, patterns) -> jax.Array:
    """[..., P] → [..., G]: each group's entry for its pattern, the pattern read from
    ``patterns`` [G] (a batch of gathered groups) or, where that is None, from the groups'
    layout (``_over_groups``)."""
    if patterns is None:
        return _over_groups(per_pattern, groups, outputs)
    return jnp.take(per_pattern, patterns, axis=-1)


def _constraint_rows(problem: Problem, index: jax.Array, outputs: int,
                     patterns=None) -> jax.Array:
    """Rows e_{j,p(g)} x_j of the constraints j = ``index`` [G, ...] of each group g, its
    pattern p(g) as ``_per_group`` reads it: [G, ..., d]."""
    x, masks = gather_rows(problem, index)                              # [G, ..., d], [G, ..., P]
    groups_pattern = _per_group(jnp.arange(problem.num_patterns), len(index), outputs, patterns)
    pattern = groups_pattern.reshape(groups_pattern.shape + (1,) * index.ndim)
    return x * (2.0 * jnp.take_along_axis(masks, pattern, axis=-1) - 1.0)


def _most_violated(problem: Problem, point: jax.Array, outputs: int,
                   patterns=None) -> tuple[jax.Array, jax.Array]:
    """Per group, the constraint with the smallest slack e_j x_j·v_g / ‖x_j‖ (the first one on
    ties) and that slack: ([G] int32, [G]); v = ``point`` [G, d], the groups' patterns as
    ``_per_group`` reads them."""
    tiny = jnp.finfo(point.dtype).tiny

    def block(rows):
        norms = rows.row_norms()[:, None]
        # each group's column e_{j,p(g)} / ‖x_j‖ [b, G]; for all groups a broadcast over their
        # layout, which fuses into the slacks where a product or gather would not
        weights = _per_group(cone_signs(rows) * (1.0 / jnp.maximum(norms, tiny)), len(point),
                             outputs, patterns)
        slack = jnp.where(norms > 0, (rows.x @ point.T) * weights, jnp.inf)
        worst, smallest = _first_minimum(slack)
        return (rows.start + worst).astype(jnp.int32), smallest

    def earlier_on_ties(a, b):
        later = b[1] < a[1]
        return jnp.where(later, b[0], a[0]), jnp.where(later, b[1], a[1])

    return reduce_rows(problem, block, earlier_on_ties)


def _first_minimum(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per column of ``values`` [b, G], the first row attaining the column's minimum and that
    minimum: ([G] int32, [G]).

    Found in segments of L rows (``_segment_rows``): the segments' minima [b / L, G] in one
    pass over ``values``, the first segment attaining the smallest, and the first row attaining
    it within that segment. At b = 20,000 and G = 32 that takes about half the 0.3 ms of the
    two reductions over all rows (the minimum, then the first row equal to it), for which XLA
    writes out the values and a [b, G] array of row indices."""
    rows, columns = values.shape
    length = _segment_rows(rows)
    segments = values.reshape(rows // length, length, columns)
    # the barrier keeps XLA from fusing the two minima into a second pass over all values
    segment_minima = jax.lax.optimization_barrier(jnp.min(segments, axis=1))
    smallest = jnp.min(segment_minima, axis=0)
    segment = jnp.argmax(segment_minima == smallest, axis=0)           # the first True
    within = jnp.take_along_axis(segments, segment[None, None, :], axis=0)[0]
    row = jnp.argmax(within == smallest, axis=0)
    return (segment * length + row).astype(jnp.int32), smallest


def _segment_rows(rows: int) -> int:
    """The smallest odd divisor of ``rows`` above 128, or the largest odd one where none is.
    Odd, so that the segment count keeps every factor 2 of ``rows``: on rows sharded over a
    power-of-two number of devices (``rows.place_rows`` pads them to a multiple of it) no
    segment straddles two devices, and XLA's partitioner finds the segments' minima where the
    rows are, without gathering them."""
    odd = rows // (rows & -rows)
    return next((length for length in range(129, odd, 2) if odd % length == 0), odd)


def _ridge(dtype) -> float:
    """The regularised Gram matrix is A_W A_Wᵀ with its diagonal scaled by 1 + ``_ridge``: the
    relative ridge keeps it positive definite when active rows are (nearly) dependent, as on
    rank-deficient X."""
    return 10 * float(jnp.finfo(dtype).eps)


def _regularised_gram(gram: jax.Array, used: jax.Array) -> jax.Array:
    """A_W A_Wᵀ (diagonal × (1 + ``_ridge``)) on the used slots, the identity on the others:
    [G, k, k]."""
    both_used = used[:, :, None] & used[:, None, :]
    eye = jnp.eye(used.shape[1], dtype=gram.dtype)
    regularised = gram * (1.0 + _ridge(gram.dtype) * eye)
    return jnp.where(both_used, regularised, 0.0) + eye * ~used[:, :, None]


def _inverse(rows: jax.Array, used: jax.Array) -> jax.Array:
    """The inverse of ``_regularised_gram`` W = L Lᵀ (Cholesky) of the rows A_W [G, k, d]:
    W⁻¹ = L⁻ᵀ L⁻¹, one triangular solve and one product (a product runs faster than the second
    solve ``cho_solve`` makes): [G, k, k]."""
    gram = jnp.einsum("gkd,gld->gkl", rows, rows)
    factor = jnp.linalg.cholesky(_regularised_gram(gram, used))
    eye = jnp.broadcast_to(jnp.eye(used.shape[1], dtype=gram.dtype), gram.shape)
    factor_inverse = jax.lax.linalg.triangular_solve(factor, eye, left_side=True, lower=True)
    return jnp.einsum("gji,gjk->gik", factor_inverse, factor_inverse)


def _bordering(inverse: jax.Array, target: jax.Array, products: jax.Array, rhs: jax.Array,
               used: jax.Array, added: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Adding the row whose Gram column is ``products`` [G, k] and whose right-hand side is
    ``rhs`` [G] in the free slot s marked by ``added`` [G, k] (no slot where a group adds
    nothing), by bordering: with h = H b (b the products with the used slots) and the Schur
    complement σ = c(1 + ridge) − bᵀh (c = the row's squared norm; σ ≥ ridge · c),

        H' = H − e_s e_sᵀ + g gᵀ / σ,   g = e_s − h,
        t'_s = (r_s − bᵀt) / σ,   t' = t − h t'_s on the other slots.

    Returns the rank-one term's g [G, k] and σ [G], and t' [G, k], meaningful only for the
    groups that add a row (``_exchanged`` picks them; ``_rank_one_update`` applies the term)."""
    ridge = _ridge(inverse.dtype)
    b = jnp.where(used, products, 0.0)
    h = _solved(inverse, b)
    c = jnp.sum(jnp.where(added, products, 0.0), axis=1)
    schur = jnp.maximum(c * (1.0 + ridge) - jnp.sum(b * h, axis=1), ridge * c)
    schur = jnp.where(schur > 0, schur, 1.0)
    g = added.astype(inverse.dtype) - h
    new_multiplier = (rhs - jnp.sum(b * target, axis=1)) / schur
    return g, schur, target + g * new_multiplier[:, None]      # t_s = 0 on the free slot


def _schur_complement(inverse: jax.Array, target: jax.Array, dropped: jax.Array
                      ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Dropping the first slot s marked by ``dropped`` [G, k] by the Schur complement: with
    q = H e_s,

        H' = H + q qᵀ / (−q_s), then row and column s set to e_s,
        t' = t − q t_s / q_s on the other slots,   t'_s = 0.

    Returns s, one-hot [G, k] (no slot where a group drops nothing), the rank-one term's
    q [G, k] (0 where a group drops nothing) and −q_s [G], and t' [G, k]
    (``_rank_one_update`` applies the term)."""
    index = jnp.argmax(dropped, axis=1)
    drops = jnp.any(dropped, axis=1)[:, None]
    first = (jnp.arange(dropped.shape[1])[None] == index[:, None]) & drops
    q = jnp.take_along_axis(inverse, index[:, None, None], axis=2)[..., 0]
    pivot = jnp.take_along_axis(q, index[:, None], axis=1)
    q = jnp.where(drops, q, 0.0)
    dropped_multiplier = jnp.take_along_axis(target, index[:, None], axis=1)
    return (first, q, -pivot[:, 0],
            jnp.where(first, 0.0, target - q * dropped_multiplier / pivot))


def _rank_one_update(inverse: jax.Array, u: jax.Array, denominator: jax.Array,
                     added: jax.Array, dropped: jax.Array) -> jax.Array:
    """H' = H − e_a e_aᵀ + u uᵀ / ``denominator``, per group, with a the slot marked in
    ``added`` [G, k] (``_bordering``: H is the identity there) and, after it, the row and
    column of the slot marked in ``dropped`` (``_schur_complement``) set exactly to the
    identity's, so that no rounding couples that slot to the used ones. One pass over H [G, k, k]
    serves a step whatever each group does: add a row, drop one, or neither (u = 0)."""
    e = added.astype(inverse.dtype)
    updated = (inverse - e[:, :, None] * e[:, None, :]
               + u[:, :, None] * u[:, None, :] / denominator[:, None, None])
    eye = jnp.eye(dropped.shape[1], dtype=inverse.dtype)
    return jnp.where(dropped[:, :, None] | dropped[:, None, :], eye * dropped[:, :, None], updated)


def _exchanged(inverse: jax.Array, target: jax.Array, products: jax.Array, rhs: jax.Array,
               used: jax.Array, added: jax.Array,
               dropped: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The inverse and the least-squares multipliers t = H r after each group either adds the
    row in the slot marked by ``added`` (``_bordering``; ``used`` [G, k]: the slots kept) or
    drops the slots marked by ``dropped`` [G, k] (``_schur_complement``), never both: a
    Lawson–Hanson step either adds a row or steps back. So one ``_rank_one_update`` covers
    every group's addition or first drop, and only further drops take one pass over H each."""
    g, schur, grown_target = _bordering(inverse, target, products, rhs, used, added)
    first, q, pivot, shrunk_target = _schur_complement(inverse, target, dropped)
    adds = jnp.any(added, axis=1)
    inverse = _rank_one_update(inverse, jnp.where(adds[:, None], g, q),
                               jnp.where(adds, schur, pivot), added, first)
    target = jnp.where(adds[:, None], grown_target, shrunk_target)
    no_slot = jnp.zeros_like(dropped)

    def drop_first(carry):
        inverse, target, pending = carry
        first, q, pivot, target = _schur_complement(inverse, target, pending)
        return _rank_one_update(inverse, q, pivot, no_slot, first), target, pending & ~first

    inverse, target, _ = jax.lax.while_loop(lambda carry: jnp.any(carry[2]), drop_first,
                                            (inverse, target, dropped & ~first))
    return inverse, target


def _solved(inverse: jax.Array, rhs: jax.Array) -> jax.Array:
    """H r: [G, k]."""
    return jnp.einsum("gij,gj->gi", inverse, rhs)


def _multipliers(rows: jax.Array, rhs: jax.Array, squared_norms: jax.Array, active: ActiveSet,
                 z: jax.Array, tol, start: jax.Array,
                 live: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Least-squares multipliers on the active set, t = W⁻¹ r with W the regularised Gram
    matrix of the rows A_W [G, k, d], r = −A_W z (``rhs``, zero on the unused slots) and 0
    elsewhere, and the point v = z + A_Wᵀ t they give. ``start`` is the caller's estimate
    (kept up to date by ``_bordering`` and ``_schur_complement``, or H r after a
    re-factorisation); to undo the rounding the updates of H and t accumulate, it is refined by
    t += H (r − W t), at most 1 + ``REFINEMENTS`` times, while that residual is too large in some
    ``live`` [G] group (the others' multipliers are not used). From
    ``GATHERED_REFINEMENTS_FROM`` groups on, only the groups whose residual is too large are
    refined, ``REPAIR_BATCH`` at a time, gathered: among the 320 groups of a 10-class head
    some needed refining in most steps, and a refinement of all of them reads 170 MB.

    The residual is read off the rows (no Gram matrix is kept: it would be one more [G, k, k]
    array to update and read, cold after X's scan): with c the rows' ``squared_norms``,

        r − W t = −A_W z − A_W A_Wᵀ t − ridge · c ∘ t = −A_W v − ridge · c ∘ t,

    two passes over A_W, the first of which computes v, the point the caller needs anyway
    (a refinement adds a product with H; a re-factorisation of H, which the caller falls back
    on, costs about fifty such passes).

    Returns (t [G, k], v [G, d], per group whether t is accurate [G]: the residual, the slack
    it leaves on the active rows, is within the projection tolerance tol ‖x_j‖ ‖z‖ on each of
    them)."""
    groups = len(z)
    # all groups where they are few: gathering costs about as much, and refining every group
    # keeps more of them accurate (binary benchmark, n = 20,000, 32 groups: 8.0 s refining only
    # the inaccurate ones, 6.9 s refining all)
    gathered = REPAIR_BATCH if groups >= GATHERED_REFINEMENTS_FROM else None
    used = active.used
    bound = tol * jnp.sqrt(squared_norms) * jnp.linalg.norm(z, axis=1)[:, None]

    def accurate(remainder):
        return jnp.all((jnp.abs(remainder) <= bound) | ~used, axis=1)

    def point_and_residual(t, z, rows, squared_norms, used):
        point = z + jnp.einsum("gk,gkd->gd", t, rows)
        slack = jnp.einsum("gkd,gd->gk", rows, point) + _ridge(z.dtype) * squared_norms * t
        return point, jnp.where(used, -slack, 0.0)

    def refine(t, remainder, inverse, *point_inputs):
        t = t + _solved(inverse, remainder)                 # zero on the unused slots
        return t, *point_and_residual(t, *point_inputs)

    def wanting(carry):
        refinements, _, _, remainder = carry
        return live & ~accurate(remainder) & (refinements <= REFINEMENTS)

    def refined(carry):
        refinements, t, point, remainder = carry
        (t, point, remainder), repaired = _repaired(
            wanting(carry), gathered, refine,
            (t, remainder, active.inverse, z, rows, squared_norms, used), (t, point, remainder))
        return refinements + repaired, t, point, remainder

    start = jnp.where(used, start, 0.0)
    carry = (jnp.zeros(groups, jnp.int32), start,
             *point_and_residual(start, z, rows, squared_norms, used))
    _, t, point, remainder = jax.lax.while_loop(lambda carry: jnp.any(wanting(carry)), refined,
                                                carry)
    return jnp.where(used, t, 0.0), point, accurate(remainder)


def _with_entering_row(loop: _Loop) -> _Loop:
    """The loop with its entering rows written into A_W (``_Loop``)."""
    groups, slots = loop.active.used.shape
    rows = loop.rows.at[jnp.arange(groups), loop.entering_slot].set(loop.entering_row,
                                                                     mode="drop")
    return loop._replace(rows=rows, entering_slot=jnp.full(groups, slots, jnp.int32))


def project(x: jax.Array, signs: jax.Array, z: jax.Array, active: ActiveSet, tol,
            max_iters: int, outputs: int = 1, zero_below=None) -> Projection:
    """Projects every z_g onto its cone {v : e_{j,p(g)} x_j·v ≥ 0 for all j}.

    Args:
        x: [n, d] rows x_j.
        signs: [n, P] e_{j,p} = ±1 (2M − 1).
        z: [G, d] points to project, laid out as [G / (P·C), P, C]: group g has pattern
            p(g) = (g // C) mod P.
        active: warm-start active sets (``empty_active_set`` for a cold start).
        tol: a constraint counts as violated when e x_j·v < −tol ‖x_j‖ ‖z‖.
        max_iters: cap on Lawson–Hanson iterations (static).
        outputs: C (static).
        zero_below: see ``project_rows``.
    """
    rows = Problem(x=x, masks=(signs + 1.0) / 2.0, targets=None, scale=jnp.ones((), x.dtype),
                   beta=jnp.zeros((), x.dtype))
    return project_rows(rows, z, outputs, active, tol, max_iters, zero_below)


def project_rows(problem: Problem, z: jax.Array, outputs: int, active: ActiveSet,
                 tol, max_iters: int, zero_below=None) -> Projection:
    """``project`` onto the cones of the rows of ``problem`` (in memory, sharded or streamed).

    ``zero_below`` (optional): a group is done, its projection left inexact, once the
    projection is known to have norm ≤ ``zero_below`` (the prox then shrinks it to zero
    whatever it is). Known: ‖Π_K z‖ = max(0, max over unit v ∈ K of ⟨z, v⟩) grows with the
    cone, so ‖z‖ bounds it, and so does ‖Π_{K_W} z‖, the current point whenever the
    multipliers on W are all positive (it is then the projection onto K_W = {v : A_W v ≥ 0},
    a cone containing K).

    The loop carries the active rows A_W [G, k, d] and the inverse H of their Gram matrix: a row
    enters with one bordering update and leaves with one Schur complement, both O(k²). Rounding
    accumulates in H, badly so when the active rows are nearly dependent; every step checks
    the slack its multipliers leave on the active rows, refines them while it exceeds the
    tolerance, and when a few refinements do not bring it within, that group's H is
    re-factorised (Cholesky, O(k³)) and its step redone with it, unchecked (a fresh H is as
    accurate as it gets). Only the live groups' multipliers are checked: a finished group's
    are not used until the next projection checks them."""
    groups, slots = active.used.shape
    rows = _constraint_rows(problem, active.rows, outputs)
    rhs = jnp.where(active.used, -jnp.einsum("gkd,gd->gk", rows, z), 0.0)
    loop = _Loop(iteration=jnp.asarray(0), active=active, rows=rows,
                 entering_slot=jnp.full(groups, slots, jnp.int32), entering_row=jnp.zeros_like(z),
                 squared_norms=jnp.sum(rows**2, axis=2), rhs=rhs,
                 mu=jnp.zeros((groups, slots), z.dtype),
                 target=_solved(active.inverse, rhs),
                 done=_shrunk_to_zero(jnp.linalg.norm(z, axis=1), zero_below),
                 out_of_room=jnp.zeros(groups, bool),
                 stale=jnp.zeros(groups, bool), trusted=jnp.zeros(groups, bool),
                 refactorisations=jnp.asarray(0), scanned=jnp.asarray(0))
    loop = _compacting(problem, z, None, outputs, tol, max_iters, zero_below, loop)
    # the last entering row has μ = 0: the point does not need it written
    point = z + jnp.einsum("gk,gkd->gd", loop.mu, loop.rows)
    return Projection(point, loop.active, loop.iteration, loop.done & ~loop.out_of_room,
                      loop.out_of_room, loop.refactorisations, loop.scanned)


def _shrunk_to_zero(norm: jax.Array, zero_below) -> jax.Array:
    """Per group, whether a projection known to have norm ≤ ``norm`` [G] is done: it is where
    ``zero_below`` is given and ``norm`` ≤ ``zero_below`` (``project_rows``)."""
    return jnp.zeros(norm.shape, bool) if zero_below is None else norm <= zero_below


def _compacting(problem: Problem, z: jax.Array, patterns, outputs: int, tol, max_iters: int,
                zero_below, loop: _Loop) -> _Loop:
    """Runs the Lawson–Hanson steps on the G groups of ``loop`` (points z [G, d], patterns as
    ``_per_group`` reads them) until at most G / ``COMPACTION`` are unfinished, then on those
    alone, gathered into a batch of that size (padded with finished copies), and so on while
    the batch has at least ``SMALLEST_BATCH`` groups. Each batch size compiles its own loop."""
    groups = len(z)
    few = groups // COMPACTION
    if few < SMALLEST_BATCH:
        return _lawson_hanson(problem, z, patterns, outputs, tol, max_iters, zero_below, loop)
    loop = _lawson_hanson(problem, z, patterns, outputs, tol, max_iters, zero_below, loop,
                          keep_going=lambda loop: jnp.sum(~loop.done) > few)
    index = jnp.nonzero(~loop.done, size=few, fill_value=groups)[0]    # out of range: padding
    if patterns is None:
        patterns = _over_groups(jnp.arange(problem.num_patterns), groups, outputs)

    def gathered(array):
        return _take(array, index) if array.ndim else array

    batch = jax.tree.map(gathered, loop)
    batch = _compacting(problem, gathered(z), gathered(patterns), outputs, tol, max_iters,
                        zero_below, batch._replace(done=batch.done | (index >= groups)))
    return jax.tree.map(lambda all_groups, some: all_groups.at[index].set(some, mode="drop")
                        if all_groups.ndim else some, loop, batch)


def _take(array: jax.Array, index: jax.Array) -> jax.Array:
    """The groups ``index`` of ``array`` (leading group axis); an index out of range reads the
    last group."""
    return jnp.take(array, index, axis=0, mode="clip")


def _repaired(wanted: jax.Array, batch, repair, inputs, outputs):
    """``outputs`` (arrays with a leading group axis) with ``repair(*inputs)`` written in for
    the ``wanted`` [G] groups: for the first ``batch`` wanted ones, gathered, or where
    ``batch`` is None, for all groups at once (a repair must then do no harm where none is
    wanted). Returns them and which groups were repaired."""
    if batch is None:
        return repair(*inputs), jnp.ones_like(wanted)
    index = jnp.nonzero(wanted, size=batch, fill_value=len(wanted))[0]  # out of range: none
    fresh = repair(*(_take(array, index) for array in inputs))
    return (tuple(old.at[index].set(new, mode="drop") for old, new in zip(outputs, fresh)),
            jnp.zeros_like(wanted).at[index].set(True, mode="drop"))


def _refactorised(loop: _Loop) -> _Loop:
    """The loop with H and t afresh for its stale groups, ``REPAIR_BATCH`` at a time (none
    where no group is stale)."""

    def refactorise(rows, used, rhs):
        inverse = _inverse(rows, used)
        return inverse, _solved(inverse, rhs)

    def next_batch(carry):
        inverse, target, pending = carry
        (inverse, target), repaired = _repaired(pending, REPAIR_BATCH, refactorise,
                                                (loop.rows, loop.active.used, loop.rhs),
                                                (inverse, target))
        return inverse, target, pending & ~repaired

    inverse, target, _ = jax.lax.while_loop(lambda carry: jnp.any(carry[2]), next_batch,
                                            (loop.active.inverse, loop.target, loop.stale))
    return loop._replace(active=loop.active._replace(inverse=inverse), target=target,
                         stale=jnp.zeros_like(loop.stale), trusted=loop.stale,
                         refactorisations=loop.refactorisations + jnp.sum(loop.stale))


def _lawson_hanson(problem: Problem, z: jax.Array, patterns, outputs: int, tol, max_iters: int,
                   zero_below, loop: _Loop, keep_going=None) -> _Loop:
    """Lawson–Hanson steps on every group of ``loop`` while some group is unfinished, the step
    count is below ``max_iters`` and ``keep_going(loop)`` holds (where given)."""
    groups, slots = loop.active.used.shape
    z_norm = jnp.linalg.norm(z, axis=1)

    def step(loop: _Loop) -> _Loop:
        loop = _refactorised(_with_entering_row(loop))
        active, rows, mu, done = loop.active, loop.rows, loop.mu, loop.done
        target, point, accurate = _multipliers(rows, loop.rhs, loop.squared_norms, active, z,
                                               tol, loop.target, live=~done)
        # a group whose H went stale changes nothing: its step is redone with a fresh H
        stale = ~accurate & ~loop.trusted & ~done
        frozen = done | stale
        feasible = jnp.all((target > 0) | ~active.used, axis=1)
        # Lawson–Hanson step back: move from μ towards the LS multipliers until one reaches 0.
        blocking = active.used & (target <= 0)
        ratio = jnp.where(blocking, mu / jnp.where(blocking, mu - target, 1.0), jnp.inf)
        alpha = jnp.where(feasible, 1.0, jnp.clip(jnp.min(ratio, axis=1), 0.0, 1.0))
        # A warm start begins at μ = 0: drop every non-positive multiplier at once.
        cold_multipliers = ~jnp.any(mu > 0, axis=1, keepdims=True)
        reached_zero = jnp.where(cold_multipliers, blocking, blocking & (ratio <= alpha[:, None]))
        drop = ~feasible[:, None] & reached_zero & ~frozen[:, None]
        used = active.used & ~drop
        new_mu = jnp.where(used, mu + alpha[:, None] * (target - mu), 0.0)
        new_mu = jnp.where(frozen[:, None], mu, new_mu)
        # groups that look for a constraint to add; a step where none does (all of them stepped
        # back, or are done) skips the scan of X. Only groups that took the full step (μ' = t)
        # search, so z + A_Wᵀ t is their point z + A_Wᵀ μ'.
        searching = feasible & ~frozen & ~_shrunk_to_zero(jnp.linalg.norm(point, axis=1),
                                                          zero_below)
        scans = jnp.any(searching)
        worst, worst_slack = jax.lax.cond(
            scans, lambda: _most_violated(problem, point, outputs, patterns),
            lambda: (jnp.zeros(groups, jnp.int32), jnp.full(groups, jnp.inf, point.dtype)))
        violated = searching & (worst_slack < -tol * z_norm)
        already = jnp.any(used & (active.rows == worst[:, None]), axis=1)
        free_slot = jnp.argmin(used, axis=1)
        has_room = ~jnp.all(used, axis=1)
        add = feasible & violated & ~already & has_room & ~frozen
        slot = jnp.where(add, free_slot, slots)          # out of range where nothing is added
        slot_hit = jnp.arange(slots)[None] == slot[:, None]
        # the new row's inner products with the slots' rows: its column of the Gram matrix
        new_row = _constraint_rows(problem, worst, outputs, patterns)
        squared_norm = jnp.sum(new_row**2, axis=1)[:, None]
        products = jnp.where(slot_hit, squared_norm, jnp.einsum("gkd,gd->gk", rows, new_row))
        new_rhs = -jnp.sum(new_row * z, axis=1)
        # H and the least-squares multipliers on the new active set, for the next step
        inverse, kept_target = _exchanged(active.inverse, target, products, new_rhs, used,
                                          slot_hit, drop)
        squared_norms = jnp.where(slot_hit, squared_norm, loop.squared_norms)
        rhs = jnp.where(slot_hit, new_rhs[:, None], jnp.where(used, loop.rhs, 0.0))
        active = ActiveSet(jnp.where(slot_hit, worst[:, None], active.rows), used | slot_hit,
                           inverse)
        # a violated row that is already active is rounding; a full active set needs more slots
        out_of_room = feasible & violated & ~already & ~has_room
        # a step where some group went stale is redone for it and does not count, unless some
        # group had just been re-factorised: so the cap still binds if groups go stale in turn
        counts = ~jnp.any(stale) | jnp.any(loop.trusted)
        return loop._replace(iteration=loop.iteration + counts, active=active,
                             entering_slot=slot.astype(jnp.int32), entering_row=new_row,
                             squared_norms=squared_norms, rhs=rhs, mu=new_mu,
                             target=kept_target,
                             done=jnp.where(stale, done, done | (feasible & ~add)),
                             out_of_room=jnp.where(stale, loop.out_of_room, out_of_room),
                             stale=stale, trusted=jnp.zeros_like(stale),
                             scanned=loop.scanned + scans * groups)

    def running(loop: _Loop) -> jax.Array:
        going = (loop.iteration < max_iters) & ~jnp.all(loop.done)
        return going if keep_going is None else going & keep_going(loop)

    return jax.lax.while_loop(running, step, loop)


# ----------------------------------------------------------------------------- groups of the program


def groups(z: jax.Array) -> jax.Array:
    """[H, d, P, C] → [H·P·C, d] (one row per group)."""
    return jnp.moveaxis(z, 1, -1).reshape(-1, z.shape[1])


def ungroup(rows: jax.Array, shape) -> jax.Array:
    """Inverse of ``groups``."""
    halves, dim, patterns, outputs = shape
    return jnp.moveaxis(rows.reshape(halves, patterns, outputs, dim), -1, 1)


def cold_start_iterations(slots: int) -> int:
    """Lawson–Hanson iterations for a projection far from its warm start (or from none):
    each iteration adds or drops one row, so a few passes over the ``slots`` rows."""
    return 4 * slots + 10


def projection_tolerance(dtype) -> float:
    """Violations below 0.01 √eps · ‖x_j‖ ‖z‖ count as satisfied."""
    return 0.01 * float(np.sqrt(np.finfo(dtype).eps))


def project_groups(problem: Problem, rows: jax.Array, shape, active: ActiveSet,
                   max_iters: int, zero_below=None) -> Projection:
    """Projects the groups ``rows`` [H·P·C, d] of a [H, d, P, C] array onto their cones
    (``zero_below``: see ``project_rows``)."""
    return project_rows(problem, rows, shape[3], active, projection_tolerance(rows.dtype),
                        max_iters=max_iters, zero_below=zero_below)
