"""CRONOS: ADMM with Nyström-preconditioned CG for the convex two-layer ReLU program.

On the normalised data of ``problem.py``, with K = K_1 × … the activation cones
(v_ic ∈ K_i ⟺ (2D_i − I) X v_ic ≥ 0; no cones for gated_relu), the splitting is

    min ½‖Fu − Y‖² + β‖v‖_{2,1} + I_K(v)   s.t.  u = v.

Scaled ADMM with penalty ρ and scaled dual λ:

    u ← solve (I + ρ⁻¹FᵀF) u = ρ⁻¹FᵀY + v − λ                       (Nyström PCG)
    v ← prox(û + λ):  z ↦ (1 − (β/ρ)/‖Π_K z‖)₊ Π_K z   per group     (exact, cone.py)
    λ ← λ + û − v

with over-relaxation û = αu + (1 − α)v_prev, α = 1.6 (Boyd et al. 2011, §3.4.3), and the
prox applied to an Anderson extrapolation of û + λ over the last ``CronosConfig.anderson``
iterations (``anderson.py``; relu at n = 20,000: 200 iterations instead of 750). The prox of
β‖·‖₂ + I_K for a convex cone K is the shrunk projection (maximise ⟨e, z⟩ over unit e ∈ K).
This replaces the paper's slack splitting Gu = s: with s the ADMM needed thousands of
iterations to get within 1e-2 of the optimum (see docs/benchmarks.md); with exact cone
projections it converges like the unconstrained gated problem.

The u-system: FᵀF only sees Δ = Σ_h σ_h u_h (v − w for relu), so for relu Σ = v + w is just
b_v + b_w and (I + (2/ρ) H) Δ = b_v − b_w; gated_relu solves (I + ρ⁻¹H) u = b. H is the pattern
Gram operator (H z)_i = Xᵀ D_i Σ_j D_j X z_j, with ‖H‖ ≤ P on normalised data. PCG is
preconditioned by an approximation of H that depends on neither ρ nor β (warm starts across a
β path reuse it): H ≈ A ⊗ XᵀX (``kronecker.py``, the default) or the paper's Nyström sketch.

Inexact solves: PCG stops at ‖r‖ ≤ η_k ‖rhs‖, η_k = min(0.1 (1+k)^{-1.2}, 0.1 √(r_p r_d))
(a summable forcing sequence, tightened as ADMM converges: r_p and r_d are the relative primal
and dual residuals below), warm-started from the last u, whose image under the system matrix
the last PCG run already knows (``solve_u``: no product for the starting residual in nine
iterations of ten). The cone projections are inexact early on in the same spirit: each runs
at most ``PROJECTION_ITERS`` Lawson–Hanson steps from the last iteration's active sets, so
while z still moves far between iterations an active set fills over several of them instead
of being solved exactly for a point the next iteration discards (relu at n = 4000 / 20,000 /
50,000: 1.7× / 1.4× / 1.5× faster than with 200 steps, same optimum; docs/benchmarks.md).
A projection that stopped early leaves v slightly outside its cone, so ADMM stops only after
iterations whose projections all completed.

Where the rows live (``rows.py``): every product with X is a reduction over blocks of rows, so
this code runs unchanged on one device, on rows sharded over a device mesh (XLA's partitioner
all-reduces the [d, P]-sized partial sums; X is never gathered) and on rows streamed from host
memory block by block (device memory then holds blocks, never X).

Stopping. Because v is feasible once its projections complete, its objective is an upper bound,
and a dual-feasible point built from the residual of the u-iterate gives a lower bound
(``certificate.py``): ADMM stops when the relative duality gap is ≤ ``tol``, a certificate.
The gap is checked ``GAP_EVERY`` iterations after a cold start and ``GAP_FIRST`` after a warm
one (often certified within a few iterations; ``certify``), then at the same interval while the
gap is near (≤ ``FAR_GAP`` · tol; at most ``GAP_EVERY``) and at twice it while it is far: a
check projects, and for small β the bound stays loose (the dual feasible set is thin) long
after the iterate has converged. ADMM therefore also stops when the primal residual
‖u − v‖ / max(‖u‖, ‖v‖) and the dual residual ρ‖v − v_prev‖ / max(ρ‖λ‖, ‖FᵀY‖) (Boyd et al.
2011, §3.3) have both been ≤ tol/10 for ``RESIDUAL_RUN`` iterations in a row. One iteration's
residuals are not enough: a warm start from a solution for a larger β begins near a fixed
point and its residuals grow for a few iterations before they fall, and Anderson's steps make
them jump by 10× from one iteration to the next. Stopped at the first small residuals, warm
starts along a β path on 10-class features ended up to 7% above their optimum at tol 1e-2 and
1% at tol 1e-3; with a run of 10, within 0.15% and 0.0064% (docs/benchmarks.md). A gap check
is also made where a run begins (it may certify) and where it completes, so
``Stats.duality_gap`` always reports the certified bound of the last iterate.

ρ: ADMM's speed here depends on ρ by orders of magnitude, and in the wrong direction for
residual balancing (balanced residuals sat at ρ ≈ 1 where convergence stalls). ``default_rho``
sets ρ from β relative to the β that zeroes the solution; for relu it grows for a while in the
early phase of a solve and then returns (``early_rho``). ``docs/benchmarks.md`` has the
measurements.
"""

import dataclasses
import enum
import functools
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh

from flax_cronos.cronos import anderson, certificate, cone, kronecker, nystrom, problem as pb
from flax_cronos.cronos.network import ConvexParams, with_intercept
from flax_cronos.cronos.pcg import pcg
from flax_cronos.cronos.precision import full_precision
from flax_cronos.cronos.rows import (RowStream, auto_mesh, gather_processes, holds_process_rows,
                                     mesh_of, place_process_rows, place_rows, reduce_rows)

RELAXATION = 1.6        # over-relaxation α (Boyd et al. 2011, §3.4.3)
CHUNK = 50              # ADMM iterations per device call between progress reports
GAP_EVERY = 50          # ADMM iterations from a cold start to the first duality-gap check ...
GAP_FIRST = 10          # ... or from a warm start; the same interval again (at most GAP_EVERY) ...
FAR_GAP = 10            # ... or twice it after a gap above FAR_GAP · tol
PROJECTION_ITERS = 50   # Lawson–Hanson iterations per cone projection, at most (module docstring)
GAP_PROJECTION_ITERS = 2 * PROJECTION_ITERS  # ... in a duality-gap check (_gap_projection_iters)
IMAGE_REFRESH = 10      # every IMAGE_REFRESH-th u-step computes its starting residual (``solve_u``)
FIRST_ACTIVE = 256      # active-set slots per group at the start; doubled when one fills up
MAX_ACTIVE = 512        # ... up to this many (or d, or n)
RHO_SCALE = 0.5         # ρ = RHO_SCALE √(β / β̄), see default_rho
RESIDUAL_FRACTION = 0.1  # residual test: both relative residuals ≤ tol · RESIDUAL_FRACTION ...
RESIDUAL_RUN = 10        # ... in this many iterations in a row
EARLY_ITERS = 60        # relu, default ρ: in the first EARLY_ITERS iterations of a (re)start ...
EARLY_RATIO = 100       # ... ρ doubles while the primal residual is EARLY_RATIO × the dual ...
EARLY_GROWTH = 16       # ... up to EARLY_GROWTH × its start, and then returns (``early_rho``)
PRECONDITIONERS = ("kronecker", "nystrom")

Preconditioner = kronecker.KroneckerApprox | nystrom.NystromApprox


@dataclasses.dataclass(frozen=True)
class CronosConfig:
    """Settings of one convex solve.

    Attributes:
        patterns: P, the number of sampled gates (relu has 2P neurons per output).
        beta: β ≥ 0, the group-lasso weight (the loss has no 1/n factor).
        activation: "relu" (cone-constrained, the paper's) or "gated_relu".
        task: "classification" (labels 0..C−1) or "regression".
        intercept: append a constant-1 feature (its weights are penalised like the others).
        rho: ADMM penalty for the normalised program (features scaled to ‖X‖₂ = 1), fixed;
            None chooses it from the data (``default_rho``) and, for relu, lets it grow in the
            early phase (``early_rho``).
        preconditioner: of the u-step's PCG: "kronecker" (H ≈ A ⊗ XᵀX, ``kronecker.py``; the
            default, 2–3.5× fewer PCG iterations in our measurements) or "nystrom" (the
            paper's randomized sketch of rank ``rank``).
        rank: Nyström sketch rank.
        max_iters: ADMM iteration cap.
        tol: relative duality gap at which the solve stops (a certificate: the objective is
            then within tol of the optimum), or ten times the relative residuals that stop it
            once they have held for ``RESIDUAL_RUN`` iterations (see the module docstring).
        pcg_max_iters: PCG iteration cap per ADMM iteration.
        anderson: how many past iterations Anderson acceleration combines (``anderson.py``);
            0 runs plain ADMM.
        dtype: "float32" or "float64" (float64 needs ``jax_enable_x64``).
    """

    patterns: int = 16
    beta: float = 1e-3
    activation: str = "relu"
    task: str = "classification"
    intercept: bool = False
    rho: Optional[float] = None
    preconditioner: str = "kronecker"
    rank: int = 10
    max_iters: int = 5000
    tol: float = 1e-3
    pcg_max_iters: int = 50
    anderson: int = 10
    dtype: str = "float32"

    def check(self) -> None:
        """Raises ValueError naming the first impossible setting."""
        if not isinstance(self.patterns, int) or self.patterns <= 0:
            raise ValueError(f"patterns must be a positive integer; got {self.patterns!r}")
        if not np.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"beta must be a finite number >= 0; got {self.beta!r}")
        if self.activation not in pb.ACTIVATIONS:
            raise ValueError(f"activation must be one of {pb.ACTIVATIONS}; got {self.activation!r}")
        if self.task not in pb.TASKS:
            raise ValueError(f"task must be one of {pb.TASKS}; got {self.task!r}")
        if self.preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}; "
                             f"got {self.preconditioner!r}")
        if self.rho is not None and not (np.isfinite(self.rho) and self.rho > 0):
            raise ValueError(f"rho must be a positive number or None; got {self.rho!r}")
        for name in ("rank", "max_iters", "pcg_max_iters"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if not isinstance(self.anderson, int) or self.anderson < 0:
            raise ValueError(f"anderson must be an integer >= 0; got {self.anderson!r}")
        if not (0 < self.tol < 1):
            raise ValueError(f"tol must be in (0, 1); got {self.tol!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {self.dtype!r}")
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("dtype='float64' needs jax.config.update('jax_enable_x64', True)")


class SolveStatus(enum.IntEnum):
    CONVERGED = 0
    MAX_ITERATIONS = 1
    NONFINITE = 2


class Stats(NamedTuple):
    """Diagnostics of a solve (Python scalars). Objective = loss + penalty, as in DESIGN.md;
    duality_gap is (objective − dual bound) / objective, a certificate of optimality;
    projection_iterations counts the prox's Lawson–Hanson steps (relu), and scanned_groups
    their scans of X for violated constraints, in groups (``cone.Projection.scanned``)."""

    objective: float
    loss: float
    penalty: float
    constraint_violation: float
    duality_gap: float
    primal_residual: float
    dual_residual: float
    iterations: int
    pcg_iterations: int
    projection_iterations: int
    scanned_groups: int
    rho: float
    seconds: float


class Solution(NamedTuple):
    params: ConvexParams
    stats: Stats
    status: SolveStatus


class AdmmState(NamedTuple):
    """ADMM iterates on the normalised program (a pytree).

    u, v, lam: [H, d, P, C]; active: the prox's cone projections' active sets, their warm start
    and the duality gap's (None for gated_relu): at a fixed point z = v + Fᵀθ/ρ, so both
    project onto the same faces; gap_needs_room: the last gap's projections filled some
    group's slots; residuals and the duality gap are relative (see module docstring);
    gap_at: the iteration whose v the gap bounds (−1: none yet); gap_every: iterations from
    that one to the next check; rho_growth: ρ over its value at the (re)start
    (``early_rho``); projections_complete is False when the last projections ran
    out of active-set slots or iterations (v may then be infeasible); u_image: [d, P, C]
    (I + αH) Δ of the last u-step's solution Δ = Σ_h σ_h u_h, image_rho: the ρ of its α
    (0: none), the next u-step's start (``solve_u``); memory: Anderson acceleration's (None
    without it); small_residual_run: how many iterations in a row, up to the last, had both
    residuals within the residual test's bound (``converged``).
    """

    u: jax.Array
    v: jax.Array
    lam: jax.Array
    active: Optional[cone.ActiveSet]
    gap_needs_room: jax.Array
    rho: jax.Array
    rho_growth: jax.Array
    iteration: jax.Array
    pcg_iterations: jax.Array
    projection_iterations: jax.Array
    scanned_groups: jax.Array
    primal_residual: jax.Array
    dual_residual: jax.Array
    gap: jax.Array
    gap_at: jax.Array
    gap_every: jax.Array
    projections_complete: jax.Array
    u_image: jax.Array
    image_rho: jax.Array
    memory: Optional[anderson.Memory]
    small_residual_run: jax.Array


class Settings(NamedTuple):
    """The static part of a config: what changes the compiled step."""

    activation: str
    pcg_max_iters: int
    early_rho: bool
    projection_iters: int


def settings_of(config: CronosConfig) -> Settings:
    return Settings(config.activation, config.pcg_max_iters,
                    early_rho=config.activation == "relu" and config.rho is None,
                    projection_iters=PROJECTION_ITERS)


# ----------------------------------------------------------------------------- the u-step


def pattern_gram(problem: pb.Problem, z: jax.Array) -> jax.Array:
    """H z = (Xᵀ D_i Σ_j D_j X z_j)_i: [d, P, k] → [d, P, k], summed over row blocks."""
    return reduce_rows(problem, lambda block: pb.pattern_sum_t(block, pb.pattern_sum(block, z)))


def _system_weight(activation: str, rho: jax.Array) -> jax.Array:
    """α in (I + α H): 2/ρ for relu (FᵀF on Δ = v − w counts twice), 1/ρ for gated_relu."""
    return (2.0 if activation == "relu" else 1.0) / rho


@functools.partial(jax.jit, static_argnames=("kind", "rank"))
def build_preconditioner(problem: pb.Problem, key: jax.Array, kind: str,
                         rank: int) -> Preconditioner:
    """The u-step's preconditioner (independent of ρ, β and the targets, so a β path reuses
    it): the Kronecker approximation of H, or a rank-``rank`` Nyström sketch (``key``)."""
    if kind == "kronecker":
        return kronecker.kronecker(problem)
    size = problem.dim * problem.num_patterns

    def matmat(omega):
        return pattern_gram(problem, omega.reshape(problem.dim, problem.num_patterns, -1)
                            ).reshape(size, -1)

    return nystrom.nystrom(matmat, size, rank, key, problem.dtype)


def apply_preconditioner(precond: Preconditioner, r: jax.Array, alpha) -> jax.Array:
    """P⁻¹ r for the system (I + αH) z = r, r: [d, P, k]."""
    if isinstance(precond, kronecker.KroneckerApprox):
        return kronecker.apply_inverse_preconditioner(precond, r, alpha)
    flat = nystrom.apply_inverse_preconditioner(precond, r.reshape(-1, r.shape[-1]), alpha)
    return flat.reshape(r.shape)


def solve_u(problem: pb.Problem, precond: Preconditioner, rhs: jax.Array, state: AdmmState,
            forcing: jax.Array, settings: Settings):
    """Solves (I + ρ⁻¹FᵀF) u = rhs, warm-started at the last u.

    PCG's starting residual b − A Δ₀ needs a product with A = I + αH, as much as a PCG
    iteration, and near convergence an ADMM iteration runs only a few of those. The last
    u-step's PCG knows A Δ₀ already (b_prev minus its final residual, ``state.u_image``), so
    it is computed afresh only every ``IMAGE_REFRESH``-th iteration, which bounds how far the
    recursion's rounding can drift, and after ρ changed (A with it).

    Returns (u, PCG iterations, A Δ of the new solution Δ).
    """
    signs = pb.half_signs(rhs.shape[0], rhs.dtype)[:, None, None, None]
    halves = rhs.shape[0]
    combined = jnp.sum(signs * rhs, axis=0)               # b_v − b_w (relu) or b (gated)
    alpha = _system_weight(settings.activation, state.rho)

    def matvec(z):
        return z + alpha * pattern_gram(problem, z)

    def precondition(r):
        return apply_preconditioner(precond, r, alpha)

    tol = forcing * jnp.sqrt(jnp.sum(combined**2, axis=(0, 1)))
    start = jnp.sum(signs * state.u, axis=0)
    refresh = (state.image_rho != state.rho) | (state.iteration % IMAGE_REFRESH == 0)
    start_image = jax.lax.cond(refresh, matvec, lambda _: state.u_image, start)
    result = pcg(matvec, combined, start, precondition, tol, settings.pcg_max_iters,
                 start_residual=combined - start_image)
    if halves == 2:
        total = rhs[0] + rhs[1]                            # (I) Σ = b_v + b_w
        u = jnp.stack([0.5 * (total + result.x), 0.5 * (total - result.x)])
    else:
        u = result.x[None]
    return u, result.iterations, combined - result.residual


# ----------------------------------------------------------------------------- the v-step


def prox(problem: pb.Problem, z: jax.Array, threshold: jax.Array,
         active: Optional[cone.ActiveSet], max_iters: int):
    """prox of threshold·‖·‖_{2,1} + I_K: shrinks the cone projection of every group (each
    projection runs at most ``max_iters`` Lawson–Hanson steps).

    Returns (v [H, d, P, C], updated active sets, projection iterations, their scans in groups
    (``cone.Projection.scanned``), whether every projection completed).
    """
    rows = cone.groups(z)
    iterations, scanned, complete = jnp.asarray(0), jnp.asarray(0), jnp.asarray(True)
    if active is not None:
        projection = cone.project_groups(problem, rows, z.shape, active, max_iters,
                                         zero_below=threshold)
        rows, active, iterations = projection.point, projection.active, projection.iterations
        scanned = projection.scanned
        at_limit = active.used.shape[1] >= active_set_limit(problem)
        # a group out of room at the slot limit is accepted (no more room to give); one stopped
        # by the step cap is not complete
        complete = jnp.all(projection.complete | (projection.out_of_room & at_limit))
    norms = jnp.sqrt(jnp.sum(rows**2, axis=1, keepdims=True))
    shrunk = rows * (1.0 - threshold / jnp.maximum(norms, threshold))
    return cone.ungroup(shrunk, z.shape), active, iterations, scanned, complete


# ----------------------------------------------------------------------------- one ADMM step


def _norm(array: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(array**2))


def _forcing(state: AdmmState) -> jax.Array:
    """PCG's relative tolerance η_k (module docstring). ADMM's progress is measured by the
    geometric mean of its two residuals: early on the dual residual can sit 15–25× below the
    primal one (measured on Fashion-MNIST features), and tying η to the smaller asked PCG for
    accuracy that the next v-step discards (the paper's 5-iteration CRONOS-AM solve there ran
    73 PCG iterations instead of 44, to the same objective within 0.03%; the solver
    benchmark's relu and gated solves took 0–8% more ADMM iterations and 6–46% fewer PCG
    iterations)."""
    eps = jnp.finfo(state.u.dtype).eps
    progress = jnp.sqrt(state.primal_residual * state.dual_residual)
    eta = jnp.minimum(0.1 * (1.0 + state.iteration) ** -1.2, 0.1 * progress)
    return jnp.maximum(eta, 10 * eps)


def admm_step(problem: pb.Problem, precond: Preconditioner, ft_y: jax.Array, state: AdmmState,
              settings: Settings) -> AdmmState:
    """One CRONOS iteration (pure; jits). ``ft_y`` is FᵀY: [H, d, P, C]."""
    rho = state.rho
    rhs = ft_y / rho + state.v - state.lam
    u, pcg_iters, u_image = solve_u(problem, precond, rhs, state, _forcing(state), settings)
    relaxed = RELAXATION * u + (1 - RELAXATION) * state.v
    point, memory = relaxed + state.lam, state.memory               # T(z) at z = v + λ
    if memory is not None:
        point, memory = anderson.accelerate(memory, state.v + state.lam, point, rho,
                                            fresh=(state.iteration == 0) | ~state.projections_complete)
    v, active, projection_iters, scanned, complete = prox(problem, point, problem.beta / rho,
                                                          state.active, settings.projection_iters)
    lam = point - v

    tiny = jnp.finfo(u.dtype).tiny
    primal = _norm(u - v) / jnp.maximum(jnp.maximum(_norm(u), _norm(v)), tiny)
    dual = rho * _norm(v - state.v) / jnp.maximum(jnp.maximum(rho * _norm(lam), _norm(ft_y)), tiny)
    state = state._replace(u=u, v=v, lam=lam, active=active, iteration=state.iteration + 1,
                           pcg_iterations=state.pcg_iterations + pcg_iters,
                           projection_iterations=state.projection_iterations + projection_iters,
                           scanned_groups=state.scanned_groups + scanned,
                           primal_residual=primal, dual_residual=dual,
                           projections_complete=complete, u_image=u_image, image_rho=rho,
                           memory=memory)
    return early_rho(state) if settings.early_rho else state


def early_rho(state: AdmmState) -> AdmmState:
    """The relu program's early phase, with the default ρ: while the cone projections fill
    their active sets, u (which ignores the cones) stays far from v = Π(u + λ), the primal
    residual sits orders of magnitude above the dual one, and an iteration costs hundreds of
    Lawson–Hanson steps (n = 20,000: 65 iterations, 8,900 steps). In the first
    ``EARLY_ITERS`` iterations after a (re)start ρ doubles after every iteration whose primal
    residual exceeds ``EARLY_RATIO`` × the dual one, up to ``EARLY_GROWTH`` × its start,
    which pulls u towards the cones; at iteration ``EARLY_ITERS`` + 1 it returns to its start,
    whose tail converges fastest. The scaled dual λ = θ/ρ is rescaled with ρ (θ unchanged).
    Where the residuals stay within ``EARLY_RATIO`` of each other (n ≤ 4000 in our
    benchmarks) nothing changes."""
    grow = ((state.iteration <= EARLY_ITERS) & (2 * state.rho_growth <= EARLY_GROWTH)
            & (state.primal_residual > EARLY_RATIO * state.dual_residual))
    factor = jnp.where(grow, 2.0, 1.0)
    factor = jnp.where(state.iteration == EARLY_ITERS + 1, 1.0 / state.rho_growth, factor)
    factor = factor.astype(state.rho.dtype)
    return state._replace(rho=state.rho * factor, lam=state.lam / factor,
                          rho_growth=state.rho_growth * factor)


@jax.jit
def converged(state: AdmmState, tol) -> jax.Array:
    """Certified (duality gap ≤ tol) or both relative residuals ≤ tol · RESIDUAL_FRACTION in
    the last ``RESIDUAL_RUN`` iterations (module docstring), with exact projections (v
    feasible)."""
    return state.projections_complete & ((state.gap <= tol)
                                         | (state.small_residual_run >= RESIDUAL_RUN))


def _count_small_residuals(state: AdmmState, tol) -> AdmmState:
    """The state with its run of iterations whose residuals are both ≤ tol · RESIDUAL_FRACTION
    extended by the last one, or ended by it."""
    small = jnp.maximum(state.primal_residual, state.dual_residual) <= tol * RESIDUAL_FRACTION
    return state._replace(small_residual_run=jnp.where(small, state.small_residual_run + 1, 0))


@jax.jit
def finite(state: AdmmState) -> jax.Array:
    """Whether both residuals are finite. Jitted, like ``converged``: the loop between chunks
    calls both, and run eagerly each of their operations would compile a program of its own
    (about 25 ms each on 2 CPU cores)."""
    return jnp.isfinite(state.primal_residual) & jnp.isfinite(state.dual_residual)


@functools.partial(jax.jit, static_argnames=("settings",))
def run_admm(problem: pb.Problem, precond: Preconditioner, state: AdmmState, tol, stop_at,
             settings: Settings) -> AdmmState:
    """Iterates ``admm_step`` until convergence, a non-finite residual, ``stop_at``, or a
    projection that needs more active-set slots than the state has (the caller grows them)."""
    ft_y = pb.targets_correlation(problem, pb.halves(settings.activation))
    can_grow = state.active is not None and state.active.used.shape[1] < active_set_limit(problem)

    def cond(st):
        room = ~_slots_full(st) if can_grow else True
        return (st.iteration < stop_at) & ~converged(st, tol) & finite(st) & room

    def body(st):
        st = _count_small_residuals(admm_step(problem, precond, ft_y, st, settings), tol)
        # also due where a run of small residuals begins (at most every GAP_FIRST iterations),
        # as it may already be certified, and where it completes: the solution then reports
        # the gap of its own iterate without another compiled program (``finish``)
        run = st.small_residual_run
        begins = (run == 1) & (st.iteration >= st.gap_at + GAP_FIRST)
        due = ((st.iteration >= jnp.maximum(st.gap_at, 0) + st.gap_every)
               | (st.projections_complete & (begins | (run == RESIDUAL_RUN))))
        return jax.lax.cond(due, lambda st: with_gap(problem, st, tol), lambda st: st, st)

    return jax.lax.while_loop(cond, body, state)


def with_gap(problem: pb.Problem, state: AdmmState, tol=None) -> AdmmState:
    """The state with the duality gap of its iterate v, and when to check it next: without
    ``tol`` (a warm start) in ``GAP_FIRST`` iterations; with it at twice the last interval
    after a gap above ``FAR_GAP`` · tol, otherwise at the same one (at most ``GAP_EVERY``):
    a warm start near its optimum is checked every ``GAP_FIRST`` iterations."""
    gap, gap_active = certificate.duality_gap(problem, state.v, state.u, state.active,
                                              _gap_projection_iters(state))
    needs_room = jnp.asarray(False) if gap_active is None else cone.any_full(gap_active)
    if tol is None:                                                   # a warm start
        every = jnp.asarray(GAP_FIRST)
    else:
        every = jnp.where(gap > FAR_GAP * tol, 2 * state.gap_every,
                          jnp.minimum(state.gap_every, GAP_EVERY))
    return state._replace(gap=gap, gap_needs_room=needs_room, gap_at=state.iteration,
                          gap_every=every)


_with_gap = jax.jit(with_gap)


def certify(problem: pb.Problem, state: AdmmState) -> AdmmState:
    """``with_gap`` for a warm start, growing the active sets until its projections fit: ADMM
    then stops before its first iteration when the start is already certified within ``tol``
    of the optimum (e.g. zero for β ≥ β̄), and checks again ``GAP_FIRST`` iterations later."""
    while True:
        state = _with_gap(problem, state)
        grown = _grow_active_sets(state, problem)
        if grown is state:
            return state
        state = grown


@functools.partial(jax.jit, static_argnames=("activation",))
def default_rho(problem: pb.Problem, activation: str) -> jax.Array:
    """ρ = ½ √(β / β̄), clipped to [1e-3, 1], with β̄ = max_g ‖A_gᵀY‖ (the β that zeroes the
    gated solution; an upper bound for relu). Measured on normalised data: strong regularisation wants a large ρ (≈ 0.1–1),
    weak regularisation a small one (≈ 1e-2); residual balancing picked the wrong end."""
    ceiling = certificate.beta_max(problem, "gated_relu")    # ≥ the relu β̄, without projections
    ratio = problem.beta / jnp.maximum(ceiling, jnp.finfo(problem.dtype).tiny)
    return jnp.clip(RHO_SCALE * jnp.sqrt(ratio), 1e-3, 1.0)


def initial_rho(problem: pb.Problem, config: CronosConfig) -> jax.Array:
    """ρ of the config, or ``default_rho`` when it is None."""
    rho = default_rho(problem, config.activation) if config.rho is None else config.rho
    return jnp.asarray(rho, problem.dtype)


def unknown_residual(dtype) -> jax.Array:
    """The residual and gap of a state not yet iterated: the largest float."""
    return jnp.asarray(jnp.finfo(dtype).max, dtype)


@functools.partial(jax.jit, static_argnames=("max_iters",))
def _warm_start_dual(problem: pb.Problem, weights: jax.Array, active, max_iters: int) -> jax.Array:
    """ρλ of a warm start at ``weights`` (``init_state``): s Fᵀ(Y − F weights). Compiled, as
    its projections' loops would otherwise compile anew at every call."""
    correlations = pb.residual_terms(problem, weights)[0]
    return certificate.feasible_scale(problem, correlations, active, max_iters)[0] * correlations


def init_state(problem: pb.Problem, config: CronosConfig,
               init: Optional[ConvexParams] = None) -> AdmmState:
    """Iterates u = v = ``init`` (zero by default), ρ from the config or ``default_rho``,
    residuals at the largest float.

    A warm start's dual is λ = s Fᵀ(Y − Fv)/ρ, with s ≤ 1 per output the largest scale that
    makes the residual Y − Fv dual feasible (``certificate.feasible_scale``). Near the optimum
    s = 1, and the u-step is then a fixed point at v (λ = 0 would let a warm start look
    converged after one iteration). Far from it, the first v-step, prox(v + λ), would be a
    proximal-gradient step of length 1/ρ, far beyond the stable 1/‖FᵀF‖ (‖FᵀF‖ ≤ P, ρ ≪ 1):
    from the head of the previous CRONOS-AM round, on the features its backbone steps had
    changed, five iterations ended 400× above their start's objective. The scale s keeps
    that step's move to at most β/ρ per group."""
    dim = problem.dim
    patterns, outputs = problem.num_patterns, problem.num_outputs
    halves = pb.halves(config.activation)
    dtype = problem.dtype
    weights = jnp.zeros((halves, dim, patterns, outputs), dtype)
    rho = initial_rho(problem, config)
    lam = jnp.zeros_like(weights)
    active, slots = None, min(FIRST_ACTIVE, active_set_limit(problem))
    if config.activation == "relu":
        active = cone.empty_active_set(halves * patterns * outputs, slots, dtype)
    if init is not None:
        weights = _normalised_weights(problem, init, weights.shape)
        lam = _warm_start_dual(problem, weights, active, cone.cold_start_iterations(slots)) / rho
    unknown = unknown_residual(dtype)
    return AdmmState(u=weights, v=weights, lam=lam, active=active, gap_needs_room=jnp.asarray(False),
                     gap=unknown, gap_at=jnp.asarray(-1), gap_every=jnp.asarray(GAP_EVERY), rho=rho,
                     rho_growth=jnp.ones_like(rho),
                     iteration=jnp.asarray(0), pcg_iterations=jnp.asarray(0),
                     projection_iterations=jnp.asarray(0), scanned_groups=jnp.asarray(0),
                     primal_residual=unknown, dual_residual=unknown,
                     projections_complete=jnp.asarray(True),
                     u_image=jnp.zeros_like(weights[0]), image_rho=jnp.zeros_like(rho),
                     memory=anderson.empty_memory(weights.size, config.anderson, dtype)
                     if config.anderson else None,
                     small_residual_run=jnp.asarray(0))


def _normalised_weights(problem: pb.Problem, init: ConvexParams, shape) -> jax.Array:
    """A solution's weights on the normalised program's scale and layout: [H, d, P, C]."""
    groups = [init.v] if init.w is None else [init.v, init.w]
    weights = jnp.moveaxis(jnp.stack([jnp.asarray(g, problem.dtype) for g in groups]), 2, 1)
    if weights.shape != shape:
        raise ValueError(f"init has weights of shape {weights.shape[1:]} per half "
                         f"({len(groups)} halves); this problem needs {shape}")
    return weights * problem.scale


# ----------------------------------------------------------------------------- solve


def prepare(x, y, config: CronosConfig, *, key: jax.Array, gates=None, mesh: Optional[Mesh] = None,
            block_rows: Optional[int] = None):
    """Checks inputs and builds the normalised problem and its preconditioner.

    The rows go where ``solve`` is asked to put them (see ``rows.py``): on the default device;
    sharded over ``mesh`` (over several processes when it spans them, each giving its own rows),
    or over the mesh of an ``x`` already sharded by rows; or, with ``block_rows``, left in host
    memory and streamed.

    Returns:
        (problem, preconditioner, gates [d, P]).
    """
    config.check()
    x = pb.check_features(x)
    gather = gather_processes if holds_process_rows(x, mesh) else None
    targets, _ = pb.encode_targets(y, config.task, x.shape[0], gather=gather)
    dtype = jnp.dtype(config.dtype)
    dim = x.shape[1] + int(config.intercept)
    gate_key, sketch_key = jax.random.split(key)
    if gates is None:
        gates = pb.sample_gates(gate_key, dim, config.patterns, dtype)
    else:
        gates = jnp.asarray(pb.check_gates(gates, dim, config.patterns), dtype)
    targets = targets.astype(dtype)
    one, beta = jnp.ones((), dtype), jnp.asarray(config.beta, dtype)
    if block_rows is None:
        x, targets = _place(x, targets, dtype, config.intercept, mesh)
        problem = pb.Problem(x, pb.activation_patterns(x, gates), targets, one, beta)
    else:
        if mesh is not None:
            raise ValueError("give mesh (rows sharded over devices) or block_rows (rows streamed "
                             "from host memory), not both")
        stream = _stream(x, targets, dtype, config.intercept, block_rows)
        stream = stream.with_masks(lambda block: pb.activation_patterns(block, gates))
        problem = pb.Problem(None, None, None, one, beta, stream)
    problem = pb.with_row_norms(pb.normalise(pb.with_transposed_rows(problem)))
    precond = build_preconditioner(problem, sketch_key, config.preconditioner, config.rank)
    return problem, precond, gates


def _place(x, targets: np.ndarray, dtype, intercept: bool,
           mesh: Optional[Mesh]) -> tuple[jax.Array, jax.Array]:
    """Features [n, d] (with the intercept column) and targets [n, C] on the default device, or
    with their rows sharded over ``mesh`` (by default the mesh ``x`` is sharded over, if any;
    ``x`` and ``targets`` are this process's rows when ``mesh`` spans several processes); host
    features are cast on the host, so each device receives only its rows."""
    x = with_intercept(np.asarray(x, dtype) if isinstance(x, np.ndarray) else jnp.asarray(x, dtype),
                       intercept)
    if holds_process_rows(x, mesh):
        return tuple(place_process_rows((x, targets), auto_mesh(mesh)))
    mesh = mesh_of(x) if mesh is None else mesh
    if mesh is None:
        return jnp.asarray(x), jnp.asarray(targets)
    mesh = auto_mesh(mesh)
    return place_rows(x, mesh), place_rows(targets, mesh)


def _stream(x, targets: np.ndarray, dtype, intercept: bool, block_rows) -> RowStream:
    """Rows left in host memory, read in equal blocks of at most ``block_rows`` rows."""
    if not isinstance(block_rows, int) or block_rows <= 0:
        raise ValueError(f"block_rows must be a positive integer; got {block_rows!r}")
    blocks = -(-x.shape[0] // block_rows)
    return RowStream(x, targets, -(-x.shape[0] // blocks), intercept, dtype)


def iterate(problem: pb.Problem, precond: Preconditioner, state: AdmmState, config: CronosConfig,
            callback: Optional[Callable[[AdmmState], None]] = None) -> AdmmState:
    """Runs ADMM from ``state`` in chunks of ``CHUNK`` iterations, calling ``callback`` after each.

    Stops at convergence, at ``config.max_iters`` or on a non-finite iterate; in the last
    case the last finite state is returned with infinite residuals.
    """
    settings = settings_of(config)
    tol = jnp.asarray(config.tol, problem.dtype)
    while True:
        stop_at = min(int(state.iteration) + CHUNK, config.max_iters)
        new_state = run_admm(problem, precond, state, tol, stop_at, settings)
        if not bool(finite(new_state)):
            inf = jnp.asarray(jnp.inf, problem.dtype)
            return state._replace(primal_residual=inf, dual_residual=inf)
        state = _grow_active_sets(new_state, problem)
        if callback is not None:
            callback(state)
        if bool(converged(state, tol)) or int(state.iteration) >= config.max_iters:
            return state


def _slots_full(state: AdmmState) -> jax.Array:
    """Whether some group's active set (prox or duality gap) has used all its slots."""
    return cone.any_full(state.active) | state.gap_needs_room


def _gap_projection_iters(state: AdmmState) -> int:
    """Lawson–Hanson steps per projection of a duality-gap check, at most:
    ``GAP_PROJECTION_ITERS``, the work of two iterations' prox projections (or a cold start's,
    if that is less).

    The gap's projections start from the prox's active sets. Near the optimum these are close to
    their own, and the projections end within a few steps: 17 in all over the 3 checks of the
    relu benchmark solve at n = 20,000. Far from it they may need many more. The final gap of a
    10-class relu head stopped after 4 iterations took 3,525 steps and 2 minutes, against
    4 s for the iterations. An unfinished projection still gives a valid, looser gap, and there
    the gap is loose anyway: 0.9999 with or without the cap."""
    slots = 0 if state.active is None else state.active.used.shape[1]
    return min(cone.cold_start_iterations(slots), GAP_PROJECTION_ITERS)


def active_set_limit(problem: pb.Problem) -> int:
    """Active-set slots a group can get: an active set has at most d independent rows."""
    return min(problem.dim, problem.num_rows, MAX_ACTIVE)


def _grow_active_sets(state: AdmmState, problem: pb.Problem) -> AdmmState:
    """Doubles the active-set slots when a group has filled them (a Lawson–Hanson step costs
    O(k²) per group, so slots are not given before they are needed).

    Each slot count is another compiled ADMM program (about 3 s on 2 CPU cores), which is why
    the slots start at ``FIRST_ACTIVE`` = 256 rather than a handful: the active sets of the
    relu benchmark at d = 256 fill within a few iterations, so it compiles one program instead
    of three from 64 slots (n = 400: a first solve from a fresh process took 4.3 s instead of
    12.2 s; once compiled, solves ran 0.9–1.02× the time), and at d = 768 two instead of four
    (n = 4000: 37 s instead of 47 s). Larger steps cost more only where the active sets stay
    small: d = 768 with β at 0.3 β̄, once compiled, 4.9 s instead of 4.5 s
    (docs/benchmarks.md)."""
    if state.active is None:
        return state
    slots = state.active.used.shape[1]
    if not bool(_slots_full(state)) or slots >= active_set_limit(problem):
        return state
    grown = min(2 * slots, active_set_limit(problem))
    return state._replace(active=cone.pad(state.active, grown), gap_needs_room=jnp.asarray(False))


def finish(problem: pb.Problem, state: AdmmState, gates: jax.Array, config: CronosConfig,
           seconds: float) -> Solution:
    """Maps the group-sparse iterate v back to the original scale, with its statistics."""
    loss, penalty, violation = (float(t) for t in certificate.objective_terms(problem, state.v))
    if int(state.gap_at) == int(state.iteration) and not bool(state.gap_needs_room):
        gap = float(state.gap)                                       # the gap of this v
    else:
        gap = float(certificate.final_duality_gap(problem, state.v, state.u, state.active,
                                                  _gap_projection_iters(state)))
    if not (bool(finite(state)) and np.isfinite(loss + penalty)):
        status = SolveStatus.NONFINITE
    elif bool(converged(state._replace(gap=jnp.asarray(gap, problem.dtype)),
                        jnp.asarray(config.tol, problem.dtype))):
        status = SolveStatus.CONVERGED
    else:
        status = SolveStatus.MAX_ITERATIONS
    halves = _original_scale(state.v, problem.scale)
    params = ConvexParams(gates=gates, v=halves[0], w=halves[1] if len(halves) > 1 else None,
                          intercept=config.intercept)
    stats = Stats(objective=loss + penalty, loss=loss, penalty=penalty,
                  constraint_violation=violation, duality_gap=gap,
                  primal_residual=float(state.primal_residual),
                  dual_residual=float(state.dual_residual),
                  iterations=int(state.iteration), pcg_iterations=int(state.pcg_iterations),
                  projection_iterations=int(state.projection_iterations),
                  scanned_groups=int(state.scanned_groups),
                  rho=float(state.rho), seconds=seconds)
    return Solution(params, stats, status)


@jax.jit
def _original_scale(weights: jax.Array, scale: jax.Array) -> tuple[jax.Array, ...]:
    """The halves [P, d, C] of the normalised program's weights [H, d, P, C] on the original
    scale (one compiled program, not one per operation)."""
    return tuple(jnp.moveaxis(weights / scale, 2, 1))


@full_precision
def solve(x, y, config: CronosConfig = CronosConfig(), *, key: jax.Array, gates=None,
          init: Optional[ConvexParams] = None,
          callback: Optional[Callable[[AdmmState], None]] = None,
          throw: bool = False, mesh: Optional[Mesh] = None,
          block_rows: Optional[int] = None) -> Solution:
    """Solves the convex two-layer ReLU program of DESIGN.md with CRONOS.

    Args:
        x: [n, d] features (finite): a host array, a memory-mapped ``.npy``
            (``np.load(path, mmap_mode="r")``) or a device array, possibly sharded by rows.
        y: [n] class labels 0..C−1 (classification) or [n] / [n, C] values (regression).
        config: solver settings.
        key: PRNG key for the gates (and the Nyström sketch, if chosen).
        gates: optional [d, P] gates to use instead of sampling (d + 1 rows with intercept).
        init: a solution to start ADMM from (a warm start: same activation, d, P and C),
            e.g. the previous round's head in CRONOS-AM; default zero.
        callback: called with the ``AdmmState`` every ``CHUNK`` iterations (progress bars).
        throw: raise RuntimeError unless the status is CONVERGED.
        mesh: a one-axis device mesh (``cronos.row_mesh``): the rows of X, Y and the masks are
            sharded over it (zero rows pad n to a multiple of its size) and every operator
            reduces [d, P]-sized partial results across devices; an ``x`` already sharded by
            rows brings its own mesh. Same result as on one device, up to rounding. Over a mesh
            of several processes' devices (``cronos.global_row_mesh``, after
            ``jax.distributed.initialize``) every process calls ``solve`` with its own rows of x
            and y (X is their concatenation in process order) and gets the same Solution.
        block_rows: stream X from host memory in blocks of at most this many rows (evened out
            over the blocks): device memory holds a few blocks and [d, P]-sized arrays, never X.
            Same result, up to rounding.

    Every product runs in true float32 (or float64), whatever the caller's default matmul
    precision (TensorFloat-32 on recent GPUs; see ``precision.py``).

    Returns:
        ``Solution(params, stats, status)``; params hold the group-sparse iterate v.

    Raises:
        ValueError: naming the argument when an input or setting is invalid.
    """
    start = time.perf_counter()
    problem, precond, gates = prepare(x, y, config, key=key, gates=gates, mesh=mesh,
                                      block_rows=block_rows)
    state = init_state(problem, config, init)
    if init is not None:
        state = certify(problem, state)
    state = iterate(problem, precond, state, config, callback)
    jax.block_until_ready(state)
    solution = finish(problem, state, gates, config, time.perf_counter() - start)
    if throw and solution.status != SolveStatus.CONVERGED:
        raise RuntimeError(f"CRONOS stopped with status {solution.status.name}: {solution.stats}")
    return solution
