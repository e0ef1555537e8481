"""The two-layer network built from a solution computes the convex model."""

import jax
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.cronos import problem as pb
from flax_cronos.data.synthetic import teacher_classes


@pytest.fixture(scope="module", params=["relu", "gated_relu"])
def solved(request):
    x, y = teacher_classes(100, 4, 3, seed=0)
    x = x.astype(np.float64)
    config = cronos.CronosConfig(patterns=5, beta=0.3, activation=request.param, intercept=True,
                                 dtype="float64", tol=1e-8, max_iters=20_000)
    return x, cronos.solve(x, y, config, key=jax.random.key(0))


def test_mapped_network_reproduces_the_model(solved):
    x, solution = solved
    fresh = np.random.default_rng(1).normal(size=(50, 4))
    for drop in (False, True):
        weights = cronos.two_layer_weights(solution.params, drop_inactive=drop)
        for points in (x, fresh):
            np.testing.assert_allclose(cronos.network_predict(weights, points),
                                       cronos.predict(solution.params, points), atol=1e-10)
    full = cronos.two_layer_weights(solution.params)
    halves = 2 if solution.params.activation == "relu" else 1
    assert full["W1"].shape == (4, halves * 5 * 3) and full["W2"].shape == (halves * 5 * 3, 3)


def test_network_equals_the_convex_model_on_training_data(solved):
    """relu(x·v) = D_i x·v holds only where the cone constraints hold: a real check of them."""
    x, solution = solved
    params = solution.params
    features = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    masks = pb.activation_patterns(features, np.asarray(params.gates))
    convex = np.einsum("np,nd,pdc->nc", masks, features, np.asarray(params.v))
    if params.w is not None:
        convex -= np.einsum("np,nd,pdc->nc", masks, features, np.asarray(params.w))
    np.testing.assert_allclose(cronos.predict(params, x), convex, atol=1e-6)


def test_output_weights_carry_the_group_norms(solved):
    _, solution = solved
    weights = cronos.two_layer_weights(solution.params, drop_inactive=True)
    hidden_norm = np.linalg.norm(np.vstack([weights["W1"], weights["b1"]]), axis=0)
    np.testing.assert_allclose(hidden_norm, np.abs(weights["W2"]).sum(axis=1), rtol=1e-10)
    np.testing.assert_allclose((hidden_norm * np.abs(weights["W2"]).sum(axis=1)).sum()
                               * solution.params.v.dtype.type(1),
                               sum(np.linalg.norm(np.asarray(g), axis=1).sum()
                                   for g in (solution.params.v, solution.params.w) if g is not None),
                               rtol=1e-10)
