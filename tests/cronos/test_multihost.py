"""Rows spread over two processes (``jax.distributed`` on this machine's CPU, loopback only, two
devices each) give the single-process solve: each process reads only its own rows from its own
files (tests/cronos/multihost_worker.py), and both get the same Solution."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.data.synthetic import teacher_classes
from tests.cronos import multihost_worker as worker
from tests.cronos.solutions import assert_same_solution

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240       # seconds for both processes (about 30 s on a busy 2-core machine)
N, SPLIT = 1001, 501    # process 0 gets 501 rows, process 1 500: both are padded to 502


def free_port() -> int:
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    except OSError as error:
        pytest.skip(f"no loopback network for the coordinator: {error}")


def run_processes(folder: Path) -> None:
    """Runs both workers on ``folder``; kills the other when one fails or they run past
    ``TIMEOUT``, and fails with their output."""
    port = free_port()
    # the test process's other XLA flags (conftest's compiler settings round the last bit of a
    # float alike in all three processes), with the workers' own device count
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={worker.DEVICES}")
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", XLA_FLAGS=" ".join(flags),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # no shared compile cache: the processes compile the same programs at once, and JAX writes
    # cache entries without a lock
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    logs = [folder / f"process_{i}.log" for i in range(worker.PROCESSES)]
    processes = []
    for i, log in enumerate(logs):
        with open(log, "w") as out:
            processes.append(subprocess.Popen(
                [sys.executable, worker.__file__, str(port), str(i), str(folder)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in processes]
            if None not in codes or any(codes):     # all done, or one failed
                break
            time.sleep(0.2)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
    if any(p.returncode != 0 for p in processes):
        report = "\n".join(f"--- process {i} (exit {p.returncode}):\n{log.read_text()[-4000:]}"
                           for i, (p, log) in enumerate(zip(processes, logs)))
        pytest.fail(f"a worker failed, or they ran past {TIMEOUT} s (exit -9: killed here)\n"
                    f"{report}")


def solution_of(saved) -> cronos.Solution:
    params = cronos.ConvexParams(gates=saved["gates"], v=saved["v"], w=saved.get("w"),
                                 intercept=worker.config().intercept)
    stats = cronos.Stats(*saved["stats"].tolist(), seconds=0.0)
    return cronos.Solution(params, stats, cronos.SolveStatus(int(saved["status"])))


def test_two_processes_give_the_single_process_solve(tmp_path):
    x, y = teacher_classes(N, 6, 3, width=4, noise=0.1, seed=0)
    for i, rows in enumerate((slice(0, SPLIT), slice(SPLIT, N))):
        np.save(tmp_path / f"x_{i}.npy", x[rows])
        np.save(tmp_path / f"y_{i}.npy", y[rows])
    run_processes(tmp_path)
    first, second = (np.load(tmp_path / f"solution_{i}.npz") for i in range(worker.PROCESSES))
    for name in first.files:                 # every process returns the same Solution
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)

    single = cronos.solve(x, y, worker.config(), key=jax.random.key(1))
    assert single.stats.iterations >= 20
    assert_same_solution(solution_of(first), single, rtol=1e-10)
