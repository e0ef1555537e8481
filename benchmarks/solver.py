"""Solver benchmark: flax-cronos against pyscnn and CVXPY on the same cone-constrained instances.

    python benchmarks/solver.py [--sizes 400,4000,20000] [--throughput-sizes 4000,20000,50000]
        [--preconditioner kronecker|nystrom] [--scnn-python PATH/bin/python]

Instances: teacher-labelled Gaussian features (d = 256), binary ±1 targets, P = 16 gates shared
by every solver, β = 0.01 · β̄ with β̄ = max_g ‖A_gᵀY‖. The optimum p* is CVXPY's (Clarabel)
where it runs (n ≤ --cvxpy-max-n), else a float64 flax-cronos solve certified by its duality
gap (n ≤ --reference-max-n), else the timed float32 run's own final objective (tol 1e-4; at
n = 4000 it was within 1e-5 of the float64 reference; its certified duality gap is recorded).
Prints a table: seconds to reach a relative objective gap of 1e-3, final gap, constraint
violation; and flax-cronos's throughput against this machine's float32 matmul rate. A second
table (--throughput-sizes) times ADMM iterations alone on the gated-ReLU program of the same
instances, whose iterations are matrix products only (no cone projections).
Timings exclude compilation and synchronise before reading the clock: the same solve runs once
first, so the timed run finds every program compiled (compilation left inside it, if any, is
measured with jax.monitoring and subtracted).
pyscnn needs torch, which flax-cronos never depends on: give the Python of a virtualenv with
`torch==2.13.0` and `pyscnn` (installed with --no-deps; it needs no torchvision to run). It gets
--scnn-budget seconds per instance, to which ``scnn_runner.py`` fits its iteration cap, so that
where it does not reach the target the table still says how far it got in that time.
"""

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from flax_cronos import cronos                                        # noqa: E402
from flax_cronos.cronos import admm, certificate, problem as pb       # noqa: E402
from flax_cronos.cronos.precision import full_precision               # noqa: E402
from flax_cronos.data.synthetic import teacher_classes                # noqa: E402
from timing import compile_seconds                                    # noqa: E402

GAP_TARGET = 1e-3


@full_precision
def matmul_rate(size: int = 4096, repeats: int = 5) -> float:
    """Median float32 GFLOP/s of a square matmul on the default device, at the solver's
    precision (true float32, not a GPU's default TensorFloat-32)."""
    a = jnp.ones((size, size), jnp.float32)
    product = jax.jit(lambda m: m @ m)
    product(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / np.median(times) / 1e9


def make_instance(n: int, dim: int, patterns: int, fraction: float, seed: int = 0):
    x, labels = teacher_classes(n, dim, 2, width=16, noise=0.1, seed=seed)
    gates = np.asarray(cronos.sample_gates(jax.random.key(seed), dim, patterns), np.float64)
    targets = 2.0 * labels - 1.0
    masks = (x @ gates >= 0)
    ceiling = max(np.linalg.norm(x.T @ (masks[:, i] * targets)) for i in range(patterns))
    return x, labels, gates, fraction * ceiling


def objective_and_violation(x, labels, gates, beta, v, w):
    """Our objective and relative cone violation of weights v, w [P, d, 1] (float64)."""
    problem = pb.Problem(x=jnp.asarray(x, jnp.float64), masks=pb.activation_patterns(
        jnp.asarray(x, jnp.float64), jnp.asarray(gates)), targets=jnp.asarray(
        (2.0 * labels - 1.0)[:, None]), scale=jnp.asarray(1.0), beta=jnp.asarray(beta))
    weights = jnp.moveaxis(jnp.asarray(np.stack([v, w]), jnp.float64), 1, 2)
    loss, penalty, violation = certificate.objective_terms(problem, weights)
    return float(loss + penalty), float(violation) / float(np.linalg.norm(x, 2))


def cvxpy_optimum(x, labels, gates, beta):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.reference import cvxpy_solve
    start = time.perf_counter()
    value, _, _ = cvxpy_solve(x, (2.0 * labels - 1.0)[:, None], gates, beta, "relu")
    return value, time.perf_counter() - start


def run_cronos(x, labels, gates, beta, patterns, dtype, tol, max_iters, preconditioner):
    """Solves twice (the first compiles); returns the solution, its solver seconds and the
    objective of the iterate v at each progress report (seconds exclude the reports and
    compilation)."""
    config = cronos.CronosConfig(patterns=patterns, beta=beta, dtype=dtype, tol=tol,
                                 max_iters=max_iters, preconditioner=preconditioner)
    cronos.solve(x, labels, config, key=jax.random.key(0), gates=gates)
    scale = float(np.sqrt(np.linalg.eigvalsh(np.asarray(x, np.float64).T @ x)[-1]))
    trajectory, reports = [], []          # reports: time.time() windows of the progress reports
    start = time.time()

    def excluded(until: float) -> float:
        """Seconds since ``start`` spent in the reports or compiling outside them."""
        compiling = compile_seconds((start, until)) - sum(map(compile_seconds, reports))
        return sum(end - begin for begin, end in reports) + compiling

    def record(state):
        paused = time.time()
        v, w = (np.moveaxis(np.asarray(half), 1, 0) / scale for half in state.v)   # [P, d, 1]
        value = objective_and_violation(x, labels, gates, beta, v, w)[0]
        trajectory.append((paused - start - excluded(paused), value))
        reports.append((paused, time.time()))

    solution = cronos.solve(x, labels, config, key=jax.random.key(0), gates=gates, callback=record)
    return solution, solution.stats.seconds - excluded(time.time()), trajectory


def product_flops(n: int, dim: int, patterns: int, iterations: int, pcg_iterations: int,
                  scanned_groups: int) -> float:
    """Floating-point operations of a solve's products with X (2 flops per multiply-add): X z
    and Xᵀ r, each [n, d] × [d, P], once per PCG iteration and once per ADMM iteration whose
    u-step computes PCG's starting residual (every ``admm.IMAGE_REFRESH``-th from a cold start;
    F acts on the difference of the halves, Fᵀ returns ± one product), and for relu the
    Lawson–Hanson steps' scans for the most violated constraint, [n, d] × [d, G] for a batch of G
    groups (``Stats.scanned_groups`` sums the G). Not counted: the products of the duality-gap
    checks' projections and the starting residuals recomputed after ρ changed (their numbers
    vary, see ``admm.with_gap`` and ``admm.early_rho``; the gap checks' projections took 17
    steps in the n = 20,000 relu solve of 2,601)."""
    gemm = 2.0 * n * dim * patterns
    refreshes = -(-iterations // admm.IMAGE_REFRESH)
    return gemm * 2 * (pcg_iterations + refreshes) + 2.0 * n * dim * scanned_groups


@full_precision
def iteration_throughput(n: int, dim: int, patterns: int, fraction: float, preconditioner: str,
                         iterations: int = 100) -> dict:
    """Times ``iterations`` ADMM iterations (``admm.iterate`` alone: no set-up, no final
    certificate) of the gated-ReLU program of the benchmark instance, after a compiling run
    from the same start."""
    x, labels, gates, beta = make_instance(n, dim, patterns, fraction)
    config = cronos.CronosConfig(patterns=patterns, beta=beta, dtype="float32",
                                 activation="gated_relu", tol=1e-12, max_iters=iterations,
                                 preconditioner=preconditioner)
    problem, precond, _ = admm.prepare(x, labels, config, key=jax.random.key(0), gates=gates)
    start_state = admm.init_state(problem, config, None)
    jax.block_until_ready(admm.iterate(problem, precond, start_state, config))
    start = time.perf_counter()
    state = jax.block_until_ready(admm.iterate(problem, precond, start_state, config))
    seconds = time.perf_counter() - start
    iterations, pcg_iterations = int(state.iteration), int(state.pcg_iterations)
    flops = product_flops(n, dim, patterns, iterations, pcg_iterations, 0)
    return {"n": n, "iterations": iterations, "pcg_iterations": pcg_iterations,
            "seconds": seconds, "gflops": flops / seconds / 1e9}


def run_scnn(python: str, x, labels, gates, beta, max_iters: int, budget: int):
    """pyscnn's result on one instance (``scnn_runner.py``, which fits its iteration cap to
    ``budget`` seconds), or None when it overruns twice the budget."""
    with tempfile.TemporaryDirectory() as folder:
        instance, result = Path(folder) / "instance.npz", Path(folder) / "result.npz"
        np.savez(instance, x=x.astype(np.float32), y=2.0 * labels - 1.0, gates=gates, beta=beta,
                 max_iters=max_iters, budget=budget)
        runner = Path(__file__).with_name("scnn_runner.py")
        try:
            subprocess.run([python, str(runner), str(instance), str(result)], check=True,
                           timeout=2 * budget, capture_output=True)
        except subprocess.TimeoutExpired:
            return None
        data = np.load(result)
        return {k: data[k] for k in data.files}


def first_time_within(trajectory, optimum, target=GAP_TARGET):
    for seconds, value in trajectory:
        if abs(value - optimum) <= target * abs(optimum):
            return seconds
    return None


def sizes(text: str) -> list[int]:
    """"400,4000" → [400, 4000]; "" → [] (skips that table)."""
    return [int(size) for size in text.split(",") if size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="400,4000,20000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--patterns", type=int, default=16)
    parser.add_argument("--beta-fraction", type=float, default=0.01)
    parser.add_argument("--cvxpy-max-n", type=int, default=400)
    parser.add_argument("--reference-max-n", type=int, default=4000,
                        help="largest n given a float64 reference solve (above: the timed run's own "
                             "certified final objective)")
    parser.add_argument("--throughput-sizes", default="4000,20000,50000",
                        help="n of the gated-ReLU iteration-throughput table ('' skips it)")
    parser.add_argument("--preconditioner", choices=admm.PRECONDITIONERS, default="kronecker",
                        help="of flax-cronos's PCG")
    parser.add_argument("--scnn-python", help="python of a virtualenv with pyscnn and torch")
    parser.add_argument("--scnn-max-iters", type=int, default=10_000)
    parser.add_argument("--scnn-budget", type=int, default=600,
                        help="seconds pyscnn may take per instance (its iteration cap is fitted to it)")
    parser.add_argument("--path-n", type=int, default=2000,
                        help="n of the β-path cost measurement (0 skips it)")
    parser.add_argument("--path-dim", type=int, default=32, help="d of the β-path measurement")
    parser.add_argument("--skip-solvers", action="store_true", help="only the β-path measurement")
    parser.add_argument("--out", type=Path, default=Path("docs/solver_benchmark.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.path_n:
        results["path"] = path_cost(args.path_n, args.path_dim, args.patterns)
        p = results["path"]
        print(f"# β path, n={p['n']}, d={p['dim']}, {p['points']} points; one cold solve at the "
              f"smallest β: {p['cold_smallest_beta']['seconds']:.1f}s")
        for mode in ("screened", "exact_points"):
            print(f"#   {mode} (tol {p[mode]['screen_tol']:g}): {p[mode]['seconds']:.1f}s = "
                  f"{p[mode]['ratio']:.2f}x, val accuracy {p[mode]['val_accuracy']:.3f}", flush=True)
    if args.skip_solvers:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        return

    rate = matmul_rate()
    rows = []
    print(f"# {platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
          f"float32 matmul {rate:.0f} GFLOP/s; preconditioner {args.preconditioner}")
    for n in sizes(args.sizes):
        x, labels, gates, beta = make_instance(n, args.dim, args.patterns, args.beta_fraction)
        row = {"n": n, "beta": beta}
        solution, seconds, trajectory = run_cronos(x, labels, gates, beta, args.patterns,
                                                   "float32", 1e-4, 20_000, args.preconditioner)
        stats = solution.stats
        if n <= args.cvxpy_max_n:
            optimum, row["cvxpy_seconds"] = cvxpy_optimum(x.astype(np.float64), labels, gates, beta)
            row["reference"] = "CVXPY (Clarabel)"
        elif n <= args.reference_max_n:
            exact = cronos.solve(x.astype(np.float64), labels, cronos.CronosConfig(
                patterns=args.patterns, beta=beta, dtype="float64", tol=1e-5, max_iters=5000),
                key=jax.random.key(0), gates=gates)
            optimum, row["reference"] = exact.stats.objective, "flax-cronos float64"
            row["reference_certified_gap"] = exact.stats.duality_gap
        else:
            optimum, row["reference"] = stats.objective, "its own final objective"
            row["reference_certified_gap"] = stats.duality_gap
        row["optimum"] = optimum
        flops = product_flops(n, args.dim, args.patterns, stats.iterations,
                              stats.pcg_iterations, stats.scanned_groups)
        row["cronos"] = {
            "seconds": seconds, "to_target": first_time_within(trajectory, optimum),
            "final_gap": (stats.objective - optimum) / optimum,
            "violation": stats.constraint_violation, "iterations": stats.iterations,
            "status": solution.status.name, "gflops": flops / seconds / 1e9,
            "matmul_fraction": flops / seconds / 1e9 / rate,
            "lawson_hanson_steps": stats.projection_iterations,
            "scanned_groups": stats.scanned_groups}
        if args.scnn_python:
            result = run_scnn(args.scnn_python, x, labels, gates, beta, args.scnn_max_iters,
                              args.scnn_budget)
            if result is None:
                row["scnn"] = {"seconds": None, "timeout": 2 * args.scnn_budget}
            else:
                value, violation = objective_and_violation(x, labels, gates, beta, result["v"],
                                                           result["w"])
                # pyscnn's recorded objective ignores the cone constraints, so its time to the
                # target counts only when its final iterate is feasible and within the target
                reached = abs(value - optimum) <= GAP_TARGET * optimum and violation <= GAP_TARGET
                row["scnn"] = {
                    "seconds": float(result["seconds"]), "iterations": int(result["iterations"]),
                    "to_target": first_time_within(zip(result["times"], result["objectives"]),
                                                   optimum) if reached else None,
                    "final_gap": (value - optimum) / optimum, "violation": violation}
        rows.append(row)
        print_row(row)
        results.update(matmul_gflops=rate, rows=rows)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    throughput = []
    for n in sizes(args.throughput_sizes):
        t = iteration_throughput(n, args.dim, args.patterns, args.beta_fraction,
                                 args.preconditioner)
        throughput.append(t)
        print(f"gated_relu n={n:>6}: {t['iterations']} ADMM it ({t['pcg_iterations']} PCG) in "
              f"{t['seconds']:.2f}s, {t['gflops']:.1f} GFLOP/s = {100 * t['gflops'] / rate:.0f}% "
              "of matmul", flush=True)
        results.update(matmul_gflops=rate, gated_iteration_throughput=throughput)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def path_cost(n: int, dim: int, patterns: int, repeats: int = 3) -> dict:
    """Median seconds of a 16-point warm-started β path, with its points screened (the default)
    and solved to the final tolerance, against a cold solve at its smallest β (compiled first)."""
    x, labels, gates, _ = make_instance(n + n // 4, dim, patterns, 0.0, seed=1)
    train, val = slice(0, n), slice(n, None)
    config = cronos.CronosConfig(patterns=patterns)

    def median_seconds(run):
        run()                                                           # compiles
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = run()
            seconds.append(time.perf_counter() - start)
        return float(np.median(seconds)), result

    results = {"n": n, "dim": dim, "tol": config.tol}
    for mode, screen_tol in (("screened", None), ("exact_points", config.tol)):
        seconds, path = median_seconds(lambda: cronos.solve_path(
            x[train], labels[train], config, key=jax.random.key(0), gates=gates, x_val=x[val],
            y_val=labels[val], screen_tol=screen_tol))
        results["points"] = len(path.points)
        results[mode] = {"seconds": seconds, "screen_tol": path.screen_tol,
                         "iterations": [p.solution.stats.iterations for p in path.points],
                         "chosen_beta_over_beta_max": path.points[path.best_index].beta / path.beta_max,
                         "chosen_iterations": path.best.stats.iterations,
                         "val_accuracy": cronos.score(path.best.params, x[val], labels[val],
                                                      "classification")}
    smallest = dataclasses.replace(config, beta=path.points[-1].beta)
    cold_seconds, cold = median_seconds(lambda: cronos.solve(
        x[train], labels[train], smallest, key=jax.random.key(0), gates=gates))
    results["cold_smallest_beta"] = {"seconds": cold_seconds, "iterations": cold.stats.iterations}
    for mode in ("screened", "exact_points"):
        results[mode]["ratio"] = results[mode]["seconds"] / cold_seconds
    return results


def _fmt(value, spec):
    return "—" if value is None else format(value, spec)


def print_row(row):
    c = row["cronos"]
    line = (f"n={row['n']:>6}  ref={row['reference']:<20} p*={row['optimum']:.6g}  "
            f"cronos: {_fmt(c['to_target'], '.2f')}s to 1e-3, total {c['seconds']:.2f}s, "
            f"gap {c['final_gap']:+.1e}, viol {c['violation']:.0e}, {c['iterations']} it, "
            f"{c['gflops']:.1f} GFLOP/s = {100 * c['matmul_fraction']:.0f}% of matmul")
    if "scnn" in row:
        s = row["scnn"]
        if s["seconds"] is None:
            line += f" | pyscnn: no result within {s['timeout']}s"
        else:
            line += (f" | pyscnn: {_fmt(s['to_target'], '.1f')}s to 1e-3, total {s['seconds']:.1f}s "
                     f"(cap {s['iterations']} it), "
                     f"gap {s['final_gap']:+.1e}, viol {s['violation']:.0e}")
    print(line, flush=True)


if __name__ == "__main__":
    main()
