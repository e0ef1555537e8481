"""Streamed CRONOS: features kept in host memory or in a memory-mapped .npy, read in blocks of
rows inside the compiled loop, give the in-memory solve; device memory does not grow with n."""

import jax
import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.cronos import admm
from flax_cronos.data.synthetic import teacher_classes
from tests.cronos.solutions import RELU_FLOAT64_RTOL, assert_same_solution

N, DIM, PATTERNS = 1001, 6, 6
BLOCK = 128                         # smaller than N and not a divisor of it


def data(classes, n=N, seed=0):
    x, y = teacher_classes(n, DIM, classes, width=4, noise=0.1, seed=seed)
    return x.astype(np.float64), y


def config(activation, **kwargs):
    """relu runs plain ADMM, as in test_sharded.py (there Anderson acceleration took the
    rounding differences of the streamed reductions from 1e-15 to 4e-9 in 100 iterations)."""
    kwargs = ({"anderson": 0} if activation == "relu" else {}) | kwargs
    return cronos.CronosConfig(patterns=PATTERNS, beta=0.5, activation=activation, intercept=True,
                               dtype="float64", tol=1e-10, max_iters=100, **kwargs)


@pytest.mark.parametrize("activation, classes, source", [("relu", 3, "host"),
                                                         ("gated_relu", 2, "memmap")])
def test_streamed_solve_equals_in_memory_solve(activation, classes, source, tmp_path):
    x, y = data(classes)
    features = x
    if source == "memmap":
        np.save(tmp_path / "x.npy", x)
        features = np.load(tmp_path / "x.npy", mmap_mode="r")
    in_memory = cronos.solve(x, y, config(activation), key=jax.random.key(1))
    streamed = cronos.solve(features, y, config(activation), key=jax.random.key(1),
                            block_rows=BLOCK)
    assert in_memory.stats.iterations >= 20
    assert_same_solution(streamed, in_memory,
                         rtol=RELU_FLOAT64_RTOL if activation == "relu" else 1e-10)


def test_streamed_float32_memmap_of_float32_features(tmp_path):
    """Weights to 1e-4 of the largest, the objective terms to 1e-5: float32 rounding of the
    reductions, summed block by block, is amplified by the u-system's conditioning (as for
    sharded rows, ``test_sharded``): 0.8e-5 and 1.4e-5 of the largest weight were measured,
    before and after PCG's starting residual was carried between u-steps."""
    x, y = data(3, seed=4)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    settings = cronos.CronosConfig(patterns=PATTERNS, beta=0.5, activation="gated_relu",
                                   dtype="float32", max_iters=40)
    in_memory = cronos.solve(x.astype(np.float32), y, settings, key=jax.random.key(1))
    streamed = cronos.solve(np.load(tmp_path / "x.npy", mmap_mode="r"), y, settings,
                            key=jax.random.key(1), block_rows=300)
    assert_same_solution(streamed, in_memory, rtol=1e-5, weights_rtol=1e-4)


def device_bytes(n: int, block_rows=None) -> int:
    """Arguments + outputs + temporaries of the compiled ADMM loop (XLA's buffer assignment)."""
    x, y = data(2, n=n)
    settings = config("gated_relu")
    problem, precond, _ = admm.prepare(x, y, settings, key=jax.random.key(1), block_rows=block_rows)
    compiled = admm.run_admm.lower(problem, precond, admm.init_state(problem, settings), 1e-8, 10,
                                   settings=admm.settings_of(settings)).compile()
    memory = compiled.memory_analysis()
    return memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes


def test_device_memory_of_the_streamed_loop_does_not_grow_with_n():
    sizes = (8 * BLOCK, 64 * BLOCK)                               # blocks of BLOCK rows both
    streamed = [device_bytes(n, block_rows=BLOCK) for n in sizes]
    in_memory = [device_bytes(n) for n in sizes]
    assert streamed[0] == streamed[1]
    assert in_memory[1] > in_memory[0] + (sizes[1] - sizes[0]) * DIM * 8   # X alone grows so
    assert streamed[1] < in_memory[1] / 4


def test_block_rows_and_mesh_are_checked():
    x, y = data(2)
    with pytest.raises(ValueError, match="block_rows"):
        cronos.solve(x, y, config("gated_relu"), key=jax.random.key(0), block_rows=0)
    with pytest.raises(ValueError, match="not both"):
        cronos.solve(x, y, config("gated_relu"), key=jax.random.key(0), block_rows=100,
                     mesh=cronos.row_mesh(1))
