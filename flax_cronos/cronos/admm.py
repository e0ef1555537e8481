"""CRONOS: ADMM with Nyström-preconditioned CG for the convex two-layer ReLU program.

Splitting (cronos.md §2.1), on the normalised data of ``problem.py``:

    min ½‖Fu − Y‖² + β‖v‖_{2,1} + I_{≥0}(s)   s.t.  u = v,  Gu = s.

Scaled ADMM with penalty ρ and scaled duals λ (for u − v) and ν (for Gu − s):

    u ← solve (I + ρ⁻¹FᵀF + GᵀG) u = ρ⁻¹FᵀY + v − λ + Gᵀ(s − ν)
    v ← group soft-threshold(û + λ, β/ρ)     one group per (half, pattern, class), over d
    s ← max(Ĝu + ν, 0)
    λ ← λ + û − v,    ν ← ν + Ĝu − s

with over-relaxation û = αu + (1 − α)v_prev, Ĝu = αGu + (1 − α)s_prev, α = 1.6.

The u-system splits exactly. FᵀF only sees Δ = v − w, and GᵀG = I ⊗ K with K = X̂ᵀX̂, so with
Σ = v + w and H the pattern Gram operator (H z = Σ_j Xᵀ D_i D_j X z_j):

    (I + K) Σ = b_v + b_w                 closed form from eig(K)
    (I + K + (2/ρ) H) Δ = b_v − b_w       whitened by L = (I + K)^{1/2}:
    (I + (2/ρ) H̃) z = L⁻¹(b_v − b_w),    Δ = L⁻¹z,  H̃ = L⁻¹ H L⁻¹,

and ‖H̃‖ ≤ P whatever the data, so the condition number is at most 1 + 2P/ρ. PCG solves the
z-system with a Nyström sketch of H̃, which does not depend on ρ: ρ adapts at no cost.
gated_relu has no G: its system is (I + ρ⁻¹H) u = ρ⁻¹FᵀY + v − λ (L = I).

Inexact solves: PCG stops at ‖r‖ ≤ η_k ‖rhs‖, η_k = min(0.1 (1+k)^{-1.2}, 0.1 · ADMM residual)
(a summable forcing sequence, tightened as ADMM converges), warm-started from the last z.

Stopping (Boyd et al. 2011, §3.3): the primal residual ‖(u − v, Gu − s)‖ relative to the
iterates and the dual residual ρ‖(Δv, Δs)‖ relative to ρ‖(λ, ν)‖ both fall below ``tol``.
Residual balancing (OSQP's rule) when ρ is not fixed: every ``ADAPT_EVERY`` iterations
ρ ← ρ·√(primal / dual) if that factor exceeds 5 either way; the scaled duals follow.
"""

import dataclasses
import enum
import functools
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from flax_cronos.cronos import problem as pb
from flax_cronos.cronos.network import ConvexParams, with_intercept
from flax_cronos.cronos.nystrom import NystromApprox, apply_inverse_preconditioner, nystrom
from flax_cronos.cronos.pcg import pcg

ADAPT_EVERY = 10
ADAPT_FACTOR = 5.0
RHO_RANGE = (1e-6, 1e6)
RELAXATION = 1.6   # over-relaxation α (Boyd et al. 2011, §3.4.3)
CHUNK = 50          # ADMM iterations per device call between progress reports


@dataclasses.dataclass(frozen=True)
class CronosConfig:
    """Settings of one convex solve.

    Attributes:
        patterns: P, the number of sampled gates (relu has 2P neurons per output).
        beta: β ≥ 0, the group-lasso weight (the loss has no 1/n factor).
        activation: "relu" (cone-constrained, the paper's) or "gated_relu".
        task: "classification" (labels 0..C−1) or "regression".
        intercept: append a constant-1 feature (its weights are penalised like the others).
        rho: None adapts ρ by residual balancing from 1; a number fixes ρ. ρ refers to the
            normalised program (features scaled to ‖X‖₂ = 1).
        rank: Nyström sketch rank.
        max_iters: ADMM iteration cap.
        tol: relative primal and dual residual tolerance.
        pcg_max_iters: PCG iteration cap per ADMM iteration.
        dtype: "float32" or "float64" (float64 needs ``jax_enable_x64``).
    """

    patterns: int = 16
    beta: float = 1e-3
    activation: str = "relu"
    task: str = "classification"
    intercept: bool = False
    rho: Optional[float] = None
    rank: int = 10
    max_iters: int = 5000
    tol: float = 1e-4
    pcg_max_iters: int = 50
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
        if self.rho is not None and not (np.isfinite(self.rho) and self.rho > 0):
            raise ValueError(f"rho must be a positive number or None; got {self.rho!r}")
        for name in ("rank", "max_iters", "pcg_max_iters"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
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
    """Diagnostics of a solve (Python scalars). Objective = loss + penalty, as in DESIGN.md."""

    objective: float
    loss: float
    penalty: float
    constraint_violation: float
    primal_residual: float
    dual_residual: float
    iterations: int
    pcg_iterations: int
    rho: float
    seconds: float


class Solution(NamedTuple):
    params: ConvexParams
    stats: Stats
    status: SolveStatus


class AdmmState(NamedTuple):
    """ADMM iterates on the normalised program (a pytree).

    u, v, lam: [H, d, P, C]; s, nu: [H, n, P, C] (None for gated_relu); z: [d, P, C], the
    whitened PCG unknown kept for warm starts; residuals are relative (see module docstring).
    """

    u: jax.Array
    v: jax.Array
    lam: jax.Array
    s: Optional[jax.Array]
    nu: Optional[jax.Array]
    z: jax.Array
    rho: jax.Array
    iteration: jax.Array
    pcg_iterations: jax.Array
    primal_residual: jax.Array
    dual_residual: jax.Array


class Settings(NamedTuple):
    """The static part of a config: what changes the compiled step."""

    activation: str
    adapt_rho: bool
    pcg_max_iters: int


def settings_of(config: CronosConfig) -> Settings:
    return Settings(config.activation, config.rho is None, config.pcg_max_iters)


# ----------------------------------------------------------------------------- the u-system


def _whiten(problem: pb.Problem, z: jax.Array, activation: str) -> jax.Array:
    """L⁻¹ z with L = (I + K)^{1/2} for relu; the identity for gated_relu."""
    if activation == "gated_relu":
        return z
    return pb.gram_function(problem, z, lambda k: jax.lax.rsqrt(1.0 + k))


def whitened_pattern_gram(problem: pb.Problem, z: jax.Array, activation: str) -> jax.Array:
    """H̃ z = L⁻¹ H L⁻¹ z: [d, P, k] → [d, P, k]."""
    inner = _whiten(problem, z, activation)
    return _whiten(problem, pb.pattern_sum_t(problem, pb.pattern_sum(problem, inner)), activation)


def _system_weight(activation: str, rho: jax.Array) -> jax.Array:
    """α in (I + α H̃): 2/ρ for relu (Δ = v − w doubles FᵀF), 1/ρ for gated_relu."""
    return (2.0 if activation == "relu" else 1.0) / rho


@functools.partial(jax.jit, static_argnames=("activation", "rank"))
def sketch_preconditioner(problem: pb.Problem, key: jax.Array, activation: str,
                          rank: int) -> NystromApprox:
    """Nyström sketch of H̃ (independent of ρ and of the targets)."""
    dim, patterns = problem.x.shape[1], problem.masks.shape[1]
    size = dim * patterns

    def matmat(omega):
        block = omega.reshape(dim, patterns, -1)
        return whitened_pattern_gram(problem, block, activation).reshape(size, -1)

    return nystrom(matmat, size, rank, key, problem.x.dtype)


def solve_u(problem: pb.Problem, precond: NystromApprox, rhs: jax.Array, z0: jax.Array,
            rho: jax.Array, forcing: jax.Array, settings: Settings):
    """Solves (I + ρ⁻¹FᵀF + GᵀG) u = rhs (no G for gated_relu). Returns (u, z, PCG iterations)."""
    activation = settings.activation
    if activation == "relu":
        total = pb.gram_function(problem, rhs[0] + rhs[1], lambda k: 1.0 / (1.0 + k))
        white_rhs = _whiten(problem, rhs[0] - rhs[1], activation)
    else:
        white_rhs = rhs[0]
    alpha = _system_weight(activation, rho)
    shape = white_rhs.shape

    def matvec(z):
        return z + alpha * whitened_pattern_gram(problem, z, activation)

    def precondition(r):
        flat = apply_inverse_preconditioner(precond, r.reshape(-1, shape[-1]), alpha)
        return flat.reshape(shape)

    tol = forcing * jnp.sqrt(jnp.sum(white_rhs**2, axis=(0, 1)))
    result = pcg(matvec, white_rhs, z0, precondition, tol, settings.pcg_max_iters)
    if activation == "relu":
        delta = _whiten(problem, result.x, activation)
        u = jnp.stack([0.5 * (total + delta), 0.5 * (total - delta)])
    else:
        u = result.x[None]
    return u, result.x, result.iterations


# ----------------------------------------------------------------------------- one ADMM step


def group_soft_threshold(z: jax.Array, threshold: jax.Array) -> jax.Array:
    """prox of threshold·Σ‖z_g‖₂ with groups along axis 1: z_g (1 − t/max(t, ‖z_g‖))."""
    norms = jnp.sqrt(jnp.sum(z**2, axis=1, keepdims=True))
    return z * (1.0 - threshold / jnp.maximum(norms, threshold))


def _norm(*arrays) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(a**2) for a in arrays if a is not None))


def _forcing(state: AdmmState) -> jax.Array:
    eps = jnp.finfo(state.u.dtype).eps
    progress = jnp.minimum(state.primal_residual, state.dual_residual)
    eta = jnp.minimum(0.1 * (1.0 + state.iteration) ** -1.2, 0.1 * progress)
    return jnp.maximum(eta, 10 * eps)


def admm_step(problem: pb.Problem, precond: NystromApprox, ft_y: jax.Array, state: AdmmState,
              settings: Settings) -> AdmmState:
    """One CRONOS iteration (pure; jits). ``ft_y`` is FᵀY: [H, d, P, C]."""
    relu = settings.activation == "relu"
    rho = state.rho
    rhs = ft_y / rho + state.v - state.lam
    if relu:
        rhs = rhs + pb.apply_Gt(problem, state.s - state.nu)
    u, z, pcg_iters = solve_u(problem, precond, rhs, state.z, rho, _forcing(state), settings)

    relaxed_u = RELAXATION * u + (1 - RELAXATION) * state.v
    v = group_soft_threshold(relaxed_u + state.lam, problem.beta / rho)
    lam = state.lam + relaxed_u - v
    s = nu = gu = None
    if relu:
        gu = pb.apply_G(problem, u)
        relaxed_gu = RELAXATION * gu + (1 - RELAXATION) * state.s
        s = jnp.maximum(relaxed_gu + state.nu, 0.0)
        nu = state.nu + relaxed_gu - s

    tiny = jnp.finfo(u.dtype).tiny
    primal = _norm(u - v, None if gu is None else gu - s)
    primal_scale = jnp.maximum(_norm(u, gu), _norm(v, s))
    dual = rho * _norm(v - state.v, None if s is None else s - state.s)
    dual_scale = rho * _norm(lam, nu)
    primal_rel = primal / jnp.maximum(primal_scale, tiny)
    dual_rel = dual / jnp.maximum(dual_scale, tiny)

    state = AdmmState(u, v, lam, s, nu, z, rho, state.iteration + 1,
                      state.pcg_iterations + pcg_iters, primal_rel, dual_rel)
    if settings.adapt_rho:
        state = _balance_residuals(state)
    return state


def _balance_residuals(state: AdmmState) -> AdmmState:
    """Residual balancing: rescales ρ (and the scaled duals) towards equal relative residuals."""
    ratio = state.primal_residual / jnp.maximum(state.dual_residual, jnp.finfo(state.u.dtype).tiny)
    factor = jnp.sqrt(jnp.clip(ratio, 1e-12, 1e12))
    due = (state.iteration % ADAPT_EVERY == 0) & ((factor > ADAPT_FACTOR) | (factor < 1 / ADAPT_FACTOR))
    new_rho = jnp.where(due, jnp.clip(state.rho * factor, *RHO_RANGE), state.rho)
    shrink = state.rho / new_rho
    return state._replace(rho=new_rho, lam=state.lam * shrink,
                          nu=None if state.nu is None else state.nu * shrink)


def converged(state: AdmmState, tol) -> jax.Array:
    return (state.primal_residual <= tol) & (state.dual_residual <= tol)


def finite(state: AdmmState) -> jax.Array:
    return jnp.isfinite(state.primal_residual) & jnp.isfinite(state.dual_residual)


@functools.partial(jax.jit, static_argnames=("settings",))
def run_admm(problem: pb.Problem, precond: NystromApprox, state: AdmmState, tol, stop_at,
             settings: Settings) -> AdmmState:
    """Iterates ``admm_step`` until convergence, a non-finite residual, or ``stop_at``."""
    ft_y = pb.apply_Ft(problem, problem.targets, pb.halves(settings.activation))

    def cond(st):
        return (st.iteration < stop_at) & ~converged(st, tol) & finite(st)

    return jax.lax.while_loop(cond, lambda st: admm_step(problem, precond, ft_y, st, settings),
                              state)


def init_state(problem: pb.Problem, config: CronosConfig) -> AdmmState:
    """Zero iterates, ρ from the config (1 when adaptive), residuals at the largest float."""
    n, dim = problem.x.shape
    patterns, outputs = problem.masks.shape[1], problem.targets.shape[1]
    halves = pb.halves(config.activation)
    dtype = problem.x.dtype
    weights = jnp.zeros((halves, dim, patterns, outputs), dtype)
    slack = jnp.zeros((halves, n, patterns, outputs), dtype) if config.activation == "relu" else None
    unknown = jnp.asarray(jnp.finfo(dtype).max, dtype)
    return AdmmState(u=weights, v=weights, lam=weights, s=slack, nu=slack,
                     z=jnp.zeros((dim, patterns, outputs), dtype),
                     rho=jnp.asarray(1.0 if config.rho is None else config.rho, dtype),
                     iteration=jnp.asarray(0), pcg_iterations=jnp.asarray(0),
                     primal_residual=unknown, dual_residual=unknown)


# ----------------------------------------------------------------------------- solve


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


def prepare(x, y, config: CronosConfig, *, key: jax.Array, gates=None):
    """Checks inputs and builds the normalised problem and its preconditioner.

    Returns:
        (problem, preconditioner, gates [d, P]).
    """
    config.check()
    x = pb.check_features(x)
    targets, _ = pb.encode_targets(y, config.task, x.shape[0])
    dtype = jnp.dtype(config.dtype)
    x = with_intercept(jnp.asarray(x, dtype), config.intercept)
    gate_key, sketch_key = jax.random.split(key)
    if gates is None:
        gates = pb.sample_gates(gate_key, x.shape[1], config.patterns, dtype)
    else:
        gates = jnp.asarray(pb.check_gates(gates, x.shape[1], config.patterns), dtype)
    masks = pb.activation_patterns(x, gates)
    problem = pb.make_problem(x, masks, jnp.asarray(targets, dtype), config.beta)
    precond = sketch_preconditioner(problem, sketch_key, config.activation, config.rank)
    return problem, precond, gates


def iterate(problem: pb.Problem, precond: NystromApprox, state: AdmmState, config: CronosConfig,
            callback: Optional[Callable[[AdmmState], None]] = None) -> AdmmState:
    """Runs ADMM from ``state`` in chunks of ``CHUNK`` iterations, calling ``callback`` after each.

    Stops at convergence, at ``config.max_iters`` or on a non-finite iterate; in the last
    case the last finite state is returned with infinite residuals.
    """
    settings = settings_of(config)
    tol = jnp.asarray(config.tol, problem.x.dtype)
    while True:
        stop_at = min(int(state.iteration) + CHUNK, config.max_iters)
        new_state = run_admm(problem, precond, state, tol, stop_at, settings)
        if not bool(finite(new_state)):
            inf = jnp.asarray(jnp.inf, problem.x.dtype)
            return state._replace(primal_residual=inf, dual_residual=inf)
        state = new_state
        if callback is not None:
            callback(state)
        if bool(converged(state, tol)) or int(state.iteration) >= config.max_iters:
            return state


def finish(problem: pb.Problem, state: AdmmState, gates: jax.Array, config: CronosConfig,
           seconds: float) -> Solution:
    """Maps the group-sparse iterate v back to the original scale, with its statistics."""
    if not bool(finite(state)):
        status = SolveStatus.NONFINITE
    elif bool(converged(state, config.tol)):
        status = SolveStatus.CONVERGED
    else:
        status = SolveStatus.MAX_ITERATIONS
    loss, penalty, violation = (float(t) for t in objective_terms(problem, state.v))
    weights = jnp.moveaxis(state.v / problem.scale, 2, 1)          # [H, P, d, C]
    relu = config.activation == "relu"
    params = ConvexParams(gates=gates, v=weights[0], w=weights[1] if relu else None,
                          intercept=config.intercept)
    stats = Stats(objective=loss + penalty, loss=loss, penalty=penalty,
                  constraint_violation=violation,
                  primal_residual=float(state.primal_residual),
                  dual_residual=float(state.dual_residual),
                  iterations=int(state.iteration), pcg_iterations=int(state.pcg_iterations),
                  rho=float(state.rho), seconds=seconds)
    return Solution(params, stats, status)


def solve(x, y, config: CronosConfig = CronosConfig(), *, key: jax.Array, gates=None,
          callback: Optional[Callable[[AdmmState], None]] = None,
          throw: bool = False) -> Solution:
    """Solves the convex two-layer ReLU program of DESIGN.md with CRONOS.

    Args:
        x: [n, d] features (finite).
        y: [n] class labels 0..C−1 (classification) or [n] / [n, C] values (regression).
        config: solver settings.
        key: PRNG key for the gates and the Nyström sketch.
        gates: optional [d, P] gates to use instead of sampling (d + 1 rows with intercept).
        callback: called with the ``AdmmState`` every ``CHUNK`` iterations (progress bars).
        throw: raise RuntimeError unless the status is CONVERGED.

    Returns:
        ``Solution(params, stats, status)``; params hold the group-sparse iterate v.

    Raises:
        ValueError: naming the argument when an input or setting is invalid.
    """
    start = time.perf_counter()
    problem, precond, gates = prepare(x, y, config, key=key, gates=gates)
    state = iterate(problem, precond, init_state(problem, config), config, callback)
    jax.block_until_ready(state)
    solution = finish(problem, state, gates, config, time.perf_counter() - start)
    if throw and solution.status != SolveStatus.CONVERGED:
        raise RuntimeError(f"CRONOS stopped with status {solution.status.name}: {solution.stats}")
    return solution
