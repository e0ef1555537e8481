"""CRONOS against an interior-point solver (CVXPY + Clarabel) and against closed-form properties."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.cronos import problem as pb
from flax_cronos.data.synthetic import teacher_classes
from tests.reference import cvxpy_solve

N, DIM, PATTERNS = 80, 5, 6


def data(num_classes, seed=0):
    x, y = teacher_classes(N, DIM, num_classes, width=4, noise=0.1, seed=seed)
    return x.astype(np.float64), y


def reference_objective(x, y, gates, beta, activation, intercept=True):
    targets, _ = pb.encode_targets(y, "classification", len(y))
    features = np.concatenate([x, np.ones((len(x), 1))], axis=1) if intercept else x
    return cvxpy_solve(features, targets, gates, beta, activation)[0]


CASES = [  # activation, classes, beta, dtype, preconditioner
    ("relu", 2, 1.0, "float64", "kronecker"),
    ("relu", 2, 0.05, "float64", "kronecker"),
    ("relu", 3, 0.5, "float64", "kronecker"),
    ("gated_relu", 2, 1.0, "float64", "kronecker"),
    ("gated_relu", 3, 0.5, "float64", "kronecker"),
    ("relu", 2, 1.0, "float32", "kronecker"),
    ("gated_relu", 3, 0.5, "float32", "kronecker"),
    ("relu", 3, 0.5, "float64", "nystrom"),
    ("gated_relu", 3, 0.5, "float32", "nystrom"),
]


@pytest.mark.parametrize("activation, classes, beta, dtype, preconditioner", CASES)
def test_objective_matches_cvxpy(activation, classes, beta, dtype, preconditioner):
    x, y = data(classes)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=beta, activation=activation, intercept=True,
                                 dtype=dtype, tol=1e-7 if dtype == "float64" else 1e-4,
                                 max_iters=20_000, preconditioner=preconditioner)
    solution = cronos.solve(x, y, config, key=jax.random.key(1))
    expected = reference_objective(x, y, np.asarray(solution.params.gates, np.float64), beta, activation)
    rtol = 1e-4 if dtype == "float64" else 1e-3
    assert solution.stats.objective == pytest.approx(expected, rel=rtol)
    assert solution.stats.constraint_violation < (1e-8 if dtype == "float64" else 1e-5)
    if dtype == "float64":
        assert solution.status == cronos.SolveStatus.CONVERGED
        # the certificate bounds the true distance to the optimum
        true_gap = (solution.stats.objective - expected) / solution.stats.objective
        assert true_gap - 1e-9 <= solution.stats.duality_gap <= 1e-4
    assert solution.stats.objective == pytest.approx(solution.stats.loss + solution.stats.penalty)
    # each Lawson–Hanson step scans X for at most every group, H·P·C of them
    patterns, _, outputs = solution.params.v.shape
    steps, scanned = solution.stats.projection_iterations, solution.stats.scanned_groups
    if activation == "relu":
        assert 0 < scanned <= 2 * patterns * outputs * steps
    else:
        assert scanned == steps == 0


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_default_settings_converge_whatever_the_feature_scale(scale):
    """(sX, sβ) has the optimum u/s with the same objective as (X, β): a closed-form check."""
    x, y = data(2, seed=3)
    base = cronos.CronosConfig(patterns=PATTERNS, beta=1.0)
    gates = np.asarray(cronos.sample_gates(jax.random.key(0), DIM, PATTERNS), np.float64)
    expected = reference_objective(x, y, gates, 1.0, "relu", intercept=False)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=1.0 * scale)
    solution = cronos.solve(x * scale, y, config, key=jax.random.key(0), gates=gates)
    assert solution.status == cronos.SolveStatus.CONVERGED
    assert solution.stats.objective == pytest.approx(expected, rel=base.tol)


def test_multiclass_equals_independent_single_output_solves():
    x, y = data(3, seed=4)
    gates = np.asarray(cronos.sample_gates(jax.random.key(2), DIM + 1, PATTERNS, jnp.float64))
    config = cronos.CronosConfig(patterns=PATTERNS, beta=0.5, intercept=True, dtype="float64",
                                 tol=1e-9, max_iters=20_000)
    joint = cronos.solve(x, y, config, key=jax.random.key(0), gates=gates)
    single = cronos.CronosConfig(**{**config.__dict__, "task": "regression"})
    outputs = []
    total = 0.0
    for c in range(3):
        alone = cronos.solve(x, (y == c).astype(float), single, key=jax.random.key(0), gates=gates)
        total += alone.stats.objective
        outputs.append(np.asarray(cronos.predict(alone.params, x))[:, 0])
    assert joint.stats.objective == pytest.approx(total, rel=1e-7)
    np.testing.assert_allclose(cronos.predict(joint.params, x), np.stack(outputs, 1), atol=1e-4)


def test_separable_problem_reaches_full_train_accuracy():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, N)
    x = rng.normal(size=(N, DIM)) * 0.3 + np.where(y[:, None] == 1, 2.0, -2.0)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=1e-3, intercept=True)
    solution = cronos.solve(x, y, config, key=jax.random.key(0))
    assert np.mean(np.asarray(cronos.classify(cronos.predict(solution.params, x))) == y) == 1.0


def test_fixed_seed_gives_identical_results():
    x, y = data(2, seed=6)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=1.0, max_iters=200)
    first = cronos.solve(x, y, config, key=jax.random.key(7))
    second = cronos.solve(x, y, config, key=jax.random.key(7))
    other = cronos.solve(x, y, config, key=jax.random.key(8))
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
        np.testing.assert_array_equal(a, b)
    assert first.stats.objective == second.stats.objective
    assert not np.array_equal(first.params.gates, other.params.gates)


@pytest.mark.parametrize("activation", ["relu", "gated_relu"])
def test_a_callers_reduced_matmul_precision_does_not_reach_the_solver(activation):
    """JAX's default float32 product on recent NVIDIA GPUs is TensorFloat-32, too coarse for
    the certificate. XLA's CPU refuses that precision, so here any product of a solve, a warm
    start or a β path that escaped the solver's full precision raises; and the solution is the
    one computed without the caller's setting, to the last bit."""
    x, y = data(3, seed=4)
    x = x.astype(np.float32)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=0.5, activation=activation)
    key = jax.random.key(0)
    want = cronos.solve(x, y, config, key=key)
    with jax.default_matmul_precision("TF32_TF32_F32"):
        with pytest.raises(ValueError, match="precision"):
            jax.jit(jnp.dot)(x, x.T)
        got = cronos.solve(x, y, config, key=key)
        warm = cronos.solve(x, y, dataclasses.replace(config, beta=0.4), key=key, init=got.params)
        path = cronos.solve_path(x, y, config, key=key, num=3)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_array_equal(a, b)
    assert got.stats.objective == want.stats.objective
    assert warm.status == path.best.status == cronos.SolveStatus.CONVERGED


@pytest.mark.parametrize("activation", ["relu", "gated_relu"])
def test_float32_on_rank_deficient_features_stays_finite(activation):
    x, y = data(2, seed=9)
    x = np.concatenate([x, x[:, :2], np.ones((N, 2))], axis=1).astype(np.float32)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=0.5, activation=activation, max_iters=500)
    solution = cronos.solve(x, y, config, key=jax.random.key(0))
    assert solution.status != cronos.SolveStatus.NONFINITE
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(solution.params))
    assert np.isfinite(solution.stats.objective)


def test_residual_test_needs_a_run_of_small_residuals_after_a_warm_start():
    """A warm start from the solution at a larger β begins at a fixed point (λ = Fᵀ(Y − Fv)/ρ):
    its first residuals are near zero and grow as the iterate starts to move towards the new
    optimum. On 10-class features, β-path points that stopped at such small residuals ended up
    to 7% above their optimum at tol 1e-2 (docs/benchmarks.md). Small residuals stop a solve
    only after ``RESIDUAL_RUN`` iterations in a row, and the solve ends within tol of CVXPY's
    optimum."""
    from flax_cronos.cronos import admm

    x, y = data(2, seed=10)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=1.0, intercept=True, dtype="float64",
                                 activation="gated_relu", tol=1e-9, max_iters=20_000)
    start = cronos.solve(x, y, config, key=jax.random.key(0))
    smaller = dataclasses.replace(config, beta=0.99, tol=1e-3)
    problem, precond, gates = admm.prepare(x, y, smaller, key=jax.random.key(0))
    state = admm.init_state(problem, smaller, start.params)
    unknown_gap = admm.unknown_residual(problem.dtype)
    bound = smaller.tol * admm.RESIDUAL_FRACTION
    residuals = []
    for iteration in range(1, 16):
        state = admm.run_admm(problem, precond, state, smaller.tol, iteration,
                              admm.settings_of(smaller))
        residuals.append(max(float(state.primal_residual), float(state.dual_residual)))
        small_in_a_row = len(list(itertools.takewhile(lambda r: r <= bound, reversed(residuals))))
        by_residuals = bool(admm.converged(state._replace(gap=unknown_gap), smaller.tol))
        assert by_residuals == (small_in_a_row >= admm.RESIDUAL_RUN)
        if by_residuals:
            break
    assert residuals[0] <= bound < residuals[1]             # near zero, then growing
    assert by_residuals and len(residuals) > admm.RESIDUAL_RUN

    solution = cronos.solve(x, y, smaller, key=jax.random.key(0), init=start.params)
    expected = reference_objective(x, y, np.asarray(gates, np.float64), 0.99, "gated_relu")
    assert solution.status == cronos.SolveStatus.CONVERGED
    assert solution.stats.objective == pytest.approx(expected, rel=smaller.tol)


def test_throw_raises_when_not_converged():
    x, y = data(2)
    with pytest.raises(RuntimeError, match="MAX_ITERATIONS"):
        cronos.solve(x, y, cronos.CronosConfig(patterns=PATTERNS, beta=0.05, max_iters=20, tol=1e-9),
                     key=jax.random.key(0), throw=True)


def test_one_admm_step_is_a_pure_jittable_function():
    from flax_cronos.cronos import admm

    x, y = data(2)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=1.0, intercept=True, dtype="float64")
    problem, precond, _ = admm.prepare(x, y, config, key=jax.random.key(0))
    state = admm.init_state(problem, config)
    ft_y = pb.apply_Ft(problem, problem.targets, 2)
    step = jax.jit(admm.admm_step, static_argnums=4)
    once = step(problem, precond, ft_y, state, admm.settings_of(config))
    again = step(problem, precond, ft_y, state, admm.settings_of(config))
    looped = admm.run_admm(problem, precond, state, 0.0, 1, admm.settings_of(config))
    for a, b, c in zip(jax.tree.leaves(once), jax.tree.leaves(again), jax.tree.leaves(looped)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)
    assert int(once.iteration) == 1 and float(once.primal_residual) > 0


def test_early_rho_doubles_while_the_primal_residual_dominates_and_then_returns():
    """ρ doubles (with the dual θ = ρλ unchanged) only in the early phase, only while the
    primal residual is over EARLY_RATIO × the dual one and up to EARLY_GROWTH × its start, and
    returns to its start after EARLY_ITERS; a user's ρ and gated_relu never change."""
    from flax_cronos.cronos import admm

    x, y = data(2)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=1.0, dtype="float64")
    problem, _, _ = admm.prepare(x, y, config, key=jax.random.key(0))
    initial = admm.init_state(problem, config)
    start = initial._replace(lam=jnp.ones_like(initial.lam), iteration=jnp.asarray(1),
                             primal_residual=jnp.asarray(0.5), dual_residual=jnp.asarray(1e-3))
    rho0 = float(start.rho)

    state, rhos = start, []
    for _ in range(6):
        state = admm.early_rho(state)
        rhos.append(float(state.rho))
    assert rhos == pytest.approx([rho0 * f for f in (2, 4, 8, 16, 16, 16)])
    np.testing.assert_allclose(state.rho * state.lam, rho0 * start.lam)

    balanced = admm.early_rho(start._replace(dual_residual=jnp.asarray(0.5 / admm.EARLY_RATIO)))
    late = admm.early_rho(start._replace(iteration=jnp.asarray(admm.EARLY_ITERS + 1)))
    assert float(balanced.rho) == float(late.rho) == rho0
    back = admm.early_rho(state._replace(iteration=jnp.asarray(admm.EARLY_ITERS + 1)))
    assert float(back.rho) == pytest.approx(rho0) and float(back.rho_growth) == pytest.approx(1)
    np.testing.assert_allclose(back.rho * back.lam, rho0 * start.lam)

    assert admm.settings_of(config).early_rho
    assert not admm.settings_of(dataclasses.replace(config, rho=0.1)).early_rho
    assert not admm.settings_of(dataclasses.replace(config, activation="gated_relu")).early_rho


def rho_grows_early_instance():
    """More rows than the CVXPY cases above at a small β: the primal residual starts hundreds
    of times the dual one, so ρ grows in the early phase of plain ADMM (Anderson acceleration
    keeps its residuals within ``admm.EARLY_RATIO``). Returns (x, y, gates, beta, config)."""
    x, y = teacher_classes(400, DIM, 2, width=8, noise=0.1, seed=0)
    gates = np.asarray(cronos.sample_gates(jax.random.key(0), DIM, PATTERNS), np.float64)
    targets, _ = pb.encode_targets(y, "classification", len(y))
    beta = 0.01 * max(np.linalg.norm(x.T @ ((x @ g >= 0) * targets[:, 0])) for g in gates.T)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=beta, dtype="float64", tol=1e-7,
                                 max_iters=20_000, anderson=0)
    return x, y, gates, beta, config


def test_a_solve_whose_rho_grows_early_reaches_the_cvxpy_optimum(monkeypatch):
    """ρ grows in the early phase; the solve still ends at CVXPY's optimum, with ρ back at
    its start."""
    from flax_cronos.cronos import admm

    monkeypatch.setattr(admm, "CHUNK", 1)           # a progress report after every iteration
    x, y, gates, beta, config = rho_grows_early_instance()
    rhos = []
    solution = cronos.solve(x, y, config, key=jax.random.key(0), gates=gates,
                            callback=lambda state: rhos.append(float(state.rho)))
    start = float(admm.default_rho(admm.prepare(x, y, config, key=jax.random.key(0),
                                                gates=gates)[0], "relu"))
    assert max(rhos) >= 2 * start and solution.stats.rho == pytest.approx(start)
    targets, _ = pb.encode_targets(y, "classification", len(y))
    expected = cvxpy_solve(x, targets, gates, beta, "relu")[0]
    assert solution.status == cronos.SolveStatus.CONVERGED
    assert solution.stats.objective == pytest.approx(expected, rel=1e-4)


def test_the_u_steps_carried_start_matches_a_direct_product(monkeypatch):
    """The u-step starts PCG from the last u-step's (I + αH)Δ (``u_image``: its right-hand
    side minus PCG's recursive residual) instead of a product with H, except every
    IMAGE_REFRESH-th iteration and after ρ changed. After every iteration of a solve whose ρ
    grows and returns, that carried image equals the product computed directly."""
    from flax_cronos.cronos import admm

    monkeypatch.setattr(admm, "CHUNK", 1)
    x, y, gates, _, config = rho_grows_early_instance()
    problem = admm.prepare(x, y, config, key=jax.random.key(0), gates=gates)[0]
    errors, rhos = [], []

    def record(state):
        delta = state.u[0] - state.u[1]
        alpha = 2.0 / state.image_rho
        direct = delta + alpha * admm.pattern_gram(problem, delta)
        errors.append(float(jnp.linalg.norm(state.u_image - direct) / jnp.linalg.norm(direct)))
        rhos.append(float(state.rho))

    solution = cronos.solve(x, y, config, key=jax.random.key(0), gates=gates, callback=record)
    assert solution.stats.iterations > 2 * admm.IMAGE_REFRESH and len(set(rhos)) == 2   # up, back
    assert max(errors) < 1e-10


def test_projections_cut_short_early_still_reach_the_cvxpy_optimum(monkeypatch):
    """With at most 2 Lawson–Hanson steps per projection (the default is 50), a projection
    from an empty active set stops long before it is exact, and the active sets fill over many
    ADMM iterations, starting from 3 slots per group and doubling them when one fills, to
    d + 1 = 6 (the default starts at 64, more than this problem has); the solve still ends at
    CVXPY's optimum, with feasible weights, and its iterates were infeasible on the way (so
    the cap did bind) while the slots grew to d + 1. Anderson acceleration's memory starts
    afresh after every iteration whose projections were cut short (T was evaluated
    inexactly) and extrapolates once they complete."""
    from flax_cronos.cronos import admm

    monkeypatch.setattr(admm, "PROJECTION_ITERS", 2)
    monkeypatch.setattr(admm, "FIRST_ACTIVE", 3)
    monkeypatch.setattr(admm, "CHUNK", 1)           # a progress report after every iteration
    x, y = data(2)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=0.05, intercept=True, dtype="float64",
                                 tol=1e-7, max_iters=20_000)
    complete, slots, remembered = [], [], []

    def record(state):
        complete.append(bool(state.projections_complete))
        slots.append(state.active.used.shape[1])
        remembered.append(int(state.memory.count))

    solution = cronos.solve(x, y, config, key=jax.random.key(1), callback=record)
    assert not all(complete)
    assert min(slots) < DIM + 1 == max(slots)
    assert all(count == 1 for was_complete, count in zip(complete, remembered[1:])
               if not was_complete)
    assert max(remembered) > 2
    expected = reference_objective(x, y, np.asarray(solution.params.gates, np.float64), 0.05, "relu")
    assert solution.status == cronos.SolveStatus.CONVERGED
    assert solution.stats.objective == pytest.approx(expected, rel=1e-4)
    assert solution.stats.constraint_violation < 1e-8


@pytest.mark.parametrize("activation", ["relu", "gated_relu"])
def test_warm_start_reaches_the_cvxpy_optimum_and_stays_at_it(activation):
    """From a 3-iteration point ADMM still converges to CVXPY's optimum; from the optimum
    it stops within one gap check, without moving (the dual is started consistently)."""
    x, y = data(3, seed=5)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=0.5, activation=activation,
                                 intercept=True, dtype="float64", tol=1e-7, max_iters=20_000)
    key = jax.random.key(2)
    rough = cronos.solve(x, y, dataclasses.replace(config, max_iters=3), key=key)
    warm = cronos.solve(x, y, config, key=key, init=rough.params)
    expected = reference_objective(x, y, np.asarray(warm.params.gates), 0.5, activation)
    assert rough.stats.objective > expected * (1 + 1e-4)
    assert warm.status == cronos.SolveStatus.CONVERGED
    assert warm.stats.objective == pytest.approx(expected, rel=1e-4)

    again = cronos.solve(x, y, config, key=key, init=warm.params)
    assert again.stats.iterations <= 50
    assert again.stats.objective == pytest.approx(warm.stats.objective, rel=1e-6)


def convex_objective(params, x, y, beta):
    """½‖Σ_i D_i X (v_i − w_i) − Y‖² + β Σ ‖groups‖ of a solution's weights on (x, y), with the
    patterns D_i of its gates on x (the cone constraints are not checked)."""
    targets, _ = pb.encode_targets(y, "classification", len(y))
    masks = (x @ np.asarray(params.gates) >= 0).astype(float)
    groups = [np.asarray(params.v)] + ([] if params.w is None else [-np.asarray(params.w)])
    outputs = np.einsum("np,nd,pdc->nc", masks, x, sum(groups))
    penalty = sum(np.linalg.norm(group, axis=1).sum() for group in groups)
    return 0.5 * np.sum((outputs - targets) ** 2) + beta * penalty


@pytest.mark.parametrize("activation", ["relu", "gated_relu"])
def test_warm_start_from_a_changed_problem_does_not_diverge(activation):
    """CRONOS-AM warm-starts each round from the previous head, on features the backbone has
    changed. Five iterations from the old solution must improve on its objective: a dual
    started at Fᵀ(Y − Fv)/ρ unscaled made the first v-step a gradient step of length
    1/ρ ≫ 1/‖FᵀF‖ (in the trainer: objective 400× the start's after five iterations; here
    350× for relu, 380× for gated_relu)."""
    x, y = data(2)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=1e-3, activation=activation, max_iters=5)
    key = jax.random.key(0)
    old = cronos.solve(x, y, config, key=key)
    mixing = np.random.default_rng(0).normal(size=(DIM, DIM)) / np.sqrt(DIM)
    changed = x @ (np.eye(DIM) + 0.3 * mixing)
    warm = cronos.solve(changed, y, config, key=key, init=old.params)
    assert convex_objective(warm.params, changed, y, 1e-3) == pytest.approx(warm.stats.objective,
                                                                              rel=1e-3)
    assert warm.stats.objective < convex_objective(old.params, changed, y, 1e-3)


def test_warm_start_of_another_shape_is_a_clear_error():
    x, y = data(3)
    config = cronos.CronosConfig(patterns=PATTERNS, beta=0.5, max_iters=5)
    gated = cronos.solve(x, y, dataclasses.replace(config, activation="gated_relu"),
                         key=jax.random.key(0))
    with pytest.raises(ValueError, match="init has weights of shape"):
        cronos.solve(x, y, config, key=jax.random.key(0), init=gated.params)
