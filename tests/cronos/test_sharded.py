"""Data-parallel CRONOS: rows sharded over 8 host CPU devices give the single-device solve, and
the compiled program never gathers X (tests/conftest.py asks XLA for 8 CPU devices)."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from flax_cronos import cronos
from flax_cronos.cronos import admm, certificate, rows
from flax_cronos.data.synthetic import teacher_classes
from tests.cronos.solutions import RELU_FLOAT64_RTOL, assert_same_solution

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: XLA_FLAGS="
                                "--xla_force_host_platform_device_count=8 before jax starts")

N, DIM, PATTERNS = 1001, 6, 6      # N is not a multiple of the 8 devices: rows are padded


def data(classes, n=N):
    x, y = teacher_classes(n, DIM, classes, width=4, noise=0.1, seed=0)
    return x.astype(np.float64), y


def config(activation, dtype="float64", tol=1e-8):
    """relu runs plain ADMM: Anderson acceleration amplifies the rounding differences of
    another reduction order (here 1e-15 → 2e-5 of the largest weight in 150 relu iterations;
    the gated solves stay within 1e-13), which would hide a layout error of that size."""
    return cronos.CronosConfig(patterns=PATTERNS, beta=0.5, activation=activation, intercept=True,
                               dtype=dtype, tol=tol, max_iters=150,
                               **({"anderson": 0} if activation == "relu" else {}))


@pytest.mark.parametrize("activation, classes", [("relu", 2), ("relu", 3), ("gated_relu", 2),
                                                 ("gated_relu", 3)])
def test_sharded_solve_equals_single_device_solve_float64(activation, classes):
    x, y = data(classes)
    single = cronos.solve(x, y, config(activation), key=jax.random.key(1))
    sharded = cronos.solve(x, y, config(activation), key=jax.random.key(1), mesh=rows.row_mesh())
    assert single.stats.iterations >= 20
    assert_same_solution(sharded, single,
                         rtol=RELU_FLOAT64_RTOL if activation == "relu" else 1e-10)


def test_sharded_solve_equals_single_device_solve_float32():
    """float32, 200 iterations: the iterates agree to 1e-4 of the largest weight (5e-5 to 7e-5
    on a Zen 5 EPYC), and so does the penalty; the objective and the loss to 1e-5. Float32
    rounding of the reductions, summed in another order (per device, and on one CPU device
    through the transposed copy of X), is amplified by the u-system's conditioning; the streamed
    solve and the in-memory one differ as much. (The cone projections on sharded rows are the
    float64 test's.)"""
    x, y = data(3)
    settings = dataclasses.replace(config("gated_relu", "float32"), max_iters=200)
    single = cronos.solve(x, y, settings, key=jax.random.key(1))
    sharded = cronos.solve(x, y, settings, key=jax.random.key(1), mesh=rows.row_mesh())
    assert_same_solution(sharded, single, rtol=1e-5, weights_rtol=1e-4, statistics=False)


def test_an_already_sharded_x_brings_its_mesh():
    """x sharded by rows over jax.make_mesh's (Explicit-axis) mesh solves as x given with a mesh."""
    x, y = data(2, n=1008)
    mesh = jax.make_mesh((8,), ("rows",))
    sharded_x = jax.device_put(x, NamedSharding(mesh, PartitionSpec("rows")))
    given = cronos.solve(sharded_x, y, config("gated_relu"), key=jax.random.key(1))
    placed = cronos.solve(x, y, config("gated_relu"), key=jax.random.key(1), mesh=mesh)
    assert_same_solution(given, placed, rtol=1e-14)


def test_padding_rows_change_nothing():
    """The padded program (zero rows, zero targets) has the same β̄, ρ and objective terms."""
    x, y = data(3)
    settings = config("relu")
    single, _, _ = admm.prepare(x, y, settings, key=jax.random.key(2))
    sharded, _, _ = admm.prepare(x, y, settings, key=jax.random.key(2), mesh=rows.row_mesh())
    assert sharded.num_rows == 1008 and single.num_rows == N
    weights = jax.random.normal(jax.random.key(3), (2, DIM + 1, PATTERNS, 3), jnp.float64)
    for a, b in zip(certificate.objective_terms(sharded, weights),
                    certificate.objective_terms(single, weights)):
        assert float(a) == pytest.approx(float(b), rel=1e-12)
    for activation in ("relu", "gated_relu"):
        assert float(certificate.beta_max(sharded, activation)) == pytest.approx(
            float(certificate.beta_max(single, activation)), rel=1e-12)


def all_gather_sizes(hlo: str) -> list[int]:
    """Element counts of the largest array each all-gather of a compiled HLO module returns."""
    results = re.findall(r"= (.+?) all-gather(?:-start)?\(", hlo)
    return [max(int(np.prod([int(k) for k in shape.split(",") if k]))
                for shape in re.findall(r"\[([\d,]*)\]", result)) for result in results]


def test_compiled_admm_never_gathers_rows():
    """The compiled ADMM loop (u-step PCG, cone projections, duality gap) and both
    preconditioners on sharded rows all-gather nothing of size n/8 or more: X, the masks, the
    targets and every [n, ·] intermediate stay sharded; only [d, P]-sized partial results cross
    devices."""
    x, y = data(2)
    settings = config("relu")
    problem, precond, _ = admm.prepare(x, y, settings, key=jax.random.key(1), mesh=rows.row_mesh())
    assert problem.x.sharding.spec[0] == "rows" and len(problem.x.sharding.device_set) == 8
    state = admm.init_state(problem, settings)
    loop = admm.run_admm.lower(problem, precond, state, 1e-8, 60,
                               settings=admm.settings_of(settings)).compile().as_text()
    preconditioners = [admm.build_preconditioner.lower(problem, jax.random.key(0), kind=kind,
                                                       rank=settings.rank).compile().as_text()
                       for kind in admm.PRECONDITIONERS]
    rows_per_device = problem.num_rows // 8
    for hlo in (loop, *preconditioners):
        assert "all-reduce" in hlo
        assert all(size < rows_per_device for size in all_gather_sizes(hlo))

    # the check sees a gathered X
    gather_x = jax.jit(lambda x: 2 * x, out_shardings=NamedSharding(problem.x.sharding.mesh,
                                                                     PartitionSpec()))
    assert all_gather_sizes(gather_x.lower(problem.x).compile().as_text()) == [problem.x.size]


def test_fit_head_devices_flag_shards_the_solve(tmp_path):
    """``fit-head --devices 0`` (all 8 devices) writes the single-device head."""
    import json

    from flax_cronos import cli

    x, y = data(3)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    common = ["fit-head", "--train", str(tmp_path / "train.npz"), "--patterns", "4", "--beta",
              "0.5", "--max-iters", "60", "--dtype", "float64", "--activation", "gated_relu"]
    assert cli.main(common + ["--out", str(tmp_path / "one")]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "all"), "--devices", "0"]) == 0
    one, all_ = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "all"))
    assert (one["config"]["devices"], all_["config"]["devices"]) == (1, 8)
    assert all_["objective"] == pytest.approx(one["objective"], rel=1e-10)
    assert all_["train_accuracy"] == one["train_accuracy"]
    heads = [np.load(tmp_path / name / "head.npz") for name in ("one", "all")]
    np.testing.assert_allclose(heads[1]["u"], heads[0]["u"], atol=1e-10 * np.abs(heads[0]["u"]).max())
    assert cli.main(common + ["--out", str(tmp_path / "bad"), "--devices", "9"]) == 2
