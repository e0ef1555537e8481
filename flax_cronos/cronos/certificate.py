"""Bounds from the dual: the objective's terms, the duality gap of a feasible point, and β̄.

With groups g = (half, pattern, class), A_g = ±D_iX and cones K_g (R^d for gated_relu), the
program min_v ½‖Σ_g A_g v_g − Y‖² + β Σ_g ‖v_g‖ s.t. v_g ∈ K_g has the dual

    max_θ ⟨θ, Y⟩ − ½‖θ‖²   s.t.  ‖Π_{K_g}(A_gᵀθ)‖ ≤ β for every g,

because the support function of K ∩ unit ball is ‖Π_K(·)‖ (Moreau). Two consequences:
- β̄ = max_g ‖Π_{K_g}(A_gᵀY)‖ is the smallest β whose optimum is zero (θ = Y is then feasible);
- any residual θ₀ = Y − Fv, scaled per output c by s_c = min(1, β / max_g ‖Π_{K_g}(A_gᵀθ₀)‖), is
  dual feasible, so (P(v) − D(sθ₀)) / P(v) bounds how far a feasible v is from the optimum.
"""

import functools

import jax
import jax.numpy as jnp

from flax_cronos.cronos import cone, problem as pb


@jax.jit
def objective_terms(problem: pb.Problem, weights: jax.Array) -> tuple[jax.Array, ...]:
    """(loss, penalty, relative constraint violation) of [H, d, P, C] weights.

    Violation = max over constraints of (−E_i X v_ic)₊ / (‖X‖₂ · max group norm); 0 for gated.
    """
    residual = pb.apply_F(problem, weights) - problem.targets
    loss = 0.5 * jnp.sum(residual**2)
    group_norms = jnp.sqrt(jnp.sum(weights**2, axis=1))
    penalty = problem.beta * jnp.sum(group_norms)
    violation = jnp.max(jax.nn.relu(-pb.apply_G(problem, weights))) if weights.shape[0] == 2 else 0.0
    violation = violation / jnp.maximum(jnp.max(group_norms), jnp.finfo(weights.dtype).tiny)
    return loss, penalty, jnp.asarray(violation, weights.dtype)


def _dual_norms(problem: pb.Problem, theta: jax.Array, halves: int, active, max_iters: int):
    """Upper bounds of max_g ‖Π_{K_g}(A_gᵀθ)‖ per output [C], and the projections' active sets.

    Exact when the projections complete; otherwise still bounds, since every Lawson–Hanson
    iterate z + Aᵀμ has μ ≥ 0 and ‖Π_K(z)‖ = min_{μ ≥ 0} ‖z + Aᵀμ‖.
    """
    correlations = pb.apply_Ft(problem, theta, halves)                     # [H, d, P, C]
    rows = cone.groups(correlations)
    if active is not None:
        projection = cone.project_groups(problem, rows, correlations.shape, active, max_iters)
        rows, active = projection.point, projection.active
    norms = jnp.linalg.norm(rows, axis=1).reshape(-1, theta.shape[1])
    return jnp.max(norms, axis=0), active


def duality_gap(problem: pb.Problem, v: jax.Array, dual_active, max_iters: int):
    """Relative duality gap of a feasible v [H, d, P, C], and the updated warm start."""
    residual = problem.targets - pb.apply_F(problem, v)                      # [n, C]
    worst, dual_active = _dual_norms(problem, residual, v.shape[0], dual_active, max_iters)
    scale = jnp.minimum(1.0, problem.beta / jnp.maximum(worst, jnp.finfo(v.dtype).tiny))
    dual = jnp.sum(scale * jnp.sum(residual * problem.targets, axis=0)
                   - 0.5 * scale**2 * jnp.sum(residual**2, axis=0))
    primal = 0.5 * jnp.sum(residual**2) + problem.beta * jnp.sum(jnp.sqrt(jnp.sum(v**2, axis=1)))
    gap = jnp.maximum(primal - dual, 0.0) / jnp.maximum(primal, jnp.finfo(v.dtype).tiny)
    return gap, dual_active


@functools.partial(jax.jit, static_argnames=("max_iters",))
def final_duality_gap(problem: pb.Problem, v: jax.Array, dual_active, max_iters: int):
    return duality_gap(problem, v, dual_active, max_iters)[0]


@functools.partial(jax.jit, static_argnames=("activation",))
def beta_max(problem: pb.Problem, activation: str) -> jax.Array:
    """β̄ of the normalised program (multiply by ``problem.scale`` for the original one)."""
    halves = pb.halves(activation)
    active, iterations = None, 0
    if activation == "relu":
        dim, patterns = problem.x.shape[1], problem.masks.shape[1]
        slots = min(dim, problem.x.shape[0])
        active = cone.empty_active_set(halves * patterns * problem.targets.shape[1], slots,
                                       problem.x.dtype)
        iterations = cone.cold_start_iterations(slots)
    return jnp.max(_dual_norms(problem, problem.targets, halves, active, iterations)[0])
