"""The β path: β̄ is exact, warm starts change nothing, and validation picks β."""

import jax
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.cronos import admm, path as path_module
from flax_cronos.data.synthetic import teacher_classes


def noisy_data(n, seed):
    x, y = teacher_classes(n, 5, 2, width=6, noise=0.3, seed=seed)
    return x.astype(np.float64), y


@pytest.mark.parametrize("activation", ["relu", "gated_relu"])
def test_beta_max_is_the_smallest_beta_with_a_zero_solution(activation):
    x, y = noisy_data(90, 0)
    config = cronos.CronosConfig(patterns=6, activation=activation, intercept=True, dtype="float64",
                                 tol=1e-9, max_iters=20_000)
    problem, _, gates = admm.prepare(x, y, config, key=jax.random.key(0))
    top = path_module.beta_max(problem, activation)

    def solve(beta):
        return cronos.solve(x, y, cronos.CronosConfig(**{**config.__dict__, "beta": beta}),
                            key=jax.random.key(0), gates=gates)

    at_top = solve(top * (1 + 1e-6))
    assert all(np.all(np.asarray(g) == 0) for g in (at_top.params.v, at_top.params.w) if g is not None)
    assert at_top.stats.objective == pytest.approx(0.5 * len(y))          # ½‖Y‖² with ±1 targets
    below = solve(0.9 * top)
    assert np.any(np.asarray(below.params.v) != 0) or np.any(np.asarray(below.params.w) != 0)
    assert below.stats.objective < at_top.stats.objective


def test_warm_started_points_equal_cold_solves():
    x, y = noisy_data(120, 1)
    x_val, y_val = noisy_data(60, 2)
    config = cronos.CronosConfig(patterns=6, intercept=True, dtype="float64", tol=1e-10,
                                 max_iters=20_000)
    problem, _, gates = admm.prepare(x, y, config, key=jax.random.key(3))
    betas = path_module.default_betas(path_module.beta_max(problem, "relu"), num=5, ratio=1e-3)
    result = cronos.solve_path(x, y, config, betas, key=jax.random.key(3), x_val=x_val, y_val=y_val,
                               screen_tol=config.tol)
    assert result.points[0].solution.stats.iterations == 0           # zero at β̄: certified
    for point in result.points:
        cold = cronos.solve(x, y, cronos.CronosConfig(**{**config.__dict__, "beta": point.beta}),
                            key=jax.random.key(3), gates=gates)
        assert point.solution.stats.objective == pytest.approx(cold.stats.objective, rel=1e-6)


def test_screened_points_are_rough_and_the_chosen_one_is_finished():
    x, y = noisy_data(120, 1)
    x_val, y_val = noisy_data(60, 2)
    config = cronos.CronosConfig(patterns=6, intercept=True, dtype="float64", tol=1e-9,
                                 max_iters=20_000)
    result = cronos.solve_path(x, y, config, key=jax.random.key(3), x_val=x_val, y_val=y_val,
                               num=6, ratio=1e-3)
    chosen = result.points[result.best_index]
    gates = result.best.params.gates

    def cold(beta):
        return cronos.solve(x, y, cronos.CronosConfig(**{**config.__dict__, "beta": beta}),
                            key=jax.random.key(3), gates=gates).stats.objective

    for point in result.points:
        assert point.solution.stats.objective == pytest.approx(cold(point.beta), rel=path_module.SCREEN_TOL)
    assert result.best.stats.objective == pytest.approx(cold(chosen.beta), rel=1e-7)
    assert result.best.stats.iterations > chosen.solution.stats.iterations


def test_the_chosen_beta_maximises_validation_accuracy():
    x, y = noisy_data(150, 4)
    x_val, y_val = noisy_data(100, 5)
    config = cronos.CronosConfig(patterns=6, intercept=True)
    result = cronos.solve_path(x, y, config, key=jax.random.key(0), x_val=x_val, y_val=y_val, num=8)
    accuracies = [np.mean(np.asarray(cronos.classify(cronos.predict(p.solution.params, x_val))) == y_val)
                  for p in result.points]
    np.testing.assert_allclose([p.val_metric for p in result.points], accuracies)
    assert accuracies[result.best_index] == max(accuracies)
    assert [p.beta for p in result.points] == sorted((p.beta for p in result.points), reverse=True)
    assert result.points[0].active_neurons == 0


def test_holdout_choice_refits_on_all_rows():
    """On 120 rows, a path on 90 of them: the shapes of the tests above, compiled already."""
    x, y = noisy_data(120, 6)
    config = cronos.CronosConfig(patterns=6, intercept=True, dtype="float64", tol=1e-10,
                                 max_iters=20_000)
    result = cronos.solve_path(x, y, config, key=jax.random.key(0), num=4, holdout=0.25)
    chosen = result.points[result.best_index].beta
    direct = cronos.solve(x, y, cronos.CronosConfig(**{**config.__dict__, "beta": chosen}),
                          key=jax.random.key(0), gates=result.best.params.gates)
    assert result.best.stats.objective == pytest.approx(direct.stats.objective, rel=1e-6)


def test_bad_path_arguments():
    x, y = noisy_data(40, 7)
    with pytest.raises(ValueError, match="betas must be"):
        cronos.solve_path(x, y, betas=[1.0, 2.0], key=jax.random.key(0), x_val=x, y_val=y)
    with pytest.raises(ValueError, match="x_val and y_val"):
        cronos.solve_path(x, y, key=jax.random.key(0), x_val=x)
    with pytest.raises(ValueError, match="screen_tol"):
        cronos.solve_path(x, y, key=jax.random.key(0), x_val=x, y_val=y, screen_tol=1.5)
