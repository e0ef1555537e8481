"""Input checks and the matrix-free operators against dense matrices built from their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.cronos import problem as pb


def dense_operators(x, gates):
    """F: [n, 2dP] and G: [2nP, 2dP] written out from DESIGN.md (u ordered half, pattern, dim)."""
    masks = (x @ gates >= 0).astype(float)
    n, d = x.shape
    blocks = [masks[:, [i]] * x for i in range(gates.shape[1])]
    f = np.concatenate(blocks + [-b for b in blocks], axis=1)
    cones = [(2 * masks[:, [i]] - 1) * x for i in range(gates.shape[1])]
    g = np.zeros((2 * n * len(cones), f.shape[1]))
    for k, block in enumerate(cones + cones):
        g[k * n:(k + 1) * n, k * d:(k + 1) * d] = block
    return f, g


@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "with-transposed-copy"])
def test_operators_match_dense_matrices(transposed):
    rng = np.random.default_rng(0)
    n, d, p, c = 30, 4, 5, 3
    x, gates = rng.normal(size=(n, d)), rng.normal(size=(d, p))
    problem = pb.Problem(x=jnp.asarray(x), masks=pb.activation_patterns(jnp.asarray(x), jnp.asarray(gates)),
                         targets=jnp.zeros((n, c)), scale=jnp.asarray(1.0), beta=jnp.asarray(0.0))
    if transposed:
        problem = pb.with_transposed_rows(problem)
        assert problem.xt is not None, "the tests run on one CPU device, where the copy is kept"
    f, g = dense_operators(x, gates)
    u = rng.normal(size=(2, d, p, c))
    flat = np.moveaxis(u, 1, 2).reshape(2 * p * d, c)        # (half, pattern, dim) rows
    np.testing.assert_allclose(pb.apply_F(problem, jnp.asarray(u)), f @ flat, atol=1e-12)
    r = rng.normal(size=(n, c))
    ft = np.asarray(pb.apply_Ft(problem, jnp.asarray(r), 2))
    np.testing.assert_allclose(np.moveaxis(ft, 1, 2).reshape(-1, c), f.T @ r, atol=1e-12)
    gu = np.asarray(pb.apply_G(problem, jnp.asarray(u)))        # [2, n, P, C]
    np.testing.assert_allclose(np.moveaxis(gu, 2, 1).reshape(-1, c), g @ flat, atol=1e-12)
    s = rng.normal(size=(2, n, p, c))
    gt = np.asarray(pb.apply_Gt(problem, jnp.asarray(s)))
    np.testing.assert_allclose(np.moveaxis(gt, 1, 2).reshape(-1, c),
                               g.T @ np.moveaxis(s, 1, 2).reshape(-1, c), atol=1e-12)


def test_gates_are_seeded_normal_and_patterns_count_ties_as_active():
    gates = pb.sample_gates(jax.random.key(3), 50, 400, jnp.float64)
    assert gates.shape == (50, 400)
    assert abs(float(jnp.mean(gates))) < 0.01 and abs(float(jnp.std(gates)) - 1) < 0.01
    np.testing.assert_array_equal(gates, pb.sample_gates(jax.random.key(3), 50, 400, jnp.float64))
    x = jnp.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_array_equal(pb.activation_patterns(x, jnp.array([[1.0], [0.0]]))[:, 0], [1, 1, 0])


def test_targets_encoding():
    y2, c2 = pb.encode_targets(np.array([0, 1, 1]), "classification", 3)
    np.testing.assert_array_equal(y2[:, 0], [-1, 1, 1]) and c2 == 2
    y3, c3 = pb.encode_targets(np.array([0, 2, 1]), "classification", 3)
    np.testing.assert_array_equal(y3, np.eye(3)[[0, 2, 1]])
    assert c3 == 3
    yr, _ = pb.encode_targets(np.array([0.5, -1.0]), "regression", 2)
    assert yr.shape == (2, 1)


X_OK = np.random.default_rng(0).normal(size=(20, 3))
Y_OK = np.arange(20) % 2


@pytest.mark.parametrize("x, y, config, gates, names", [
    (np.where(np.eye(20, 3) > 0, np.nan, X_OK), Y_OK, {}, None, "x contains"),
    (np.where(np.eye(20, 3) > 0, np.inf, X_OK), Y_OK, {}, None, "x contains"),
    (X_OK[:, 0], Y_OK, {}, None, "x must be a 2-D"),
    (X_OK, Y_OK[:-1], {}, None, "y has 19 rows but x has 20"),
    (X_OK, np.zeros(20, int), {}, None, "y holds a single class"),
    (np.zeros((0, 3)), np.zeros(0, int), {}, None, "x is empty"),
    (X_OK, Y_OK, {"patterns": 0}, None, "patterns must be a positive"),
    (X_OK, Y_OK, {"beta": -1.0}, None, "beta must be"),
    (X_OK, Y_OK, {"patterns": 4}, np.ones((3, 5)), "gates must have shape"),
    (X_OK, Y_OK + 0.5, {}, None, "y must hold integer class labels"),
    (X_OK * 1j, Y_OK, {}, None, "x must hold real numbers"),
])
def test_bad_input_names_the_argument(x, y, config, gates, names):
    with pytest.raises(ValueError, match=names):
        cronos.solve(x, y, cronos.CronosConfig(**config), key=jax.random.key(0), gates=gates)


@pytest.mark.parametrize("as_array", [jnp.asarray, np.asarray], ids=["device", "host"])
def test_bfloat16_features_are_solved_as_their_float32_values(as_array):
    """A backbone on an accelerator usually yields bfloat16 features (an ml_dtypes type
    that NumPy does not count as a number)."""
    x = as_array(X_OK.astype(jnp.bfloat16))
    config = cronos.CronosConfig(patterns=4, beta=0.1, activation="gated_relu")
    got = cronos.solve(x, Y_OK, config, key=jax.random.key(0))
    want = cronos.solve(np.asarray(x, np.float32), Y_OK, config, key=jax.random.key(0))
    assert got.status == cronos.SolveStatus.CONVERGED
    assert got.stats.objective == want.stats.objective
    np.testing.assert_array_equal(got.params.v, want.params.v)
