"""ConvexHead against an independent NumPy forward of the mapped two-layer network."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.head import ConvexHead, head_params

N, DIM, PATTERNS = 60, 5, 4


def features(intercept):
    """Feature dimension: one less with an intercept, so that every solve sees [N, DIM]
    (the same compiled solver, which keeps the file fast on a cold compile cache)."""
    return DIM - int(intercept)


def data(num_classes, intercept, seed=0):
    rng = np.random.default_rng(seed)
    d = features(intercept)
    x = rng.normal(size=(N, d))
    teacher = np.maximum(x @ rng.normal(size=(d, 4)), 0) @ rng.normal(size=(4, num_classes))
    return x, np.argmax(teacher - teacher.mean(axis=0), axis=1)


_SOLUTIONS = {}


def solve(activation, num_classes, intercept, dtype="float64"):
    """A (cached) rough CRONOS solution: optimality is not what is tested here."""
    case = (activation, num_classes, intercept, dtype)
    if case not in _SOLUTIONS:
        x, y = data(num_classes, intercept)
        config = cronos.CronosConfig(patterns=PATTERNS, beta=0.05, activation=activation,
                                     intercept=intercept, dtype=dtype, max_iters=50, rank=5)
        solution = cronos.solve(x, y, config, key=jax.random.key(0))
        assert np.abs(np.asarray(solution.params.v)).max() > 0   # a non-trivial head
        _SOLUTIONS[case] = solution
    return _SOLUTIONS[case]


def numpy_forward(weights, x):
    """The mapped network of ``two_layer_weights``, written in NumPy."""
    pre = x @ weights["W1"] + weights["b1"]
    if "gate_W1" in weights:
        hidden = (x @ weights["gate_W1"] + weights["gate_b1"] >= 0) * pre
    else:
        hidden = np.maximum(pre, 0)
    return hidden @ weights["W2"]


CASES = [(a, c, i) for a in ("relu", "gated_relu") for c in (2, 3) for i in (False, True)]


@pytest.mark.parametrize("activation, num_classes, intercept", CASES)
def test_from_solution_matches_mapped_network(activation, num_classes, intercept):
    solution = solve(activation, num_classes, intercept)
    head, params = ConvexHead.from_solution(solution)
    outputs = 1 if num_classes == 2 else num_classes
    assert (head.patterns, head.outputs, head.activation, head.intercept) == (
        PATTERNS, outputs, activation, intercept)
    weights = cronos.two_layer_weights(solution.params)
    fresh = np.random.default_rng(7).normal(size=(40, features(intercept)))
    got = np.asarray(head.apply({"params": params}, jnp.asarray(fresh)))
    expected = numpy_forward(weights, fresh)
    assert got.shape == (40, outputs)
    assert np.abs(expected).max() > 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)
    # from_solution also accepts bare ConvexParams, giving the same head and parameters
    head2, params2 = ConvexHead.from_solution(solution.params)
    assert head2 == head
    np.testing.assert_allclose(np.asarray(head2.apply({"params": params2}, fresh)), expected,
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("activation, intercept", [("relu", True), ("gated_relu", False),
                                                   ("gated_relu", True)])
def test_to_convex_round_trips(activation, intercept):
    solution = solve(activation, 3, intercept)
    head, params = ConvexHead.from_solution(solution)
    back = head.to_convex(params)
    original = solution.params
    assert back.intercept == original.intercept == intercept
    assert back.activation == original.activation == activation
    np.testing.assert_array_equal(np.asarray(back.gates), np.asarray(original.gates))
    np.testing.assert_array_equal(np.asarray(back.v), np.asarray(original.v))
    if activation == "relu":
        np.testing.assert_array_equal(np.asarray(back.w), np.asarray(original.w))
    else:
        assert back.w is None and set(params) == {"gates", "v"}
    # and through a fresh init: the parameters of init round-trip too
    fresh = head.init(jax.random.key(3), jnp.zeros((2, features(intercept))))["params"]
    again = head.to_convex(fresh)
    np.testing.assert_array_equal(np.asarray(again.gates), np.asarray(fresh["gates"]))
    assert head_params(again).keys() == fresh.keys()


class Model(nn.Module):
    patterns: int
    outputs: int
    activation: str
    intercept: bool

    @nn.compact
    def __call__(self, x):
        features = nn.Dense(x.shape[-1], param_dtype=jnp.float64)(x)
        return ConvexHead(self.patterns, self.outputs, self.activation, self.intercept,
                          param_dtype=jnp.float64)(features)


@pytest.mark.parametrize("activation", ["relu", "gated_relu"])
def test_gradient_reaches_the_backbone(activation):
    solution = solve(activation, 3, True)
    model = Model(PATTERNS, 3, activation, True)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(30, features(True)))
    r = rng.normal(size=(30, 3))
    variables = model.init(jax.random.key(1), jnp.asarray(x))
    params = dict(variables["params"])
    params["ConvexHead_0"] = head_params(solution.params)
    weights = cronos.two_layer_weights(solution.params)

    def loss(p):
        return jnp.sum(model.apply({"params": p}, x) * r)

    def numpy_loss(kernel, bias):
        return float(np.sum(numpy_forward(weights, x @ kernel + bias) * r))

    kernel = np.asarray(params["Dense_0"]["kernel"], np.float64)
    bias = np.asarray(params["Dense_0"]["bias"], np.float64)
    assert float(loss(params)) == pytest.approx(numpy_loss(kernel, bias), rel=1e-10)
    grad = np.asarray(jax.grad(loss)(params)["Dense_0"]["kernel"])
    assert grad.shape == kernel.shape and np.abs(grad).max() > 1e-6
    eps = 1e-6
    for flat in rng.choice(kernel.size, size=6, replace=False):
        i, j = np.unravel_index(flat, kernel.shape)
        step = np.zeros_like(kernel)
        step[i, j] = eps
        fd = (numpy_loss(kernel + step, bias) - numpy_loss(kernel - step, bias)) / (2 * eps)
        assert grad[i, j] == pytest.approx(fd, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("activation, intercept", [(a, i) for a in ("relu", "gated_relu")
                                                   for i in (False, True)])
def test_fresh_init_is_zero(activation, intercept):
    head = ConvexHead(patterns=PATTERNS, outputs=3, activation=activation, intercept=intercept)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(8, DIM)), jnp.float32)
    params = head.init(jax.random.key(0), x)["params"]
    names = {"gates", "v", "w"} if activation == "relu" else {"gates", "v"}
    assert set(params) == names
    dim = DIM + int(intercept)
    assert params["gates"].shape == (dim, PATTERNS)
    assert np.abs(np.asarray(params["gates"])).min() > 0     # N(0, 1), not zeros
    for name in names - {"gates"}:
        assert params[name].shape == (PATTERNS, dim, 3)
        assert not np.any(np.asarray(params[name]))
    out = head.apply({"params": params}, x)
    assert out.shape == (8, 3) and not np.any(np.asarray(out))


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.float64])
def test_fresh_params_follow_param_dtype(param_dtype):
    head = ConvexHead(patterns=PATTERNS, outputs=1, intercept=True, param_dtype=param_dtype)
    params = head.init(jax.random.key(0), jnp.ones((3, DIM), jnp.float32))["params"]
    for name in ("gates", "v", "w"):
        assert params[name].dtype == jnp.dtype(param_dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_solution_params_follow_solution_dtype(dtype):
    # gated_relu: its solver compiles much faster than relu's (relu is covered by the cast below)
    solution = solve("gated_relu", 2, True, dtype)
    head, params = ConvexHead.from_solution(solution)
    assert jnp.dtype(head.param_dtype) == jnp.dtype(dtype)
    assert set(params) == {"gates", "v"}
    assert all(params[name].dtype == jnp.dtype(dtype) for name in params)
    x = np.random.default_rng(5).normal(size=(10, features(True)))
    out = head.apply({"params": params}, x)
    assert out.dtype == jnp.dtype(dtype)
    fresh = head.init(jax.random.key(0), x)["params"]
    assert all(fresh[name].dtype == jnp.dtype(dtype) for name in fresh)
    tol = 1e-4 if dtype == "float32" else 1e-10
    expected = numpy_forward(cronos.two_layer_weights(solution.params), x.astype(dtype))
    # rows whose gate is within float32 rounding of 0 could flip: there are none at this seed
    np.testing.assert_allclose(np.asarray(out), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_relu_params_follow_solution_dtype(dtype):
    params = jax.tree.map(lambda a: a.astype(dtype), solve("relu", 2, True).params)
    head, weights = ConvexHead.from_solution(params)
    assert jnp.dtype(head.param_dtype) == jnp.dtype(dtype)
    assert set(weights) == {"gates", "v", "w"}
    assert all(weights[name].dtype == jnp.dtype(dtype) for name in weights)
    assert head.apply({"params": weights}, np.ones((2, features(True)))).dtype == jnp.dtype(dtype)


@pytest.mark.parametrize("head, shape, message", [
    (ConvexHead(patterns=2, outputs=1, activation="gelu"), (3, 4), "activation must be one of"),
    (ConvexHead(patterns=2, outputs=1), (2, 3, 4), r"features must be \[n, d\]"),
])
def test_invalid_head_settings_and_inputs_are_named(head, shape, message):
    with pytest.raises(ValueError, match=message):
        head.init(jax.random.key(0), jnp.zeros(shape))
