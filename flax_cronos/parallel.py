"""Data parallelism of the networks' device calls over a one-axis device mesh.

CRONOS-AM's backbone steps, feature extraction and evaluation run over the same mesh the head's
solves shard their rows over (``cronos.row_mesh``): parameters and optimizer state are
replicated on every device and each batch is split by rows. XLA's partitioner then runs a step
on every device's rows and all-reduces the gradient of the mean loss,

    ∇ (1/B) Σ_b ℓ_b  =  Σ_devices ∇ (1/B) Σ_{b on the device} ℓ_b,

so a step equals the single-device step up to rounding (the sums are taken in another order).
Without a mesh nothing is placed: arrays go to the default device as usual.
"""

from typing import Optional

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flax_cronos.cronos.rows import auto_mesh


class DataParallel:
    """Where a network's arrays live: on the default device (``mesh`` None) or over ``mesh``
    (taken in Auto mode, as the solves take it: ``rows.auto_mesh``).

    Raises:
        ValueError: when the mesh has more than one axis or spans several processes (whose
            batches would have to be read per process; the head's solves support that, the
            trainer not yet).
    """

    def __init__(self, mesh: Optional[Mesh] = None):
        if mesh is not None and mesh.is_multi_process:
            raise ValueError("mesh must hold this process's devices only (cronos.row_mesh); "
                             "CRONOS-AM does not spread batches over several processes")
        self.mesh = None if mesh is None else auto_mesh(mesh)

    @property
    def devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def check_batch(self, size: int, name: str) -> None:
        """Raises ValueError unless batches of ``size`` rows split evenly over the devices."""
        if size % self.devices:
            raise ValueError(f"{name} {size} must be a multiple of the {self.devices} devices "
                             "of the mesh")

    def replicate(self, tree):
        """``tree``'s arrays on every device of the mesh (unchanged without a mesh)."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def split_rows(self, tree):
        """``tree``'s arrays [B, …] split by rows over the mesh, each device getting only its
        own rows (unchanged without a mesh)."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names[0])))

    def replicated_outputs(self) -> dict:
        """``jax.jit`` options that keep every output replicated over the mesh (none without
        one), so that a step's parameters come back where its inputs were."""
        if self.mesh is None:
            return {}
        return {"out_shardings": NamedSharding(self.mesh, PartitionSpec())}
