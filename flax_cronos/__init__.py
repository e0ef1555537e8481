"""flax-cronos: convex two-layer heads for Flax networks, trained to global optimality by CRONOS.

``flax_cronos.cronos`` (the solver) needs only JAX; the Flax parts (``ConvexHead``,
``AlternatingTrainer``) are imported on first use, so the solver stays light.
"""

import importlib

from flax_cronos import cronos

__version__ = "0.1.0"
__all__ = ["AlternatingConfig", "AlternatingTrainer", "ConvexHead", "cronos"]

_LAZY = {"ConvexHead": "flax_cronos.head", "AlternatingConfig": "flax_cronos.trainer",
         "AlternatingTrainer": "flax_cronos.trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flax_cronos' has no attribute {name!r}")
