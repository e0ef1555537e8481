"""Solve time and peak memory against n: features in memory, sharded over 8 CPU devices, or
streamed from a memory-mapped .npy.

    python benchmarks/solver_scale.py [--sizes 10000,100000,1000000] [--quick] [--repeats 3]
                                      [--block-rows 32768] [--modes in-memory,sharded,streamed]

Instances: Gaussian features X [n, 256] float32 (generated in seeded row chunks, so every mode
sees the same X), labels sign(X w + noise), gated_relu with P = 8, β = 1e-3 · n, ``max_iters``
ADMM iterations (tol tiny, so every solve runs them all). Each (n, mode) runs in its own
process, so that the sharded mode can ask XLA for 8 host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` in that process's environment, set
before jax starts) and the peak RSS is that of one solve. Printed per point:

- ``solve s``: median over ``--repeats`` of the solve on the placed data (Nyström sketch, ADMM,
  statistics), after a warm-up run that compiles; ``block_until_ready`` before the clock.
- ``device MiB``: peak device memory from XLA's buffer assignment of the compiled sketch and
  ADMM programs (arguments + outputs + temporaries, per device), because
  ``jax.devices()[0].memory_stats()`` is None on CPU.
- ``RSS MiB``: the process's peak resident set (``resource.getrusage``): host memory, which on
  CPU also holds the "device" buffers, plus X itself (in memory) or its page cache (memmap).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from flax_cronos import cronos
from flax_cronos.cronos import admm

MODES = ("in-memory", "sharded", "streamed")
DIM, PATTERNS, CHUNK = 256, 8, 65536


def features(n: int, out=None):
    """X [n, DIM] float32 from seeded row chunks, written into ``out`` (e.g. a memmap) if given."""
    out = np.empty((n, DIM), np.float32) if out is None else out
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        out[start:start + rows] = np.random.default_rng(start).standard_normal((rows, DIM), np.float32)
    return out


def labels(x) -> np.ndarray:
    """Classes sign(x·w + noise) of a fixed random teacher w, computed in row chunks."""
    teacher = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    scores = np.concatenate([x[i:i + CHUNK] @ teacher for i in range(0, len(x), CHUNK)])
    noise = np.random.default_rng(2).standard_normal(len(x)).astype(np.float32)
    return (scores + 0.5 * np.sqrt(DIM) * noise > 0).astype(np.int64)


def device_bytes(problem, precond, state, config) -> int:
    """Peak over the preconditioner's and ADMM's programs of XLA's arguments + outputs +
    temporaries."""
    programs = (admm.build_preconditioner.lower(problem, jax.random.key(0),
                                                kind=config.preconditioner, rank=config.rank),
                admm.run_admm.lower(problem, precond, state, config.tol, config.max_iters,
                                    settings=admm.settings_of(config)))
    sizes = []
    for program in programs:
        memory = program.compile().memory_analysis()
        sizes.append(memory.argument_size_in_bytes + memory.output_size_in_bytes
                     + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    return max(sizes)


def run_point(n: int, mode: str, repeats: int, max_iters: int, block_rows: int) -> dict:
    """One (n, mode) measurement in this process."""
    config = cronos.CronosConfig(patterns=PATTERNS, beta=1e-3 * n, activation="gated_relu",
                                 max_iters=max_iters, tol=1e-9)
    with tempfile.TemporaryDirectory() as folder:
        placement = {}
        if mode == "streamed":
            path = Path(folder) / "x.npy"
            features(n, np.lib.format.open_memmap(path, "w+", np.float32, (n, DIM))).flush()
            x = np.load(path, mmap_mode="r")
            placement = dict(block_rows=block_rows)
        else:
            x = features(n)
            if mode == "sharded":
                placement = dict(mesh=cronos.row_mesh())
        y = labels(x)
        problem, _, gates = admm.prepare(x, y, config, key=jax.random.key(0), **placement)

        def solve():
            precond = admm.build_preconditioner(problem, jax.random.key(1), config.preconditioner,
                                                config.rank)
            state = admm.iterate(problem, precond, admm.init_state(problem, config), config)
            jax.block_until_ready(state)
            return admm.finish(problem, state, gates, config, 0.0), precond, state

        solution, precond, state = solve()                              # compiles
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            solve()
            seconds.append(time.perf_counter() - start)
        peak = device_bytes(problem, precond, admm.init_state(problem, config), config)
    return {"n": n, "mode": mode, "devices": len(jax.devices()) if mode == "sharded" else 1,
            "seconds": float(np.median(seconds)), "device_mib": peak / 2**20,
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
            "objective": solution.stats.objective, "iterations": solution.stats.iterations,
            "pcg_iterations": solution.stats.pcg_iterations}


def measure(n: int, mode: str, repeats: int, max_iters: int, block_rows: int) -> dict:
    """Runs one point in a fresh process (8 host devices for the sharded mode)."""
    env = dict(os.environ)
    if mode == "sharded":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    command = [sys.executable, __file__, "--point", f"{n},{mode}", "--repeats", str(repeats),
               "--max-iters", str(max_iters), "--block-rows", str(block_rows)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--quick", action="store_true", help="n = 10^4 and 10^5 only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-iters", type=int, default=10)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--block-rows", type=int, default=32768, help="streamed block size, at most")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        n, mode = args.point.split(",")
        print(json.dumps(run_point(int(n), mode, args.repeats, args.max_iters, args.block_rows)))
        return

    sizes = [10_000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; d = {DIM}, "
          f"P = {PATTERNS}, gated_relu, {args.max_iters} ADMM iterations, float32, "
          f"streamed blocks of at most {args.block_rows} rows, median of {args.repeats}")
    print("| n | mode | devices | solve s | device MiB | RSS MiB | objective | PCG iterations |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for mode in args.modes.split(","):
            r = measure(n, mode, args.repeats, args.max_iters, args.block_rows)
            print(f"| {n:,} | {mode} | {r['devices']} | {r['seconds']:.2f} | {r['device_mib']:.1f} | "
                  f"{r['rss_mib']:.0f} | {r['objective']:.6g} | {r['pcg_iterations']} |", flush=True)


if __name__ == "__main__":
    main()
