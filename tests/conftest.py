"""Shared test set-up: float64 available, offline Hugging Face, a persistent compile cache."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAX_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
