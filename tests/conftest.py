"""Shared test set-up: float64 available, offline Hugging Face, 8 host CPU devices, XLA's CPU
code compiled at optimisation level 0, a persistent compile cache shared by the worker
processes, and compiled programs released after each test module."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# XLA flags, set in the environment so that the subprocesses tests start get them too:
# - 8 host CPU devices for the sharded-solver tests (tests/cronos/test_sharded.py); jit without
#   a mesh still runs on one device;
# - LLVM optimisation level 0 for XLA's CPU code: the suite is compile-bound (its programs are
#   small and run briefly), and it ran in 8 min 24 s instead of 11 min 33 s from an empty cache.
#   The level changes the last bit of some float results, so processes whose results a test
#   compares bit for bit run with the same flags.
for flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), flag]))

# the persistent compile cache, set in the environment so that the pytest-xdist workers and the
# subprocesses tests start (the command line, killed and resumed training runs) share it: each
# compiled the same programs again, 20 s a run for the trainer's
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parents[1] / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# on a GPU, every worker process takes memory as it needs it instead of 75% of it at start
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
# this process has read its JAX settings; the subprocesses tests start repeat one another's
# programs (the trainer's resumed runs, the command line's), small ones too, so they keep every
# program in the cache: 4 s less a trainer run
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drops JAX's in-memory compilation caches after each test module. XLA on CPU maps every
    executable's code into memory in a few separate regions; the whole suite in one process
    compiles thousands of programs, and keeping them all passed Linux's limit of 65,530 memory
    maps per process (``vm.max_map_count``) late in the suite: a failed map aborted or crashed
    the process inside a compile. Programs a later module needs again come back from the
    persistent cache above."""
    yield
    jax.clear_caches()
