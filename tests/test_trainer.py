"""AlternatingTrainer (CRONOS-AM): what each round computes, what Optax may touch, and resume.

Resume is tested the way users meet it: a training process is SIGKILLed (mid-round, and in the
middle of writing a checkpoint), the same command is run again, and the final parameters must
equal those of an uninterrupted run bit for bit.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from flax_cronos import cronos
from flax_cronos.checkpoint import RunCheckpoints
from flax_cronos.cronos import certificate
from flax_cronos.cronos.admm import prepare
from flax_cronos.data.synthetic import teacher_classes
from flax_cronos.models import MLP
from flax_cronos.trainer import AlternatingConfig, AlternatingTrainer
from flax_cronos.training import skip_zero_gradients
from tests.reference import cvxpy_solve

ROOT = Path(__file__).resolve().parents[1]


def small_data(n=240, classes=3, seed=0):
    x, y = teacher_classes(n + n // 4, dim=6, num_classes=classes, seed=seed)
    x = x.astype(np.float32)
    return (x[:n], y[:n]), (x[n:], y[n:])


def trainer(rounds=2, **overrides):
    settings = dict(rounds=rounds, steps_per_round=4, batch_size=32, warm_start=True,
                    auto_beta=False)
    settings.update(overrides)
    return AlternatingTrainer(MLP(widths=(12,)),
                              cronos.CronosConfig(patterns=4, beta=1e-2, max_iters=300),
                              AlternatingConfig(**settings))


def leaves(params):
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def saved_rounds(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_round_zero_head_is_the_global_optimum_on_the_backbone_features():
    train, val = small_data(n=120, classes=2)
    am = AlternatingTrainer(MLP(widths=(8,)),
                            cronos.CronosConfig(patterns=3, beta=0.1, max_iters=20000, tol=1e-5,
                                                dtype="float64"),
                            AlternatingConfig(rounds=0, auto_beta=False))
    result = am.fit(train, val, progress=False)
    features = np.asarray(MLP(widths=(8,)).apply({"params": result.params["backbone"]}, train[0]),
                          np.float64)
    head = result.network.head.to_convex(result.params["head"])
    reference = cvxpy_solve(features, 2.0 * train[1][:, None] - 1.0, np.asarray(head.gates),
                            0.1, "relu")
    problem, _, _ = prepare(features, train[1], am.cronos_config, key=jax.random.key(0),
                            gates=head.gates)
    weights = np.moveaxis(np.stack([head.v, head.w]), 2, 1) * float(problem.scale)
    loss, penalty, violation = certificate.objective_terms(problem, weights)
    assert float(loss + penalty) == pytest.approx(reference[0], rel=1e-3)
    assert float(violation) < 1e-6
    assert result.history[0]["val_accuracy"] == pytest.approx(
        np.mean(np.asarray(cronos.classify(result.network.apply({"params": result.params},
                                                                 val[0]))) == val[1]))


def test_by_default_round_zero_chooses_beta_on_a_path_of_its_features():
    """The default config picks β on a warm-started path over the round-0 features (20% of
    the training rows held out) and keeps it: every round records the β that an independent
    ``solve_path`` on those features chooses, not ``CronosConfig.beta``."""
    train, val = small_data()
    config = cronos.CronosConfig(patterns=4, beta=1e-2, max_iters=300)
    am = AlternatingTrainer(MLP(widths=(12,)), config,
                            AlternatingConfig(rounds=1, steps_per_round=4, batch_size=32))
    assert am.config.auto_beta
    state = am.initial_state(train[0], 3)[2]
    result = am.fit(train, val, progress=False)
    features = am.features(result.network, state["params"], train[0])
    key = jax.random.fold_in(jax.random.key(am.config.seed), 0)
    path = cronos.solve_path(features, train[1], config, key=key,
                             gates=result.params["head"]["gates"])
    best = path.points[path.best_index]
    assert best.val_metric == max(point.val_metric for point in path.points)
    assert best.beta != config.beta
    assert [r["beta"] for r in result.history] == pytest.approx([best.beta, best.beta])


def test_optax_trains_only_the_parameters_the_regex_selects():
    train, val = small_data()
    am = AlternatingTrainer(MLP(widths=(12, 10)), cronos.CronosConfig(patterns=4, beta=1e-2, max_iters=50),
                            AlternatingConfig(rounds=2, steps_per_round=5, batch_size=32,
                                              trainable=r"^backbone/Dense_1/", auto_beta=False))
    initial = leaves(am.initial_state(train[0], 3)[2]["params"])
    final = leaves(am.fit(train, val, progress=False).params)
    assert np.array_equal(final["['backbone']['Dense_0']['kernel']"],
                          initial["['backbone']['Dense_0']['kernel']"])
    assert not np.array_equal(final["['backbone']['Dense_1']['kernel']"],
                              initial["['backbone']['Dense_1']['kernel']"])
    assert np.array_equal(final["['head']['gates']"], initial["['head']['gates']"])


@pytest.mark.parametrize("pattern, message", [(r"head/v", "selects head parameters"),
                                              (r"^nothing", "selects no parameter")])
def test_trainable_regex_errors_name_the_problem(pattern, message):
    train, val = small_data()
    with pytest.raises(ValueError, match=message):
        trainer(trainable=pattern).fit(train, val, progress=False)


def test_every_checkpoint_holds_the_head_solved_for_its_backbone(tmp_path):
    """After round r the head is CRONOS's solution on that round's features (same gates, key)."""
    train, val = small_data()
    am = trainer(rounds=2, warm_start=False)
    result = am.fit(train, val, workdir=tmp_path, progress=False)
    features = am.features(result.network, result.params, train[0])
    key = jax.random.fold_in(jax.random.key(am.config.seed), 2)
    gates = result.params["head"]["gates"]
    again = cronos.solve(features, train[1], am.cronos_config, key=key, gates=gates)
    np.testing.assert_array_equal(again.params.v, result.params["head"]["v"])
    assert [r["round"] for r in result.history] == [0, 1, 2]
    assert [r["step"] for r in result.history] == [0, 4, 8]


def test_changed_settings_refuse_to_resume_but_more_rounds_extend_the_run(tmp_path):
    """... also when the run's config.json predates a setting (``cronos.anderson``, removed
    from the file): the run resumes with the value given and a warning naming it."""
    train, val = small_data()
    trainer(rounds=1).fit(train, val, workdir=tmp_path, progress=False)
    other = AlternatingTrainer(MLP(widths=(12,)),
                               cronos.CronosConfig(patterns=6, beta=1e-2, max_iters=300),
                               AlternatingConfig(rounds=1, steps_per_round=4, batch_size=32,
                                                 warm_start=True, auto_beta=False))
    with pytest.raises(ValueError, match="cronos.patterns: run has 4, now 6"):
        other.fit(train, val, workdir=tmp_path, progress=False)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    anderson = config["cronos"].pop("anderson")
    config_file.write_text(json.dumps(config))

    with pytest.warns(RuntimeWarning, match=f"predates the settings cronos.anderson={anderson}"):
        extended = trainer(rounds=2).fit(train, val, workdir=tmp_path, progress=False)
    assert json.loads(config_file.read_text())["cronos"]["anderson"] == anderson
    fresh = trainer(rounds=2).fit(train, val, workdir=tmp_path / "fresh", progress=False)
    for name, value in leaves(fresh.params).items():
        np.testing.assert_array_equal(leaves(extended.params)[name], value, err_msg=name)


def truncate_array_data(state_dir: Path) -> None:
    for data_file in state_dir.rglob("d/*"):
        with open(data_file, "r+b") as stream:
            stream.truncate(data_file.stat().st_size // 2)


def garble_metadata(state_dir: Path) -> None:
    metadata = state_dir / "_METADATA"
    metadata.write_bytes(b"\x00garbage" + metadata.read_bytes()[40:])


# A read of the truncated file fails while orbax's other reads are in flight, and orbax abandons
# them: depending on timing, Python reports their callbacks on orbax's closed event loop, or one
# of orbax's coroutines as never awaited. Only those two reports are ignored.
@pytest.mark.filterwarnings(
    r"ignore:(?s).*Event loop is closed:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings(r"ignore:coroutine 'Store\.\w+' was never awaited:RuntimeWarning")
@pytest.mark.parametrize("damage", [truncate_array_data, garble_metadata])
def test_corrupted_latest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, damage):
    train, val = small_data()
    first = trainer(rounds=2).fit(train, val, workdir=tmp_path, progress=False)
    damage(tmp_path / "checkpoints" / "2" / "state")

    with pytest.warns(RuntimeWarning, match="could not be read"):
        again = trainer(rounds=2).fit(train, val, workdir=tmp_path, progress=False)
    assert list((tmp_path / "corrupt").iterdir())[0].name.startswith("2-")
    for name, value in leaves(first.params).items():
        np.testing.assert_array_equal(leaves(again.params)[name], value, err_msg=name)
    assert [r["round"] for r in again.history] == [0, 1, 2]


def test_the_latest_and_the_best_checkpoints_are_kept(tmp_path):
    train, val = small_data()
    result = trainer(rounds=3, max_to_keep=1).fit(train, val, workdir=tmp_path, progress=False)
    best = max(result.history, key=lambda r: (r["val_accuracy"], r["round"]))["round"]  # latest
    assert saved_rounds(tmp_path) == sorted({3, best})


@pytest.mark.parametrize("reopen", [False, True])
def test_the_best_round_is_ranked_across_a_resume_and_ties_go_to_the_latest(tmp_path, reopen):
    """Rounds 0–1 saved, then (``reopen``: by a new process's manager, which must read their
    metrics back from disk) rounds 2–4; one latest round and the best are kept. Round 1 and 3
    tie for the best, so the later one, 3, is kept, and round 1 goes with the others."""
    accuracies = [0.5, 0.9, 0.6, 0.9, 0.7]
    checkpoints = RunCheckpoints(tmp_path, max_to_keep=1)
    for round_, accuracy in enumerate(accuracies):
        if reopen and round_ == 2:
            checkpoints.close()
            checkpoints = RunCheckpoints(tmp_path, max_to_keep=1)
        checkpoints.save(round_, {"w": np.zeros(2)}, {}, {"val_accuracy": accuracy})
    checkpoints.close()
    assert saved_rounds(tmp_path) == [3, 4]


# ----------------------------------------------------------------------------- SIGKILL and resume

RUN_SCRIPT = textwrap.dedent('''
    """Trains a small CRONOS-AM run in argv[1]; argv[2] says where to SIGKILL itself."""
    import json, os, signal, sys
    import jax
    import numpy as np
    import flax_cronos.training as training_module
    from flax_cronos.trainer import AlternatingTrainer
    from tests.test_trainer import leaves, small_data, trainer

    workdir, kill = sys.argv[1], sys.argv[2]
    if kill.startswith("step:"):                   # mid-round: at a backbone step
        at, batch_indices = int(kill[5:]), training_module.batch_indices
        def killing_batch_indices(step, *args):
            if step == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return batch_indices(step, *args)
        training_module.batch_indices = killing_batch_indices
    elif kill.startswith("commit:"):               # mid-save: as checkpoint N is committed
        from orbax.checkpoint._src.path import atomicity
        at, finalize = kill[7:], atomicity.AtomicRenameTemporaryPath.finalize
        def killing_finalize(self, *args, **kwargs):
            if self.get_final().name == at:        # the step folder, its items already written
                os.kill(os.getpid(), signal.SIGKILL)
            return finalize(self, *args, **kwargs)
        atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
    rounds_started = open(workdir.rstrip("/") + ".rounds", "a", buffering=1)
    print("process", file=rounds_started)
    backbone_phase = AlternatingTrainer._backbone_phase
    def recording_backbone_phase(self, state, train_step, inputs, targets, round_, *args):
        print(round_, file=rounds_started)                 # every round starts here, 0 included
        return backbone_phase(self, state, train_step, inputs, targets, round_, *args)
    AlternatingTrainer._backbone_phase = recording_backbone_phase
    train, val = small_data()
    result = trainer(rounds=3).fit(train, val, workdir=workdir, progress=False)
    np.savez(os.path.join(workdir, "final.npz"), **leaves(result.params))
''')


def run_training(workdir: Path, kill: str) -> subprocess.CompletedProcess:
    script = workdir.parent / "run_script.py"
    script.write_text(RUN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(script), str(workdir), kill], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def final_params(workdir: Path) -> dict:
    with np.load(workdir / "final.npz") as data:
        return {name: data[name] for name in data.files}


def rounds_started(workdir: Path) -> list[list[int]]:
    """The rounds each training process in ``workdir`` started, one list per process (RUN_SCRIPT
    logs them to ``<workdir>.rounds``)."""
    processes = workdir.with_suffix(".rounds").read_text().split("process\n")[1:]
    return [[int(round_) for round_ in process.split()] for process in processes]


def comparable(history_file: Path) -> list[dict]:
    """Metrics lines without the wall-clock entries."""
    records = [json.loads(line) for line in history_file.read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


def test_a_run_killed_twice_resumes_to_the_same_parameters_bit_for_bit(tmp_path):
    """Killed in round 2's backbone phase (round 1's save may still be in flight), resumed and
    killed again while committing round 2's checkpoint, then resumed to the end: the parameters
    and metrics of a run never interrupted, and each resumed process starts after the last
    checkpoint instead of recomputing saved rounds."""
    uninterrupted = tmp_path / "uninterrupted"
    completed = run_training(uninterrupted, "none")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert rounds_started(uninterrupted) == [[0, 1, 2, 3]]

    workdir = tmp_path / "run"
    last_saved = []
    for kill, complete_rounds in [("step:6", ([0], [0, 1])), ("commit:2", ([0, 1],))]:
        killed = run_training(workdir, kill)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert saved_rounds(workdir) in complete_rounds   # the interrupted round left no checkpoint
        last_saved.append(saved_rounds(workdir)[-1])
    resumed = run_training(workdir, "none")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert saved_rounds(workdir) == saved_rounds(uninterrupted)
    # each process began with the round after the last checkpoint: no saved round was recomputed
    assert [rounds[0] for rounds in rounds_started(workdir)] == [0] + [r + 1 for r in last_saved]
    expected = final_params(uninterrupted)
    got = final_params(workdir)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert comparable(workdir / "metrics.jsonl") == comparable(uninterrupted / "metrics.jsonl")


def test_losses_match_their_closed_forms():
    from flax_cronos.training import loss_value
    rng = np.random.default_rng(0)
    outputs, labels = rng.normal(size=(7, 1)), rng.integers(0, 2, 7)
    signs = 2.0 * labels[:, None] - 1.0
    assert float(loss_value(outputs, signs, "mse")) == pytest.approx(np.mean((outputs - signs) ** 2))
    # one output: binary cross-entropy of sigmoid(f) = softmax cross-entropy over logits (0, f)
    logits = np.concatenate([np.zeros_like(outputs), outputs], axis=1)
    softmax_ce = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(7), labels])
    assert float(loss_value(outputs, signs, "cross_entropy")) == pytest.approx(softmax_ce)
    many, classes = rng.normal(size=(7, 4)), rng.integers(0, 4, 7)
    expected = np.mean(np.log(np.exp(many).sum(1)) - many[np.arange(7), classes])
    assert float(loss_value(many, np.eye(4)[classes], "cross_entropy")) == pytest.approx(expected)


def test_a_zero_gradient_step_leaves_parameters_and_optimizer_state_unchanged():
    """D-Adapt AdamW (the trainer's default) wrapped by ``skip_zero_gradients``: a zero gradient
    first, then g, gives exactly the update of g alone, with a finite state."""
    params = {"a": np.ones(3, np.float32), "b": np.full((2, 2), 0.5, np.float32)}
    gradient = {"a": np.array([0.1, -0.2, 0.3], np.float32), "b": np.eye(2, dtype=np.float32)}
    zero = jax.tree.map(np.zeros_like, gradient)
    plain = optax.contrib.dadapt_adamw(1.0)
    guarded = skip_zero_gradients(plain)
    state = guarded.init(params)
    updates, state = guarded.update(zero, state, params)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    updates, state = guarded.update(gradient, state, params)
    expected, expected_state = plain.update(gradient, plain.init(params), params)
    for got, want in zip(jax.tree.leaves((updates, state)),
                         jax.tree.leaves((expected, expected_state))):
        np.testing.assert_array_equal(got, want)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))


def test_a_zero_head_leaves_the_backbone_as_it_is_and_says_why():
    """β above β̄ makes the head zero, so the backbone's gradient is zero: with the default
    D-Adapt AdamW the backbone stays exactly at its start (no NaN), with a warning."""
    train, val = small_data(classes=2)
    am = AlternatingTrainer(MLP(widths=(12,)), cronos.CronosConfig(patterns=4, beta=1e6),
                            AlternatingConfig(rounds=2, steps_per_round=3, batch_size=32,
                                              auto_beta=False))
    initial = leaves(am.initial_state(train[0], 1)[2]["params"]["backbone"])
    with pytest.warns(RuntimeWarning, match=r"round [12]: the convex head is zero"):
        result = am.fit(train, val, progress=False)
    final = leaves(result.params["backbone"])
    for name, value in initial.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)
    assert not np.any(np.asarray(result.params["head"]["v"]))
    assert [r["round"] for r in result.history] == [0, 1, 2]


def test_cross_entropy_training_runs_and_lowers_its_loss():
    train, val = small_data()
    result = trainer(rounds=3, loss="cross_entropy", steps_per_round=10).fit(train, val,
                                                                             progress=False)
    losses = [r["train_loss"] for r in result.history[1:]]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_given_backbone_params_are_the_starting_point_and_are_checked():
    train, val = small_data()
    backbone = MLP(widths=(12,))
    start = backbone.init(jax.random.key(7), train[0][:1])["params"]
    am = AlternatingTrainer(backbone, cronos.CronosConfig(patterns=4, beta=1e-2, max_iters=20),
                            AlternatingConfig(rounds=0, auto_beta=False), backbone_params=start)
    result = am.fit(train, val, progress=False)
    np.testing.assert_array_equal(result.params["backbone"]["Dense_0"]["kernel"],
                                  start["Dense_0"]["kernel"])
    wrong = MLP(widths=(5,)).init(jax.random.key(7), train[0][:1])["params"]
    with pytest.raises(ValueError, match="do not fit the backbone: Dense_0/kernel"):
        AlternatingTrainer(backbone, config=AlternatingConfig(rounds=0, auto_beta=False),
                           backbone_params=wrong).fit(train, val, progress=False)


def zero_inputs(key, inputs):
    """An augmentation under which the first layer's kernel gets no gradient."""
    del key
    return inputs * 0


def test_augmentation_reaches_the_backbone_steps_but_never_the_solves():
    import optax

    train, val = small_data()

    def run(augment):
        am = AlternatingTrainer(MLP(widths=(12,)), cronos.CronosConfig(patterns=4, beta=1e-2, max_iters=50),
                                AlternatingConfig(rounds=1, steps_per_round=5, batch_size=32,
                                                  auto_beta=False),
                                optimizer=optax.sgd(0.1), augment=augment)
        initial = leaves(am.initial_state(train[0], 3)[2]["params"])
        return initial, am.fit(train, val, progress=False)

    initial, augmented = run(zero_inputs)
    _, plain = run(None)
    kernel = "['backbone']['Dense_0']['kernel']"
    np.testing.assert_array_equal(leaves(augmented.params)[kernel], initial[kernel])  # zero grad
    assert not np.array_equal(leaves(plain.params)[kernel], initial[kernel])
    assert augmented.history[0]["objective"] == plain.history[0]["objective"]  # round 0: same features
