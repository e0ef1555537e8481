"""The CRONOS convex solver: pure JAX (never imports flax, optax or orbax)."""

from flax_cronos.cronos.admm import (AdmmState, CronosConfig, Solution, SolveStatus, Stats,
                                     solve)
from flax_cronos.cronos.network import (ConvexParams, classify, network_predict, predict, score,
                                        two_layer_weights)
from flax_cronos.cronos.path import Path, PathPoint, default_betas, solve_path
from flax_cronos.cronos.problem import activation_patterns, sample_gates
from flax_cronos.cronos.rows import global_row_mesh, row_mesh

__all__ = ["AdmmState", "ConvexParams", "CronosConfig", "Path", "PathPoint", "Solution",
           "SolveStatus", "Stats", "activation_patterns", "classify", "default_betas",
           "global_row_mesh", "network_predict", "predict", "row_mesh", "sample_gates", "score",
           "solve", "solve_path", "two_layer_weights"]
