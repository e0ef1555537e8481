"""One process of the two-process solve of tests/cronos/test_multihost.py:

    python multihost_worker.py PORT PROCESS_ID DIR

joins the coordinator at 127.0.0.1:PORT (process 0 runs it), reads only its own rows
(DIR/x_{i}.npy memory-mapped, DIR/y_{i}.npy), solves with the rows sharded over both processes'
devices and writes its Solution to DIR/solution_{i}.npz. Run with JAX_PLATFORMS=cpu and
XLA_FLAGS=--xla_force_host_platform_device_count=2 (two devices per process).
"""

import sys
from pathlib import Path

import jax
import numpy as np

from flax_cronos import cronos

PROCESSES, DEVICES = 2, 2      # devices per process


def config() -> cronos.CronosConfig:
    return cronos.CronosConfig(patterns=6, beta=0.5, activation="gated_relu", intercept=True,
                               dtype="float64", tol=1e-8, max_iters=150)


def main(port: str, process_id: int, folder: Path) -> None:
    jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=PROCESSES,
                               process_id=process_id, initialization_timeout=60)
    mesh = cronos.global_row_mesh()
    assert (mesh.size, len(mesh.local_devices)) == (PROCESSES * DEVICES, DEVICES)
    x = np.load(folder / f"x_{process_id}.npy", mmap_mode="r")
    y = np.load(folder / f"y_{process_id}.npy")
    solution = cronos.solve(x, y, config(), key=jax.random.key(1), mesh=mesh)
    weights = {name: np.asarray(getattr(solution.params, name)) for name in ("gates", "v", "w")
               if getattr(solution.params, name) is not None}
    np.savez(folder / f"solution_{process_id}.npz", status=int(solution.status),
             stats=np.array(solution.stats[:-1], np.float64), **weights)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
