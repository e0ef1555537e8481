"""Data-parallel CRONOS-AM and end-to-end baseline over 8 host CPU devices (tests/conftest.py asks
XLA for them): the same runs as on one device, and checkpoints that resume on another device
count."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from flax_cronos import cronos
from flax_cronos.baseline import train_end_to_end
from flax_cronos.cronos.problem import encode_targets
from flax_cronos.models import MLP
from flax_cronos.parallel import DataParallel
from flax_cronos.trainer import AlternatingConfig, AlternatingTrainer
from tests.test_baseline import Network
from tests.test_trainer import leaves, small_data

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: XLA_FLAGS="
                                "--xla_force_host_platform_device_count=8 before jax starts")


def trainer(rounds, mesh=None, batch_size=32):
    """Float64 solves converged to tol by plain ADMM: their results differ by rounding only,
    so the runs compare the backbone steps (float32). (Anderson acceleration's iterates
    follow the float32 rounding of the features further: the heads of 8 devices and one then
    differed by up to 3.5e-4, as two solves to the same tolerance may.)"""
    return AlternatingTrainer(
        MLP(widths=(12,)),
        cronos.CronosConfig(patterns=4, beta=0.1, activation="gated_relu", dtype="float64",
                            tol=1e-6, max_iters=2000, anderson=0),
        AlternatingConfig(rounds=rounds, steps_per_round=4, batch_size=batch_size,
                          feature_batch_size=64, auto_beta=False),
        mesh=mesh)


@pytest.fixture(scope="module")
def one_device():
    train, val = small_data()
    return trainer(rounds=2).fit(train, val, progress=False)


def assert_same_run(result, reference):
    for name, value in leaves(reference.params).items():
        np.testing.assert_allclose(leaves(result.params)[name], value, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    for record, expected in zip(result.history, reference.history, strict=True):
        assert record["status"] == expected["status"] == "CONVERGED"
        assert record["val_accuracy"] == expected["val_accuracy"]
        keys = ("objective", "val_loss") + (("train_loss",) if record["round"] else ())
        for key in keys:
            assert record[key] == pytest.approx(expected[key], rel=1e-4), key


def on_mesh_of(result, size: int) -> bool:
    return all(isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh.size == size
               for leaf in jax.tree.leaves(result.params))


def test_split_rows_gives_each_device_only_its_rows():
    parallel = DataParallel(cronos.row_mesh())
    batch = parallel.split_rows(np.arange(32.0).reshape(16, 2))
    shards = sorted(batch.addressable_shards, key=lambda shard: shard.index[0].start)
    assert [shard.data.shape for shard in shards] == [(2, 2)] * 8
    np.testing.assert_array_equal(np.concatenate([shard.data for shard in shards]),
                                  np.arange(32.0).reshape(16, 2))
    assert parallel.replicate(np.ones(3)).sharding.spec == PartitionSpec()


def test_the_backbone_step_splits_the_minibatch_and_all_reduces_gradients():
    (x, y), _ = small_data()
    am = trainer(rounds=1, mesh=cronos.row_mesh())
    targets, _ = encode_targets(y, "classification", len(y), "labels")
    network, optimizer, state = am.initial_state(x, targets.shape[1])
    step = am._compiled_train_step(network, optimizer, state, x, targets.astype(np.float32))
    batch_shardings = step.input_shardings[0][2:4]
    assert all(sharding.spec == PartitionSpec("rows") for sharding in batch_shardings)
    program = step.as_text()
    assert "all-reduce" in program and "all-gather" not in program


def test_data_parallel_run_equals_the_single_device_run(one_device):
    train, val = small_data()
    result = trainer(rounds=2, mesh=cronos.row_mesh()).fit(train, val, progress=False)
    assert on_mesh_of(result, 8)
    assert_same_run(result, one_device)


def test_a_run_checkpointed_on_8_devices_resumes_on_2_and_on_one(tmp_path, one_device):
    train, val = small_data()
    trainer(rounds=1, mesh=cronos.row_mesh()).fit(train, val, tmp_path / "a", progress=False)
    resumed = trainer(rounds=2, mesh=cronos.row_mesh(2)).fit(train, val, tmp_path / "a",
                                                             progress=False)
    assert on_mesh_of(resumed, 2)
    assert_same_run(resumed, one_device)

    single = trainer(rounds=2).fit(train, val, tmp_path / "a", progress=False)  # nothing left
    assert_same_run(single, resumed)
    assert all(len(leaf.devices()) == 1 for leaf in jax.tree.leaves(single.params))


def test_batches_that_do_not_split_over_the_devices_are_refused():
    with pytest.raises(ValueError, match="batch_size 30 must be a multiple of the 8 devices"):
        trainer(rounds=1, mesh=cronos.row_mesh(), batch_size=30)


def test_data_parallel_baseline_equals_the_single_device_baseline():
    (x, y), val = small_data()

    def run(mesh):
        return train_end_to_end(Network(), optax.adam(1e-2), (x, y), val, steps=20,
                                batch_size=48, eval_every=10, mesh=mesh)

    (params, history), (sharded, sharded_history) = run(None), run(cronos.row_mesh())
    for name, value in leaves(params).items():
        np.testing.assert_allclose(leaves(sharded)[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    assert [r["val_accuracy"] for r in sharded_history] == [r["val_accuracy"] for r in history]
    assert all(len(leaf.devices()) == 8 for leaf in jax.tree.leaves(sharded))
