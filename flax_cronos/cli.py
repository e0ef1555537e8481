"""The ``flax-cronos`` command.

    flax-cronos train RECIPE.py --workdir DIR [--config.KEY=VALUE ...]   CRONOS-AM (resumes)
    flax-cronos evaluate --workdir DIR [--round N|best] [--split val|train]
    flax-cronos pretrain-lm RECIPE.py --out DIR [--config.KEY=VALUE ...]   a GPT-2 to start from
    flax-cronos fit-head --train train.npz [--val val.npz] --out DIR [solver options]
    flax-cronos demo [--out DIR]      generated data, then fit-head on it

Invalid input ends with a one-line message and exit code 2, never a traceback.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

EXIT_USAGE = 2


def _solver_arguments(parser: argparse.ArgumentParser) -> None:
    from flax_cronos.cronos.admm import PRECONDITIONERS
    from flax_cronos.cronos.problem import ACTIVATIONS, TASKS

    defaults = _default_config()
    parser.add_argument("--patterns", type=int, default=defaults.patterns, help="P, sampled gates")
    parser.add_argument("--beta", type=_beta, default="auto",
                        help="group-lasso weight β, or 'auto' (default): a warm-started path "
                             "with β chosen on the validation data")
    parser.add_argument("--rho", type=float, default=None,
                        help="ADMM penalty on the normalised data; default: chosen from the data")
    parser.add_argument("--preconditioner", choices=PRECONDITIONERS,
                        default=defaults.preconditioner,
                        help="of the u-step's conjugate gradients: H ≈ A ⊗ XᵀX (default) or the "
                             "paper's Nyström sketch")
    parser.add_argument("--rank", type=int, default=defaults.rank,
                        help="Nyström rank (with --preconditioner nystrom)")
    parser.add_argument("--max-iters", type=int, default=defaults.max_iters)
    parser.add_argument("--tol", type=float, default=defaults.tol,
                        help="relative duality gap to stop at (or a tenth of it for the residuals)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the gates (and of the Nyström sketch)")
    parser.add_argument("--activation", choices=ACTIVATIONS, default=defaults.activation)
    parser.add_argument("--task", choices=TASKS, default=defaults.task)
    parser.add_argument("--dtype", choices=("float32", "float64"), default=defaults.dtype)
    parser.add_argument("--intercept", action="store_true", help="append a constant-1 feature")


def _beta(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None


def _default_config():
    from flax_cronos.cronos import CronosConfig
    return CronosConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flax-cronos", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit-head", help="solve the convex head on a features file")
    fit.add_argument("--train", required=True, type=Path, help=".npz with x [n, d] and y [n]")
    fit.add_argument("--val", type=Path, help="validation .npz with x and y")
    fit.add_argument("--gates", type=Path, help=".npy [d, P] gates to reuse instead of sampling")
    fit.add_argument("--out", required=True, type=Path, help="output directory")
    fit.add_argument("--devices", type=int, default=None,
                     help="shard the rows over N local devices (0: all); default one device")
    _solver_arguments(fit)

    train = commands.add_parser(
        "train", help="CRONOS-AM from a recipe; re-running it resumes an interrupted run",
        epilog="Settings of the recipe are overridden with --config.KEY=VALUE, e.g. "
               "--config.trainer.rounds=20 --config.data.classes=(3,5)")
    train.add_argument("recipe", type=Path, help="recipes/NAME.py (defines get_config())")
    train.add_argument("--workdir", required=True, type=Path, help="run directory")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--devices", type=int, default=None,
                       help="data parallel over N local devices (0: all); default one device; "
                            "a run resumes on any number")

    pretrain = commands.add_parser(
        "pretrain-lm", help="pretrain a GPT-2 language model (recipes/gpt2_lm_imdb.py) and save "
                            "it in the Hugging Face format")
    pretrain.add_argument("recipe", type=Path, help="recipes/NAME.py (defines get_config())")
    pretrain.add_argument("--out", required=True, type=Path, help="output folder")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("evaluate", help="accuracy of a run's checkpoint")
    evaluate.add_argument("--workdir", required=True, type=Path, help="run directory")
    evaluate.add_argument("--round", default=None,
                          help="a round number, 'best' (validation accuracy); default latest")
    evaluate.add_argument("--split", choices=("val", "train"), default="val")

    demo = commands.add_parser("demo", help="fit a head on generated data")
    demo.add_argument("--out", type=Path, default=Path("checkpoints/demo"))
    demo.add_argument("--n", type=int, default=4000, help="training points")
    _solver_arguments(demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    _use_compilation_cache()
    try:
        if args.command == "train":
            return run_train(args, config_overrides(parser, unknown))
        if args.command == "pretrain-lm":
            return run_pretrain(args, config_overrides(parser, unknown))
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "demo":
            return run_demo(args)
        return run_fit_head(args)
    except (ValueError, OSError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"flax-cronos: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _use_compilation_cache() -> None:
    """Keeps compiled programs between runs in JAX's persistent compilation cache, unless one is
    configured already (``JAX_COMPILATION_CACHE_DIR``): a relu solve compiles an ADMM program
    per active-set size, about 3 s each on 2 CPU cores, often longer than the solve runs. The
    folder is ``$XDG_CACHE_HOME/flax-cronos/jax`` (``~/.cache/flax-cronos/jax``), and it keeps
    every program, however quick to compile (JAX's default keeps those of 1 s or more; the
    demo's times both ways are in docs/benchmarks.md); where it cannot be created, runs go on
    without a cache."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    try:
        cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = cache_home / "flax-cronos" / "jax"
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):                 # RuntimeError: no home folder
        return
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def config_overrides(parser: argparse.ArgumentParser, arguments: list[str]) -> dict:
    """``--config.a.b=VALUE`` (or ``--config.a.b VALUE``) → {'a.b': value}; values are Python
    literals (numbers, None, tuples, booleans) or else plain strings."""
    from flax_cronos.experiment import parse_setting

    overrides, arguments = {}, list(arguments)
    while arguments:
        argument = arguments.pop(0)
        if not argument.startswith("--config."):
            parser.error(f"unrecognized argument {argument!r}; settings are --config.KEY=VALUE")
        key, equals, text = argument[len("--config."):].partition("=")
        if not equals:
            if not arguments:
                parser.error(f"{argument} needs a value")
            text = arguments.pop(0)
        overrides[key] = parse_setting(text)
    return overrides


def run_train(args, overrides: dict) -> int:
    from flax_cronos import experiment

    config = experiment.load_recipe(args.recipe, overrides)
    result = experiment.train(config, args.workdir, progress=not args.quiet,
                              on_round=None if args.quiet else _print_round, devices=args.devices)
    last = result.history[-1] if result.history else {}
    print(f"round {last.get('round')}: val_accuracy={last.get('val_accuracy', float('nan')):.4f} "
          f"train_accuracy={last.get('train_accuracy', float('nan')):.4f} "
          f"{last.get('seconds', 0.0):.1f}s -> {args.workdir}")
    return 0


def _print_round(record: dict) -> None:
    """One line per round; round 0 made no backbone step, so it has no train_loss."""
    loss = "" if record["train_loss"] is None else f"train_loss={record['train_loss']:.4g} "
    print(f"  round {record['round']}: val_accuracy={record.get('val_accuracy', float('nan')):.4f} "
          f"{loss}beta={record['beta']:.3g} admm={record['admm_iterations']} "
          f"({record['status'].lower()}) {record['seconds']:.1f}s", file=sys.stderr, flush=True)


def run_pretrain(args, overrides: dict) -> int:
    from flax_cronos import experiment

    config = experiment.load_recipe(args.recipe, overrides)
    summary = experiment.pretrain_lm(config, args.out, progress=not args.quiet)
    print(f"{summary['size']} GPT-2 ({summary['parameters']:,} parameters): "
          f"{summary['tokens']:,} tokens in {summary['seconds']:.1f}s, held-out perplexity "
          f"{summary['val_perplexity']:.1f} -> {args.out}")
    return 0


def run_evaluate(args) -> int:
    from flax_cronos import experiment

    round_ = args.round
    if round_ not in (None, "best"):
        try:
            round_ = int(round_)
        except ValueError:
            raise ValueError(f"--round must be a number or 'best'; got {round_!r}") from None
    print(json.dumps(experiment.evaluate(args.workdir, round_, args.split)))
    return 0


def run_fit_head(args) -> int:
    from flax_cronos.fit_head import fit_head, summary_line

    metrics = fit_head(train=args.train, val=args.val, gates=args.gates, out=args.out,
                       config=_config_from(args), seed=args.seed, auto_beta=args.beta == "auto",
                       devices=args.devices)
    print(summary_line(metrics, args.out))
    return 0


def run_demo(args) -> int:
    from flax_cronos.data.synthetic import teacher_classes

    args.out.mkdir(parents=True, exist_ok=True)
    x, y = teacher_classes(args.n + args.n // 4, dim=16, num_classes=2, seed=args.seed)
    split = args.n
    np.savez(args.out / "train.npz", x=x[:split], y=y[:split])
    np.savez(args.out / "val.npz", x=x[split:], y=y[split:])
    args.train, args.val, args.gates = args.out / "train.npz", args.out / "val.npz", None
    args.devices = None
    return run_fit_head(args)


def _config_from(args):
    from flax_cronos.cronos import CronosConfig

    if args.dtype == "float64":
        import jax
        jax.config.update("jax_enable_x64", True)
    beta = CronosConfig.beta if args.beta == "auto" else args.beta
    return CronosConfig(patterns=args.patterns, beta=beta, activation=args.activation,
                        task=args.task, intercept=args.intercept, rho=args.rho,
                        preconditioner=args.preconditioner, rank=args.rank,
                        max_iters=args.max_iters, tol=args.tol, dtype=args.dtype)


if __name__ == "__main__":
    sys.exit(main())
