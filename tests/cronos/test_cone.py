"""Cone projections against SciPy's non-negative least squares (Lawson–Hanson in Fortran)."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_cronos.cronos import cone
from tests.reference import reference_projection

TOL = 1e-10     # the projections' tolerance: violations below TOL ‖x_j‖ ‖z‖ count as satisfied


project = jax.jit(cone.project, static_argnames=("max_iters", "outputs"))


def accuracy(x, z):
    """How close to exact a projection of z with tolerance TOL is: a few TOL ‖x_j‖ ‖z‖."""
    return 10 * TOL * np.linalg.norm(x, axis=1).max() * np.linalg.norm(z)


def assert_nnls_projections(result, points, x, signs, group_pattern):
    """Each group g's projection is SciPy's projection of points[g] onto its pattern's cone,
    to ``accuracy``."""
    for g, pattern in enumerate(group_pattern):
        np.testing.assert_allclose(result.point[g],
                                   reference_projection(signs[:, [pattern]] * x, points[g]),
                                   atol=accuracy(x, points[g]))


def test_projection_matches_nnls_cold_and_warm():
    rng = np.random.default_rng(0)
    n, d, patterns = 300, 8, 3
    x = rng.normal(size=(n, d))
    gates = rng.normal(size=(d, patterns))
    signs = np.where(x @ gates >= 0, 1.0, -1.0)
    group_pattern = np.array([0, 1, 2, 0, 1, 2])          # groups laid out as [2, P, C = 1]
    z = rng.normal(size=(6, d))
    z[0] = 2 * gates[:, 0]                 # a gate lies in its own cone: its projection is itself
    result = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(z),
                     cone.empty_active_set(6, d, jnp.float64), TOL, 100)
    assert bool(jnp.all(result.complete))
    assert_nnls_projections(result, z, x, signs, group_pattern)
    np.testing.assert_allclose(result.point[0], z[0], atol=1e-12)

    moved = z + 0.05 * rng.normal(size=z.shape)
    warm = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(moved), result.active, TOL, 100)
    assert int(warm.iterations) < int(result.iterations)
    assert_nnls_projections(warm, moved, x, signs, group_pattern)


def _regularised_gram(rows):
    """A_W A_Wᵀ of the rows A_W, its diagonal × (1 + 10 eps), as the solver regularises it."""
    return rows @ rows.T * (1 + 10 * np.finfo(rows.dtype).eps * np.eye(len(rows)))


def _gram_inverse_error(active, x, signs, group_pattern):
    """max over groups of ‖H W − I‖ on the used slots, W = A_W A_Wᵀ (1 + 10 eps on the diagonal)
    of the active rows e_{j,p(g)} x_j."""
    worst = 0.0
    for index, inverse, used, pattern in zip(np.asarray(active.rows), np.asarray(active.inverse),
                                             np.asarray(active.used), group_pattern):
        rows = signs[index[used], pattern][:, None] * x[index[used]]
        block = _regularised_gram(rows)
        worst = max(worst, np.abs(inverse[np.ix_(used, used)] @ block - np.eye(used.sum())).max())
    return worst


def test_warm_started_projections_keep_the_exact_inverse():
    """Rows enter and leave the active sets over a sequence of warm starts; the updated inverse
    stays the inverse of the active rows' Gram matrix and the projections stay exact."""
    rng = np.random.default_rng(1)
    n, d, patterns = 400, 16, 4
    x = rng.normal(size=(n, d))
    signs = np.where(x @ rng.normal(size=(d, patterns)) >= 0, 1.0, -1.0)
    group_pattern = np.arange(patterns).repeat(2)         # laid out as [1, P, C = 2]
    active = cone.empty_active_set(len(group_pattern), d, jnp.float64)
    z = rng.normal(size=(len(group_pattern), d))
    iterations = refactorisations = 0
    for _ in range(6):
        z = z + 0.5 * rng.normal(size=z.shape)
        result = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(z), active, TOL, 200,
                         outputs=2)
        active = result.active
        assert bool(jnp.all(result.complete))
        iterations += int(result.iterations)
        refactorisations += int(result.refactorisations)
        assert _gram_inverse_error(active, x, signs, group_pattern) < 1e-4
        assert_nnls_projections(result, z, x, signs, group_pattern)
    # the updates alone keep H accurate: rounding asks for a re-factorisation only now and then
    # (wrong update formulas would ask for one after nearly every step)
    assert refactorisations <= 0.05 * iterations


def test_only_the_group_whose_inverse_went_wrong_is_refactorised():
    """One group's H is made wrong (3× the inverse on its active slots: refining its
    multipliers with it then diverges) before a warm start at the same points. That group alone
    is re-factorised, once, and its H is exact again; every other group's H comes back bit for
    bit as it went in (re-factorising every group would have recomputed them all); all the
    projections are SciPy's."""
    rng = np.random.default_rng(2)
    n, d, patterns = 300, 8, 3
    x = rng.normal(size=(n, d))
    signs = np.where(x @ rng.normal(size=(d, patterns)) >= 0, 1.0, -1.0)
    group_pattern = np.array([0, 1, 2, 0, 1, 2])          # groups laid out as [2, P, C = 1]
    z = rng.normal(size=(6, d))
    exact = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(z),
                    cone.empty_active_set(6, d, jnp.float64), TOL, 100).active
    wrong = 2
    used = np.asarray(exact.used[wrong])
    assert used.sum() >= 2
    inverse = np.array(exact.inverse)
    inverse[wrong][np.ix_(used, used)] *= 3.0
    result = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(z),
                     exact._replace(inverse=jnp.asarray(inverse)), TOL, 100)
    assert bool(jnp.all(result.complete))
    assert int(result.refactorisations) == 1
    others = np.arange(6) != wrong
    np.testing.assert_array_equal(np.asarray(result.active.inverse)[others],
                                  np.asarray(exact.inverse)[others])
    assert _gram_inverse_error(result.active, x, signs, group_pattern) < 1e-8
    assert_nnls_projections(result, z, x, signs, group_pattern)


def test_many_groups_refine_only_the_inaccurate_multipliers():
    """With 64 groups the multipliers that need refining are refined a few groups at a time,
    gathered. Ten groups start from a slightly wrong H (1 + 1e-3 times the inverse: a few
    refinements make their multipliers exact) at the points it was computed for: the
    projections are SciPy's, no H is re-factorised (refinements went to the right groups)
    and none changes."""
    rng = np.random.default_rng(4)
    n, d, patterns, outputs = 300, 8, 8, 4
    groups = 2 * patterns * outputs
    assert groups >= cone.GATHERED_REFINEMENTS_FROM
    x = rng.normal(size=(n, d))
    signs = np.where(x @ rng.normal(size=(d, patterns)) >= 0, 1.0, -1.0)
    group_pattern = np.tile(np.arange(patterns).repeat(outputs), 2)   # laid out as [2, P, C]
    z = rng.normal(size=(groups, d))
    exact = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(z),
                    cone.empty_active_set(groups, d, jnp.float64), TOL, 200, outputs=outputs).active
    inverse = np.array(exact.inverse)
    for g in rng.choice(groups, 10, replace=False):
        used = np.asarray(exact.used[g])
        inverse[g][np.ix_(used, used)] *= 1 + 1e-3
    result = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(z),
                     exact._replace(inverse=jnp.asarray(inverse)), TOL, 200, outputs=outputs)
    assert bool(jnp.all(result.complete))
    assert int(result.refactorisations) == 0
    np.testing.assert_array_equal(np.asarray(result.active.inverse), inverse)
    assert_nnls_projections(result, z, x, signs, group_pattern)


def _least_squares_multipliers(rows, used, rhs):
    """(A_W A_Wᵀ)⁻¹ r on the used slots, with the diagonal's relative ridge, 0 elsewhere."""
    multipliers = np.zeros(len(used))
    multipliers[used] = np.linalg.solve(_regularised_gram(rows[used]), rhs[used])
    return multipliers


def test_the_least_squares_multipliers_follow_rows_entering_and_leaving():
    """A step keeps H and t = (A_W A_Wᵀ)⁻¹ r up to date through the bordering and
    Schur-complement updates instead of re-solving: after two groups add a row while a third
    drops one (one rank-one pass for all three), and after two rows leave one group and one
    another, t is the fresh solve's and H the inverse of the fresh Gram matrix."""
    rng = np.random.default_rng(3)
    groups, slots, d = 3, 6, 8
    rows = rng.normal(size=(groups, slots, d))
    rhs = rng.normal(size=(groups, slots))
    used = np.zeros((groups, slots), bool)
    used[:, :4] = True
    inverse = cone._inverse(jnp.asarray(rows), jnp.asarray(used))
    target = jnp.asarray([_least_squares_multipliers(rows[g], used[g], rhs[g])
                          for g in range(groups)])

    def check(inverse, target, used):
        for g in range(groups):
            np.testing.assert_allclose(target[g],
                                       _least_squares_multipliers(rows[g], used[g], rhs[g]),
                                       rtol=1e-9, atol=1e-9)
            kept = np.ix_(used[g], used[g])
            np.testing.assert_allclose(np.asarray(inverse[g])[kept],
                                       np.linalg.inv(_regularised_gram(rows[g][used[g]])),
                                       rtol=1e-9, atol=1e-9)
            np.testing.assert_array_equal(np.asarray(inverse[g])[~used[g]],
                                          np.eye(slots)[~used[g]])

    added = np.zeros_like(used)
    added[[0, 2], [4, 5]] = True                      # groups 0 and 2 add a row
    dropped = np.zeros_like(used)
    dropped[1, 2] = True                              # while group 1 drops one
    products = jnp.asarray(np.einsum("gkd,gd->gk", rows, rows[np.arange(groups), added.argmax(1)]))
    new_rhs = jnp.asarray(rhs[np.arange(groups), added.argmax(1)])
    used = used & ~dropped
    inverse, target = cone._exchanged(inverse, target, products, new_rhs, jnp.asarray(used),
                                      jnp.asarray(added), jnp.asarray(dropped))
    used = used | added
    check(inverse, target, used)

    dropped = np.zeros_like(used)
    dropped[0, [1, 4]] = dropped[1, 0] = True          # two rows leave group 0, one group 1
    no_rows = np.zeros_like(used)
    used = used & ~dropped
    inverse, target = cone._exchanged(inverse, target, jnp.zeros_like(target),
                                      jnp.zeros(groups), jnp.asarray(used),
                                      jnp.asarray(no_rows), jnp.asarray(dropped))
    check(inverse, target, used)


def test_float32_projections_onto_nearly_dependent_rows_stay_finite_and_close():
    """Two tight clusters and a constant column: active rows are nearly dependent (Gram
    condition numbers up to 1e6), so updates of the inverse lose all accuracy in float32 unless
    caught and re-factorised. The projections stay finite and as close to the float64 ones as
    float32 allows at that conditioning (a re-factorisation in every step gets no closer)."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 120)
    x = rng.normal(size=(120, 3)) * 0.3 + np.where(labels[:, None] == 1, 2.0, -2.0)
    x = np.hstack([x, np.ones((120, 1))])
    patterns = 8
    signs = np.where(x @ rng.normal(size=(4, patterns)) >= 0, 1.0, -1.0)
    group_pattern = np.arange(patterns).repeat(2)         # laid out as [1, P, C = 2]
    active = cone.empty_active_set(len(group_pattern), 4, jnp.float32)
    z = rng.normal(size=(len(group_pattern), 4))
    refactorisations = 0
    for _ in range(40):
        z = z + 0.3 * rng.normal(size=z.shape)
        result = project(jnp.asarray(x, jnp.float32), jnp.asarray(signs, jnp.float32),
                         jnp.asarray(z, jnp.float32), active,
                         cone.projection_tolerance(jnp.float32), 100, outputs=2)
        active = result.active
        refactorisations += int(result.refactorisations)
        assert np.all(np.isfinite(np.asarray(result.point)))
        for g, pattern in enumerate(group_pattern):
            expected = reference_projection(signs[:, [pattern]] * x, z[g])
            np.testing.assert_allclose(result.point[g], expected, atol=1e-2 * np.linalg.norm(z[g]))
    assert refactorisations > 0


def test_groups_the_prox_zeroes_stop_as_soon_as_that_is_known():
    """With ``zero_below`` t a group stops once its projection has norm ≤ t for sure, so the
    prox's shrink (1 − t/‖Π z‖)₊ Π z is unchanged for every group, and groups whose exact
    projection is 0 but needs many steps (z in the polar cone) cost none."""
    rng = np.random.default_rng(2)
    n, d, patterns = 300, 8, 3
    x = rng.normal(size=(n, d))
    gates = rng.normal(size=(d, patterns))
    signs = np.where(x @ gates >= 0, 1.0, -1.0)
    group_pattern = np.tile(np.arange(patterns), 4)       # laid out as [4, P, C = 1]
    directions = (gates / np.linalg.norm(gates, axis=0)).T[group_pattern]
    z = np.linspace(0.2, 3.0, len(group_pattern))[:, None] * directions
    z = z + 0.5 * rng.normal(size=z.shape)
    z[:patterns] = -0.1 * directions[:patterns]    # polar cones: Π z = 0, reached through many rows
    exact = np.stack([reference_projection(signs[:, [p]] * x, z[g])
                      for g, p in enumerate(group_pattern)])
    threshold = float(np.median(np.linalg.norm(exact, axis=1)))

    def shrink(points):
        norms = np.linalg.norm(points, axis=1, keepdims=True)
        return points * np.maximum(0.0, 1.0 - threshold / np.maximum(norms, 1e-300))

    args = (jnp.asarray(x), jnp.asarray(signs), jnp.asarray(z),
            cone.empty_active_set(len(group_pattern), d, jnp.float64), 1e-10, 100)
    full, early = project(*args), project(*args, zero_below=threshold)
    assert bool(jnp.all(early.complete))
    np.testing.assert_allclose(np.asarray(full.point), exact, atol=1e-9)
    np.testing.assert_allclose(shrink(np.asarray(early.point)), shrink(exact), atol=1e-9)
    assert np.any(np.abs(np.asarray(early.point) - exact) > 1e-3)     # some stopped inexact
    assert int(early.iterations) < int(full.iterations)


def test_groups_left_unfinished_go_on_alone_and_end_where_nnls_does():
    """29 of 32 groups start inside their cones and finish at the first step; the other three
    then go on gathered into a batch of four (``cone.COMPACTION``), where each must still
    project onto its own pattern's cone (group g has pattern (g // C) mod P) and its active
    set must come back to its own slot: cold and warm, every projection is SciPy's."""
    rng = np.random.default_rng(3)
    n, d, patterns, outputs = 300, 8, 4, 4
    x = rng.normal(size=(n, d))
    gates = rng.normal(size=(d, patterns))
    signs = np.where(x @ gates >= 0, 1.0, -1.0)
    group_pattern = np.tile(np.repeat(np.arange(patterns), outputs), 2)   # [2, P, C] layout
    groups = len(group_pattern)
    assert groups // cone.COMPACTION == cone.SMALLEST_BATCH == 4
    z = rng.uniform(0.5, 2.0, size=(groups, 1)) * gates.T[group_pattern]  # inside their cones
    hard = [6, 11, 29]                        # patterns 1, 2 and 3, in batch slots 0, 1 and 2
    z[hard] = -gates.T[group_pattern[hard]] + 0.3 * rng.normal(size=(3, d))
    cold = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(z),
                   cone.empty_active_set(groups, d, jnp.float64), TOL, 100, outputs=outputs)
    assert bool(jnp.all(cold.complete))
    assert_nnls_projections(cold, z, x, signs, group_pattern)
    steps = int(cold.iterations)
    assert steps >= 4 and int(cold.scanned) <= groups + 4 * (steps - 1)   # one step of all 32
    assert np.array_equal(np.asarray(cold.active.used).any(axis=1), np.isin(range(groups), hard))

    moved = z + 0.05 * rng.normal(size=z.shape)
    warm = project(jnp.asarray(x), jnp.asarray(signs), jnp.asarray(moved), cold.active, TOL, 100,
                   outputs=outputs)
    assert bool(jnp.all(warm.complete))
    assert_nnls_projections(warm, moved, x, signs, group_pattern)


def test_the_most_violated_row_is_the_first_of_its_ties_whatever_the_row_count():
    """The scan's minimum is found segment by segment; the row it reports is NumPy's argmin
    (the first row attaining the minimum) on slacks full of ties and infinite (zero) rows,
    for row counts with many divisors, a prime one and one under 128."""
    rng = np.random.default_rng(7)
    first_minimum = jax.jit(cone._first_minimum)
    for rows in (20_000, 4_099, 90):
        values = rng.integers(-3, 3, size=(rows, 5)).astype(np.float32)
        values[rng.random(values.shape) < 0.2] = np.inf
        values[:, 4] = np.inf
        row, smallest = first_minimum(jnp.asarray(values))
        np.testing.assert_array_equal(row, np.argmin(values, axis=0))
        np.testing.assert_array_equal(smallest, values.min(axis=0))
