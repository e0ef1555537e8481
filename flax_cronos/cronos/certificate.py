"""Bounds from the dual: the objective's terms, the duality gap of a feasible point, and β̄.

With groups g = (half, pattern, class), A_g = ±D_iX and cones K_g (R^d for gated_relu), the
program min_v ½‖Σ_g A_g v_g − Y‖² + β Σ_g ‖v_g‖ s.t. v_g ∈ K_g has the dual

    max_θ ⟨θ, Y⟩ − ½‖θ‖²   s.t.  ‖Π_{K_g}(A_gᵀθ)‖ ≤ β for every g,

because the support function of K ∩ unit ball is ‖Π_K(·)‖ (Moreau). Two consequences:
- β̄ = max_g ‖Π_{K_g}(A_gᵀY)‖ is the smallest β whose optimum is zero (θ = Y is then feasible);
- any θ₀ scaled per output c by s_c ≤ β / max_g ‖Π_{K_g}(A_gᵀθ₀)‖ is dual feasible, so
  (P(v) − D(sθ₀)) / P(v) bounds how far a feasible v is from the optimum. D(sθ₀) is a concave
  quadratic in s_c, largest at s_c = ⟨θ₀_c, Y_c⟩ / ‖θ₀_c‖², so s_c is that, capped there.

The candidate θ₀ = Y − Fu comes from ADMM's other iterate, u (the least-squares step's), not
from the feasible v. The u-step makes Fᵀ(Y − Fu) = ρλ + ρ((1 − α)(u − v_prev) + (v − v_prev))
(admm.py), and ρλ = ρ(z − v) is a subgradient of β‖·‖ + I_K at v, so dual feasible: the
candidate's correlations are off by ρ times ADMM's residuals. Those of Y − Fv are off by
FᵀF(u − v) as well, up to ‖FᵀF‖ ≈ P/ρ (hundreds of) times more: at small β, where the
correlations must be within β, their scaling made the gap of a converged iterate ≈ 1, and
many more groups exceeded β, each needing a full projection (docs/benchmarks.md).
"""

import functools

import jax
import jax.numpy as jnp

from flax_cronos.cronos import cone, problem as pb
from flax_cronos.cronos.rows import reduce_rows

BETA_MAX_ROUND = 50     # Lawson–Hanson steps per round of ``beta_max``'s projections


@jax.jit
def objective_terms(problem: pb.Problem, weights: jax.Array) -> tuple[jax.Array, ...]:
    """(loss, penalty, relative constraint violation) of [H, d, P, C] weights.

    Violation = max over constraints of (−E_i X v_ic)₊ / (‖X‖₂ · max group norm); 0 for gated.
    """
    def block(rows):
        loss = 0.5 * jnp.sum((pb.apply_F(rows, weights) - rows.targets) ** 2)
        if weights.shape[0] == 1:
            return loss, jnp.zeros((), weights.dtype)
        return loss, jnp.max(jax.nn.relu(-pb.apply_G(rows, weights)))

    loss, violation = reduce_rows(problem, block, lambda a, b: (a[0] + b[0], jnp.maximum(a[1], b[1])))
    group_norms = jnp.sqrt(jnp.sum(weights**2, axis=1))
    penalty = problem.beta * jnp.sum(group_norms)
    violation = violation / jnp.maximum(jnp.max(group_norms), jnp.finfo(weights.dtype).tiny)
    return loss, penalty, violation


def _dual_norms(problem: pb.Problem, correlations: jax.Array, active, max_iters: int, below):
    """Upper bounds of max_g ‖Π_{K_g}(A_gᵀθ)‖ per output [C] from the correlations Fᵀθ
    [H, d, P, C], and the projections' active sets.

    Exact when the projections complete and no group is known to be ≤ ``below`` (those
    groups stop projecting there); otherwise still bounds, since every Lawson–Hanson iterate
    z + Aᵀμ has μ ≥ 0 and ‖Π_K(z)‖ = min_{μ ≥ 0} ‖z + Aᵀμ‖.
    """
    rows = cone.groups(correlations)
    if active is not None:
        projection = cone.project_groups(problem, rows, correlations.shape, active, max_iters,
                                         zero_below=below)
        rows, active = projection.point, projection.active
    norms = jnp.linalg.norm(rows, axis=1).reshape(-1, correlations.shape[-1])
    return jnp.max(norms, axis=0), active


def feasible_scale(problem: pb.Problem, correlations: jax.Array, active, max_iters: int):
    """Per output c, the largest s_c ≤ 1 with s_c θ_c dual feasible, from the correlations Fᵀθ
    [H, d, P, C]: min(1, β / max_g ‖Π_{K_g}(A_gᵀθ_c)‖) (a lower bound of it where the
    projections stop early, see ``_dual_norms``). Returns ([C], the projections' active sets).

    A group's norm only matters above β (below it, any scale ≤ 1 is feasible), so its
    projection stops once it is known to be ≤ β."""
    worst, active = _dual_norms(problem, correlations, active, max_iters, below=problem.beta)
    tiny = jnp.finfo(correlations.dtype).tiny
    return jnp.minimum(1.0, problem.beta / jnp.maximum(worst, tiny)), active


def duality_gap(problem: pb.Problem, v: jax.Array, u: jax.Array, dual_active, max_iters: int):
    """Relative duality gap of a feasible v [H, d, P, C] from the dual candidate θ₀ = Y − Fu
    (u: ADMM's u-iterate, or v itself), and its projections' active sets (``dual_active``:
    their warm start, e.g. the prox's active sets)."""
    tiny = jnp.finfo(v.dtype).tiny
    correlations, candidate_sq, candidate_y, residual_sq = pb.residual_terms(problem, u,
                                                                              loss_of=v)
    feasible, dual_active = feasible_scale(problem, correlations, dual_active, max_iters)
    scale = jnp.clip(candidate_y / jnp.maximum(candidate_sq, tiny), 0.0, feasible)
    dual = jnp.sum(scale * candidate_y - 0.5 * scale**2 * candidate_sq)
    primal = 0.5 * residual_sq + problem.beta * jnp.sum(jnp.sqrt(jnp.sum(v**2, axis=1)))
    gap = jnp.maximum(primal - dual, 0.0) / jnp.maximum(primal, tiny)
    return gap, dual_active


@functools.partial(jax.jit, static_argnames=("max_iters",))
def final_duality_gap(problem: pb.Problem, v: jax.Array, u: jax.Array, dual_active,
                      max_iters: int):
    return duality_gap(problem, v, u, dual_active, max_iters)[0]


@functools.partial(jax.jit, static_argnames=("activation",))
def beta_max(problem: pb.Problem, activation: str) -> jax.Array:
    """β̄ = max_g ‖Π_{K_g}(A_gᵀY)‖ of the normalised program (multiply by ``problem.scale`` for
    the original one).

    For relu only the largest projection matters. The projections run in rounds of
    ``BETA_MAX_ROUND`` Lawson–Hanson steps, each from the last round's active sets. A group
    whose projection completed gives its exact norm, and the largest such norm L ≤ β̄ lets the
    next rounds stop every group once its projection is known to be ≤ L (``zero_below`` of
    ``cone.project_rows``: its point then has norm ≤ L). Once every group has completed or
    stopped, the largest norm is β̄ itself; if the rounds run out first (a cold start's steps
    in all), it is still an upper bound. Projecting every group to completion instead took
    69 s for 10 classes on 8,000 × 256 features with P = 16 (320 groups), and 7.5 s at C = 1,
    where the rounds take 1.0 s and 0.06 s (docs/benchmarks.md)."""
    halves = pb.halves(activation)
    correlations = pb.targets_correlation(problem, halves)
    points = cone.groups(correlations)
    if activation != "relu":
        return jnp.max(jnp.linalg.norm(points, axis=1))
    slots = min(problem.dim, problem.num_rows)
    rounds = -(-cone.cold_start_iterations(slots) // BETA_MAX_ROUND)

    def projected(carry):
        active, lower, _, _, round_ = carry
        projection = cone.project_groups(problem, points, correlations.shape, active,
                                         BETA_MAX_ROUND, zero_below=lower)
        norms = jnp.linalg.norm(projection.point, axis=1)
        lower = jnp.maximum(lower, jnp.max(jnp.where(projection.complete, norms, 0.0)))
        return projection.active, lower, jnp.max(norms), jnp.all(projection.complete), round_ + 1

    def unfinished(carry):
        *_, finished, round_ = carry
        return ~finished & (round_ < rounds)

    empty = cone.empty_active_set(len(points), slots, problem.dtype)
    zero = jnp.zeros((), problem.dtype)
    start = (empty, zero, zero, jnp.asarray(False), jnp.asarray(0))
    return jax.lax.while_loop(unfinished, projected, start)[2]
