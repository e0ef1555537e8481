"""flax-cronos: convex two-layer heads for Flax networks, trained to global optimality by CRONOS."""

from flax_cronos import cronos

__version__ = "0.1.0"
__all__ = ["cronos"]
