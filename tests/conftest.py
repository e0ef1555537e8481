"""Shared test set-up: float64 available, offline Hugging Face, 8 host CPU devices.

No persistent compilation cache: with jax 0.10.2 on CPU, writing one executable of the relu
solver to it (tests/test_trainer.py's zero-head test, late in the full suite) aborted the
process inside ``put_executable_and_time``, twice in a row; alone, the test passes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# 8 host CPU devices for the sharded-solver tests (tests/cronos/test_sharded.py); jit without a
# mesh still runs on one device.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                                     "--xla_force_host_platform_device_count=8"]))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
