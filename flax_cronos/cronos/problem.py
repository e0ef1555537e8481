"""The convex program: data checks, gates, activation patterns and its operators.

Notation (DESIGN.md): features X: [n, d], gates Γ: [d, P], masks M = 1[XΓ ≥ 0]: [n, P],
signs E = 2M − 1, targets Y: [n, C]. Weights are stacked as ``u: [H, d, P, C]`` with
``H = 2`` halves for ``relu`` (``u[0] = v``, ``u[1] = w``) and ``H = 1`` for ``gated_relu``.

Operators (never materialised; each is one or two GEMMs with X):

- F u    = Σ_i D_i X (Σ_h σ_h u_h)_i           → [n, C]      (σ = (+1, −1) or (+1,))
- Fᵀ r   = σ_h ⊗ Xᵀ(M ∘ r)                      → [H, d, P, C]
- G u    = E ∘ (X u_h)                          → [H, n, P, C] (relu only: Gu ≥ 0 are the cones)
- Gᵀ s   = Xᵀ(E ∘ s_h)                          → [H, d, P, C]
- FᵀF    acts on Σ_h σ_h u_h only, as H z = (Xᵀ D_i Σ_j D_j X z_j)_i.

The solver works on X̂ = X / σ with σ = ‖X‖₂ (so ‖X̂‖₂ = 1). The program on (X̂, β/σ) has the
solution σ·u: every statistic is unchanged, and the data scale no longer matters to ADMM.

The operators take any object with ``x`` and ``masks`` (a ``Problem`` in memory or a
``rows.RowBlock``). Everything that sums over the rows (``normalise``, ``targets_correlation``,
``residual_terms`` here; ``admm.pattern_gram``, the cone projections and the certificate) goes
through ``rows.reduce_rows``, so it also runs on sharded and streamed rows, and nothing of size
n leaves a block.
"""

from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from flax_cronos.cronos.rows import RowBlock, RowStream, reduce_rows

ACTIVATIONS = ("relu", "gated_relu")
CHECK_ROWS = 65536      # rows of a host array checked for NaN/Inf at a time
TASKS = ("classification", "regression")


def halves(activation: str) -> int:
    """Number of weight halves: 2 (v and w) for relu, 1 (u) for gated_relu."""
    return 2 if activation == "relu" else 1


def half_signs(num_halves: int, dtype) -> jax.Array:
    """σ_h: (+1, −1) for the v and w halves of relu; (+1,) for gated_relu."""
    return jnp.array([1.0, -1.0][:num_halves], dtype)


class Problem(NamedTuple):
    """A convex program on normalised data; a pytree of arrays.

    Attributes:
        x: [n, d] features divided by ``scale`` (intercept column already appended); None when
            streamed.
        masks: [n, P] activation patterns 1[XΓ ≥ 0] as 0/1 floats; None when streamed.
        targets: [n, C] encoded targets; None when streamed.
        scale: σ = ‖X‖₂ of the un-normalised features.
        beta: β/σ, the group-lasso weight of the normalised program.
        stream: the un-normalised rows in host memory (static), or None when x, masks and
            targets are device arrays (see ``rows.py``).
        xt: [d, n] x transposed, kept beside it on a single CPU device
            (``with_transposed_rows``); None elsewhere.
        row_norms: [n] ‖x_j‖ of the rows of x (``with_row_norms``); None when streamed.
        gram: [d, d] XᵀX of the normalised rows (``normalise``), which the Kronecker
            preconditioner reuses; None before.
    """

    x: Optional[jax.Array]
    masks: Optional[jax.Array]
    targets: Optional[jax.Array]
    scale: jax.Array
    beta: jax.Array
    stream: Optional[RowStream] = None
    xt: Optional[jax.Array] = None
    row_norms: Optional[jax.Array] = None
    gram: Optional[jax.Array] = None

    @property
    def num_rows(self) -> int:
        """n (counting rows padded for sharding)."""
        return self.x.shape[0] if self.stream is None else self.stream.num_rows

    @property
    def dim(self) -> int:
        return self.x.shape[1] if self.stream is None else self.stream.dim

    @property
    def num_patterns(self) -> int:
        return (self.masks if self.stream is None else self.stream.masks).shape[1]

    @property
    def num_outputs(self) -> int:
        return (self.targets if self.stream is None else self.stream.targets).shape[1]

    @property
    def dtype(self):
        return self.x.dtype if self.stream is None else self.stream.dtype


Rows = Union[Problem, RowBlock]


# ----------------------------------------------------------------------------- input checks


def check_features(x, name: str = "x"):
    """Returns ``x`` after checking it is a finite, non-empty [n, d] matrix of real numbers.

    Device arrays (e.g. sharded over a mesh) are checked where they are; host arrays, memory-
    mapped ones included, are returned as they are and checked ``CHECK_ROWS`` rows at a time.
    """
    if not isinstance(x, (jax.Array, np.ndarray)):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d]; got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {x.shape}; need at least one row and column")
    # jnp.issubdtype also knows ml_dtypes' bfloat16, a backbone's usual output on accelerators
    if not jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"{name} must hold real numbers; got dtype {x.dtype}")
    if isinstance(x, jax.Array):
        bad = int(jnp.sum(~jnp.isfinite(x)))
    else:
        bad = sum(int(np.sum(~np.isfinite(x[i:i + CHECK_ROWS]))) for i in range(0, len(x), CHECK_ROWS))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or Inf values")
    return x


def encode_targets(y, task: str, n: int, name: str = "y", num_classes: Optional[int] = None,
                   gather: Optional[Callable[[np.ndarray], np.ndarray]] = None
                   ) -> tuple[np.ndarray, int]:
    """Encodes labels or values as the [n, C] target matrix of the program.

    Classification: integer labels 0..C−1. Two classes give C = 1 output with targets ±1
    (label 1 → +1, label 0 → −1); more give one-hot rows. Regression: [n] or [n, C] floats.
    ``num_classes`` fixes the number of classes (validation labels encoded like the
    training labels); by default it is the largest label + 1, and two must occur.
    ``gather``: ``y`` is one process's part of the labels, and ``gather`` stacks every process's
    [2] (smallest, largest label) into [p, 2] (``rows.gather_processes``): the default number of
    classes then counts the labels of every process.

    Returns:
        (targets [n, C] float64, number of classes; 0 for regression).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    y = np.asarray(y)
    if y.shape[:1] != (n,):
        raise ValueError(f"{name} has {y.shape[0] if y.ndim else 0} rows but x has {n}")
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
        raise ValueError(f"{name} must hold finite numbers")
    if task == "regression":
        if y.ndim not in (1, 2):
            raise ValueError(f"{name} must be [n] or [n, C] for regression; got shape {y.shape}")
        return (y.reshape(n, -1).astype(np.float64), 0)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels; got shape {y.shape}")
    labels = y.astype(np.int64)
    if np.any(labels != y) or labels.min() < 0:
        raise ValueError(f"{name} must hold integer class labels 0..C-1")
    if num_classes is None:
        low, high = labels.min(), labels.max()
        if gather is not None:
            ranges = gather(np.array([low, high]))
            low, high = ranges[:, 0].min(), ranges[:, 1].max()
        if low == high:
            raise ValueError(f"{name} holds a single class ({low}); need at least two")
        num_classes = int(high) + 1
    elif labels.max() >= num_classes:
        raise ValueError(f"{name} has label {labels.max()} but there are {num_classes} classes")
    if num_classes == 2:
        return (2.0 * labels - 1.0).reshape(n, 1), 2
    return np.eye(num_classes)[labels], num_classes


def check_gates(gates, dim: int, patterns: int) -> np.ndarray:
    """Checks user-given gates: a finite [d, P] matrix (d counts the intercept column)."""
    gates = np.asarray(gates)
    if gates.shape != (dim, patterns):
        raise ValueError(f"gates must have shape [d, P] = {(dim, patterns)}; got {gates.shape}")
    if not np.all(np.isfinite(gates)):
        raise ValueError("gates contain NaN or Inf values")
    return gates


# ----------------------------------------------------------------------------- data


def sample_gates(key: jax.Array, dim: int, patterns: int, dtype=jnp.float32) -> jax.Array:
    """Gates Γ: [dim, patterns], i.i.d. N(0, 1) from ``key``."""
    return jax.random.normal(key, (dim, patterns), dtype)


def activation_patterns(x: jax.Array, gates: jax.Array) -> jax.Array:
    """Masks M = 1[XΓ ≥ 0]: [n, P] as 0/1 in x's dtype (ties count as active)."""
    return (x @ gates >= 0).astype(x.dtype)


@jax.jit
def normalise(problem: Problem) -> Problem:
    """Divides X (and its transposed copy) by its spectral norm σ = √λ_max(XᵀX), β by σ, and
    keeps XᵀX / σ² for the Kronecker preconditioner. XᵀX is summed over row blocks (through
    the transposed copy when there is one: 10–12 ms against 16–32 ms at n = 20,000, d = 256),
    and streamed rows are divided as they are read."""
    gram = reduce_rows(problem, lambda rows: rows_transpose_dot(rows, rows.x))   # [d, d]
    top = jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], jnp.finfo(problem.dtype).tiny)
    scale = jnp.sqrt(top)
    x = None if problem.x is None else problem.x / scale
    xt = None if problem.xt is None else problem.xt / scale
    return problem._replace(x=x, xt=xt, gram=gram / top, scale=problem.scale * scale,
                            beta=problem.beta / scale)


def with_transposed_rows(problem: Problem) -> Problem:
    """The problem with a copy of Xᵀ [d, n] when its rows are on one CPU device.

    Half of every PCG step and of every gap check is a product Xᵀ r that sums over the rows
    (``pattern_sum_t``). XLA's CPU dot runs it about 3× slower on a row-major [n, d] X than as
    a plain product with a row-major Xᵀ (n = 20,000, d = 256, 16 columns: 8.0 ms against
    2.6 ms; X r costs 3.2 ms), so on CPU the transposed copy is worth its memory (a second copy
    of X). GPU matrix products take either layout at full speed, and sharded or streamed rows
    are left as they are: the problem is returned unchanged there."""
    if problem.x is None or len(problem.x.devices()) != 1:
        return problem
    if next(iter(problem.x.devices())).platform != "cpu":
        return problem
    return problem._replace(xt=jnp.transpose(problem.x))       # a new, row-major [d, n] array


def with_row_norms(problem: Problem) -> Problem:
    """The problem with ‖x_j‖ [n] of its rows when they are device arrays (in memory or
    sharded; streamed rows are left as they are). Every Lawson–Hanson step of the cone
    projections divides the slacks by them (``cone._most_violated``); recomputing them read
    all of X once more per step (n = 20,000, d = 256: 0.9 ms of a 6 ms step)."""
    if problem.x is None:
        return problem
    return problem._replace(row_norms=jnp.linalg.norm(problem.x, axis=1))


# ----------------------------------------------------------------------------- operators


def rows_transpose_dot(rows: Rows, y: jax.Array) -> jax.Array:
    """Xᵀ y = Σ_j x_j ⊗ y_j: [n, ...] → [d, ...] (through the transposed copy when there is one)."""
    if rows.xt is not None:
        return jnp.tensordot(rows.xt, y, axes=1)
    return jnp.tensordot(rows.x, y, axes=((0,), (0,)))


def pattern_sum(rows: Rows, z: jax.Array) -> jax.Array:
    """Σ_i D_i X z_i: [d, P, C] → [n, C]."""
    xz = jnp.einsum("nd,dpc->npc", rows.x, z)
    return jnp.einsum("np,npc->nc", rows.masks, xz)


def pattern_sum_t(rows: Rows, r: jax.Array) -> jax.Array:
    """The adjoint of ``pattern_sum``: (Xᵀ D_i r)_i: [n, C] → [d, P, C].

    The masked residuals are laid out as one [n, P·C] matrix (column i·C + c holds D_i r_c)
    rather than an [n, P, C] array: with one class that is a plain 2-D product, which XLA's
    CPU backend runs faster than the 3-D form (the pattern Gram product H z at n = 20,000,
    d = 256, P = 16: 3.7 ms against 5.4 ms; the same at C = 10)."""
    patterns, classes = rows.masks.shape[1], r.shape[1]
    masked = jnp.repeat(rows.masks, classes, axis=1) * jnp.tile(r, (1, patterns))
    return rows_transpose_dot(rows, masked).reshape(-1, patterns, classes)


def apply_F(rows: Rows, u: jax.Array) -> jax.Array:
    """F u: [H, d, P, C] → [n, C] (the convex model's training-set output)."""
    return pattern_sum(rows, jnp.tensordot(half_signs(u.shape[0], u.dtype), u, axes=1))


def apply_Ft(rows: Rows, r: jax.Array, num_halves: int) -> jax.Array:
    """Fᵀ r: [n, C] → [H, d, P, C]."""
    signs = half_signs(num_halves, r.dtype)
    return signs[:, None, None, None] * pattern_sum_t(rows, r)[None]


def cone_signs(rows: Rows) -> jax.Array:
    """E = 2M − 1: [n, P]."""
    return 2.0 * rows.masks - 1.0


def apply_G(rows: Rows, u: jax.Array) -> jax.Array:
    """G u = E ∘ (X u_h): [H, d, P, C] → [H, n, P, C]."""
    return cone_signs(rows)[None, :, :, None] * jnp.einsum("nd,hdpc->hnpc", rows.x, u)


def apply_Gt(rows: Rows, s: jax.Array) -> jax.Array:
    """Gᵀ s = Xᵀ(E ∘ s_h): [H, n, P, C] → [H, d, P, C]."""
    return jnp.einsum("nd,hnpc->hdpc", rows.x, cone_signs(rows)[None, :, :, None] * s)


# ----------------------------------------------------------------------------- reductions over rows


def targets_correlation(problem: Problem, num_halves: int) -> jax.Array:
    """FᵀY: [H, d, P, C]."""
    return reduce_rows(problem, lambda rows: apply_Ft(rows, rows.targets, num_halves))


def residual_terms(problem: Problem, u: jax.Array, loss_of: Optional[jax.Array] = None) -> tuple:
    """For the residual R = Y − F u of u [H, d, P, C], in one pass over the rows:
    (Fᵀ R [H, d, P, C], ‖R_c‖² [C], ⟨R_c, Y_c⟩ [C]), and with ``loss_of`` (weights w) also
    ‖Y − F w‖² from the same pass."""
    def block(rows):
        residual = rows.targets - apply_F(rows, u)
        terms = (apply_Ft(rows, residual, u.shape[0]), jnp.sum(residual**2, axis=0),
                 jnp.sum(residual * rows.targets, axis=0))
        if loss_of is None:
            return terms
        return terms + (jnp.sum((rows.targets - apply_F(rows, loss_of)) ** 2),)

    return reduce_rows(problem, block)
