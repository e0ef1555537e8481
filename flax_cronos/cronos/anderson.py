"""Anderson acceleration of ADMM, seen as a fixed-point iteration.

Scaled ADMM (``admm.py``) is the Douglas–Rachford iteration z ← T(z) on z = v + λ: from z,
v = prox(z) and λ = z − v, and the u-step and the over-relaxation give T(z) = û + λ, the
point the next prox is applied to. T is averaged (non-expansive), and near the optimum plain
iterates converge linearly with a rate close to 1: the relu benchmark at n = 20,000 needed
750 iterations.

Anderson acceleration (type II; Walker & Ni 2011; for Douglas–Rachford, Fu, Zhang & Boyd
2020) keeps the last m steps' differences ΔZ = [z_{i+1} − z_i] and ΔG = [g_{i+1} − g_i] of
the points and their residuals g(z) = T(z) − z, and replaces T(z_k) by

    z_{k+1} = T(z_k) − (ΔZ + ΔG) γ,     γ = argmin_γ ‖g_k − ΔG γ‖² + ε‖ΔG‖²_F ‖γ‖²,

the combination of the last m images whose linearised residual is smallest (a multisecant
method for g(z) = 0; ε regularises the m × m normal equations, ``REGULARISATION``). The
prox is applied to z_{k+1} instead of T(z_k), so an iteration costs what a plain one does
and v stays a prox output (feasible, as the duality-gap certificate needs).

The memory starts afresh (the next step is plain) when T changes: at a (re)start (iteration
0; a β-path point changes β), when ρ changes (λ = θ/ρ), and after an iteration whose cone
projections were cut short (``admm.PROJECTION_ITERS``: T was evaluated inexactly; while the
relu program's active sets fill, extrapolating from such steps moved them further and cost
Lawson–Hanson steps: n = 4000 took 12% more); and when the residual grew more than
``GROWTH``-fold in one step, a sign that the secant model no longer describes T. Going back
to the last plain image instead, as safeguards with a convergence proof do, cost more than
it saved: the relu n = 20,000 solve took 350 iterations that way, 200 with a fresh memory
(docs/benchmarks.md). Optimality is certified by the duality gap either way, and
``CronosConfig.anderson = 0`` runs plain ADMM.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

REGULARISATION = 1e-6   # ε above, relative to ‖ΔG‖²_F
GROWTH = 2.0            # the memory starts afresh after a step whose residual grew more


class Memory(NamedTuple):
    """The last ``depth`` steps' differences and the point they end at (a pytree).

    Attributes:
        dz, dg: [depth, N] the differences ΔZ and ΔG as rows, in a ring (step i in row
            i % depth).
        z, g: [N] the last point z_k and its residual g(z_k).
        count: points recorded since the memory started afresh (differences: count − 1).
        rho: the ρ of those points.
    """

    dz: jax.Array
    dg: jax.Array
    z: jax.Array
    g: jax.Array
    count: jax.Array
    rho: jax.Array


def empty_memory(size: int, depth: int, dtype) -> Memory:
    zeros = jnp.zeros((depth, size), dtype)
    return Memory(zeros, zeros, jnp.zeros(size, dtype), jnp.zeros(size, dtype), jnp.asarray(0),
                  jnp.zeros((), dtype))


def accelerate(memory: Memory, z: jax.Array, image: jax.Array, rho: jax.Array,
               fresh: jax.Array) -> tuple[jax.Array, Memory]:
    """The point to apply the next prox to, from the current point z and its image T(z)
    (arrays of any one shape), and the memory with them; ``fresh``: T changed or was
    evaluated inexactly (a restart)."""
    shape = z.shape
    z, g = z.ravel(), (image - z).ravel()
    grew = jnp.sum(g**2) > GROWTH**2 * jnp.sum(memory.g**2)
    count = jnp.where(fresh | (memory.rho != rho) | grew, 0, memory.count)
    depth = memory.dz.shape[0]
    slot = (count - 1) % depth
    record = count > 0
    dz = jnp.where(record, memory.dz.at[slot].set(z - memory.z), memory.dz)
    dg = jnp.where(record, memory.dg.at[slot].set(g - memory.g), memory.dg)
    used = jnp.arange(depth) < jnp.minimum(count, depth)
    gamma = _coefficients(jnp.where(used[:, None], dg, 0), g, used)
    point = image.ravel() - gamma @ (dz + dg)
    return point.reshape(shape), Memory(dz, dg, z, g, count + 1, jnp.asarray(rho, z.dtype))


def _coefficients(dg: jax.Array, g: jax.Array, used: jax.Array) -> jax.Array:
    """γ = argmin ‖g − ΔG γ‖² + ε‖ΔG‖²_F ‖γ‖² over the used rows of ``dg`` (zero elsewhere)."""
    gram = dg @ dg.T
    shift = REGULARISATION * jnp.trace(gram) + jnp.finfo(g.dtype).tiny
    gram = gram + jnp.diag(jnp.where(used, shift, 1.0))
    return jnp.where(used, jnp.linalg.solve(gram, dg @ g), 0)
