"""Where the rows of the program live, and the two ways the operators reach them.

Every operator of ``problem.py`` is a sum over the rows j of X (Fᵀr = Σ_j x_j ⊗ (m_j ∘ r_j),
XᵀX = Σ_j x_j x_jᵀ, ...) or is computed row by row (F u, G u, the cone slacks). So each is
written once, for a ``RowBlock`` of consecutive rows, and ``reduce_rows`` combines blocks:

- **in memory** (the default): the block is all of X, on one device;
- **sharded**: the same code on arrays whose rows are sharded over a one-axis device mesh
  (``place_rows``). XLA's SPMD partitioner runs each block function on every device's rows and
  all-reduces the results, which are [d, P]-sized: X and every [n, ·] array stay where they are.
  The mesh may span the devices of several processes (hosts, after ``jax.distributed.initialize``;
  ``global_row_mesh``): each process then gives only its own rows (``place_process_rows``);
- **streamed** (``RowStream``): X, the masks and the targets stay in host memory (or a
  memory-mapped ``.npy``); inside the compiled program a loop reads one block of ``block_rows``
  rows at a time through a host callback (``jax.pure_callback``), so device memory holds
  block-sized buffers (a few per product in the program), never X. A stream is static and
  compared by identity: each streamed solve compiles its programs (host callbacks also keep
  them out of JAX's persistent compilation cache).

Single rows (the cone projections' active constraints) are read with ``gather_rows``.
Padding rows (to a multiple of the device count, after each process's rows when they are
spread over processes, or of the block size) are zero rows with zero targets: they add nothing
to F, Fᵀ, XᵀX or the loss, and their cone constraints 0 ≥ 0 hold.
"""

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from flax_cronos.cronos.network import with_intercept

if TYPE_CHECKING:
    from flax_cronos.cronos.problem import Problem

T = TypeVar("T")


class RowBlock(NamedTuple):
    """Rows ``start`` … ``start + b − 1`` of the normalised program.

    Attributes:
        x: [b, d] features.
        masks: [b, P] activation patterns as 0/1 floats.
        targets: [b, C] targets.
        start: index of the first row in X (an int, or a traced integer when streamed).
        xt: [d, b] the same features transposed, where the program keeps that copy (see
            ``problem.with_transposed_rows``), else None.
        norms: [b] ‖x_j‖, where the program keeps them (``problem.with_row_norms``), else None.
    """

    x: jax.Array
    masks: jax.Array
    targets: jax.Array
    start: Any
    xt: Optional[jax.Array] = None
    norms: Optional[jax.Array] = None

    def row_norms(self) -> jax.Array:
        """‖x_j‖ [b]: the kept ``norms``, or computed from x (one pass) where none are kept."""
        return jnp.linalg.norm(self.x, axis=1) if self.norms is None else self.norms


# ----------------------------------------------------------------------------- streamed rows


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class RowStream:
    """Rows kept in host memory and read in blocks; static in a pytree (compared by identity).

    Attributes:
        features: [n, d₀] un-normalised features, a NumPy array or ``np.load(..., mmap_mode="r")``.
        targets: [n, C] encoded targets.
        block_rows: b, the rows read at a time; the last block is padded with zero rows.
        intercept: whether a constant-1 column is appended to the features as they are read.
        dtype: the working dtype.
        masks: [n, P] bool activation patterns (None until ``with_masks``).
    """

    features: np.ndarray
    targets: np.ndarray
    block_rows: int
    intercept: bool
    dtype: np.dtype
    masks: Optional[np.ndarray] = None

    @property
    def num_rows(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1] + int(self.intercept)

    @property
    def num_blocks(self) -> int:
        return -(-self.num_rows // self.block_rows)

    def features_of(self, index) -> np.ndarray:
        """Rows ``index`` (a slice or an integer array) of X in the working dtype, with the
        intercept column: [..., d]."""
        return with_intercept(np.asarray(self.features[index], self.dtype), self.intercept)

    def block_features(self, index: int) -> np.ndarray:
        """Block ``index`` of X (un-normalised, with the intercept column): [b, d], zero-padded."""
        start = index * self.block_rows
        return self._pad(self.features_of(slice(start, start + self.block_rows)))

    def read_block(self, index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x [b, d] un-normalised, masks [b, P], targets [b, C]) of block ``index``."""
        index = int(index)
        rows = slice(index * self.block_rows, (index + 1) * self.block_rows)
        return (self.block_features(index), self._pad(self.masks[rows].astype(self.dtype)),
                self._pad(np.asarray(self.targets[rows], self.dtype)))

    def read_rows(self, index) -> tuple[np.ndarray, np.ndarray]:
        """(x [..., d] un-normalised, masks [..., P]) of the rows ``index`` (any integer shape)."""
        index = np.asarray(index)
        return self.features_of(index), self.masks[index].astype(self.dtype)

    def _pad(self, block: np.ndarray) -> np.ndarray:
        return np.pad(block, [(0, self.block_rows - block.shape[0])] + [(0, 0)] * (block.ndim - 1))

    def with_masks(self, patterns: Callable[[jax.Array], jax.Array]) -> "RowStream":
        """The stream with its masks computed block by block on the device: ``patterns`` maps a
        block of features [b, d] to its 0/1 masks [b, P]."""
        blocks = [np.asarray(patterns(jnp.asarray(self.block_features(i))), bool)
                  for i in range(self.num_blocks)]
        return dataclasses.replace(self, masks=np.concatenate(blocks)[: self.num_rows])


# ----------------------------------------------------------------------------- the two accesses


def _add(a: T, b: T) -> T:
    return jax.tree.map(jnp.add, a, b)


def reduce_rows(problem: "Problem", block_fn: Callable[[RowBlock], T],
                combine: Callable[[T, T], T] = _add) -> T:
    """Combines ``block_fn`` over the row blocks of ``problem`` (a ``Problem``).

    Args:
        problem: the program; its rows are on devices (possibly sharded) or streamed.
        block_fn: a block of normalised rows ↦ a pytree of partial results (e.g. [d, P, C]).
        combine: merges two partial results (associative; sum by default). Blocks come in
            order, so ``combine(earlier, later)`` can break ties towards earlier rows.

    Returns:
        ``block_fn`` of all rows in memory, or the combination over the stream's blocks.
    """
    stream = problem.stream
    if stream is None:
        return block_fn(RowBlock(problem.x, problem.masks, problem.targets, 0, problem.xt,
                                 problem.row_norms))
    dim, patterns, outputs = stream.dim, stream.masks.shape[1], stream.targets.shape[1]
    shapes = tuple(jax.ShapeDtypeStruct((stream.block_rows, k), stream.dtype)
                   for k in (dim, patterns, outputs))

    def block(index):
        x, masks, targets = jax.pure_callback(stream.read_block, shapes, index)
        return block_fn(RowBlock(x / problem.scale, masks, targets, index * stream.block_rows))

    return jax.lax.fori_loop(1, stream.num_blocks, lambda i, acc: combine(acc, block(i)),
                             block(0))


def gather_rows(problem: "Problem", index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Single rows: (x_j [..., d], m_j [..., P]) of normalised X and the masks, j = ``index``."""
    stream = problem.stream
    if stream is None:
        return problem.x[index], problem.masks[index]
    shapes = (jax.ShapeDtypeStruct(index.shape + (stream.dim,), stream.dtype),
              jax.ShapeDtypeStruct(index.shape + (stream.masks.shape[1],), stream.dtype))
    x, masks = jax.pure_callback(stream.read_rows, shapes, index)
    return x / problem.scale, masks


# ----------------------------------------------------------------------------- sharded rows


def row_mesh(num_devices: int = 0, axis: str = "rows") -> Mesh:
    """A one-axis mesh over the first ``num_devices`` local devices (all of them when 0)."""
    devices = jax.local_devices()
    if not 0 <= num_devices <= len(devices):
        raise ValueError(f"devices must be between 0 (all) and {len(devices)}; got {num_devices}")
    chosen = devices[: num_devices or len(devices)]
    return jax.make_mesh((len(chosen),), (axis,), axis_types=(AxisType.Auto,), devices=chosen)


def global_row_mesh(axis: str = "rows") -> Mesh:
    """A one-axis mesh over the devices of every process (``jax.devices()`` after
    ``jax.distributed.initialize``), grouped by process: process i's devices hold its rows."""
    devices = sorted(jax.devices(), key=lambda device: (device.process_index, device.id))
    return Mesh(np.array(devices), (axis,), axis_types=(AxisType.Auto,))


def auto_mesh(mesh: Mesh) -> Mesh:
    """Checks ``mesh`` has one axis and returns it with that axis in Auto mode, where XLA's
    partitioner chooses the collectives (``jax.make_mesh`` makes Explicit axes by default)."""
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must have one axis (over rows); got axes {mesh.axis_names}")
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,))


def mesh_of(x) -> Optional[Mesh]:
    """The mesh of an array sharded over several devices by a NamedSharding, else None."""
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
        return sharding.mesh
    return None


def row_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over the mesh's axis, the other dimensions replicated."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_rows(array, rows: int):
    """``array`` [n, ...] with zero rows appended up to ``rows`` rows (a host array stays one)."""
    if rows == array.shape[0]:
        return array
    widths = [(0, rows - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
    return jnp.pad(array, widths) if isinstance(array, jax.Array) else np.pad(array, widths)


def place_rows(array, mesh: Mesh) -> jax.Array:
    """Shards the rows of ``array`` [n, ...] over ``mesh``, first padding it with zero rows to a
    multiple of the device count. A host array goes to each device in its shard only."""
    return jax.device_put(pad_rows(array, _round_up(array.shape[0], mesh.size)), row_sharding(mesh))


def holds_process_rows(x, mesh: Optional[Mesh]) -> bool:
    """Whether ``x`` is one process's part of rows spread over ``mesh``: the mesh spans several
    processes and ``x`` is not already an array over them."""
    return (mesh is not None and mesh.is_multi_process
            and not (isinstance(x, jax.Array) and not x.is_fully_addressable))


def gather_processes(value) -> np.ndarray:
    """Every process's ``value`` (same shape in each) stacked in process order: [p, ...]. A
    collective: every process calls it."""
    return np.asarray(multihost_utils.process_allgather(np.asarray(value)))


def place_process_rows(arrays: Sequence[Any], mesh: Mesh) -> list[jax.Array]:
    """Global arrays whose rows are every process's ``arrays``, in process order, sharded over
    ``mesh`` (a mesh of every process's devices, grouped by process: ``global_row_mesh``).

    Process i gives its own n_i rows of each array ([n_i, ...], host or local) and pads them with
    zero rows to r = ⌈max_i n_i / L⌉ · L, L being its devices in the mesh; the global arrays have
    p · r rows, process i's on its own devices, and no process ever holds another's rows. A
    collective (the row counts are exchanged): every process calls it, with the same mesh.
    """
    local = len(mesh.local_devices)
    if local * jax.process_count() != mesh.size:
        raise ValueError(f"the mesh must hold the same number of devices of every process; "
                         f"this process has {local} of its {mesh.size} "
                         f"({jax.process_count()} processes)")
    most = int(np.max(gather_processes(arrays[0].shape[0])))
    rows = _round_up(most, local)
    sharding = row_sharding(mesh)
    return [jax.make_array_from_process_local_data(
        sharding, pad_rows(np.asarray(a), rows), (rows * jax.process_count(),) + a.shape[1:])
        for a in arrays]
