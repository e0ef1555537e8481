"""Convex solutions as two-layer networks: parameters, prediction and the weight mapping.

relu:        f(x)_c = Σ_i (x·v_ic)₊ − (x·w_ic)₊
gated_relu:  f(x)_c = Σ_i 1[x·g_i ≥ 0] (x·u_ic)

Each group v_ic ≠ 0 becomes a hidden unit with input weights v_ic / √‖v_ic‖ and output weight
+√‖v_ic‖ to class c (−√‖w_ic‖ for w); positive homogeneity of the ReLU makes the network equal
to the convex model. With an intercept, x is extended by a constant 1, whose weight becomes the
unit's bias b1. The class is sign(f) for one output and argmax(f) otherwise.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ConvexParams:
    """A solution of the convex program.

    Attributes:
        gates: [d, P] gate vectors Γ (d counts the intercept column when ``intercept``).
        v: [P, d, C] positive-neuron weights (relu), or the weights u (gated_relu).
        w: [P, d, C] negative-neuron weights (relu); None for gated_relu.
        intercept: whether inputs get a constant-1 column appended.
    """

    gates: jax.Array
    v: jax.Array
    w: Optional[jax.Array]
    intercept: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @property
    def activation(self) -> str:
        return "gated_relu" if self.w is None else "relu"

    @property
    def num_outputs(self) -> int:
        return self.v.shape[-1]


def with_intercept(x, intercept: bool):
    """Appends the constant-1 column when ``intercept``: [..., d] → [..., d (+1)]; a NumPy
    array stays on the host."""
    if not intercept:
        return x
    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.concatenate([x, xp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def predict(params: ConvexParams, x: jax.Array) -> jax.Array:
    """The network output f(x): [n, d] → [n, C]."""
    x = with_intercept(jnp.asarray(x, params.v.dtype), params.intercept)
    pre_v = jnp.einsum("nd,pdc->npc", x, params.v)
    if params.w is None:
        gate = (x @ params.gates >= 0).astype(x.dtype)
        return jnp.einsum("np,npc->nc", gate, pre_v)
    pre_w = jnp.einsum("nd,pdc->npc", x, params.w)
    return jnp.sum(jax.nn.relu(pre_v) - jax.nn.relu(pre_w), axis=1)


def classify(outputs: jax.Array) -> jax.Array:
    """Class labels from outputs [n, C]: (f > 0) for C = 1, argmax otherwise."""
    if outputs.shape[-1] == 1:
        return (outputs[:, 0] > 0).astype(jnp.int32)
    return jnp.argmax(outputs, axis=-1).astype(jnp.int32)


def score(params: ConvexParams, x, y, task: str) -> float:
    """Accuracy (classification) or mean squared error (regression) of the network on (x, y)."""
    outputs = np.asarray(predict(params, x))
    if task == "regression":
        return float(np.mean((outputs - np.asarray(y, float).reshape(outputs.shape)) ** 2))
    return float(np.mean(np.asarray(classify(outputs)) == np.asarray(y)))


def two_layer_weights(params: ConvexParams, drop_inactive: bool = False) -> dict[str, np.ndarray]:
    """Maps the convex solution to two-layer network weights.

    Units are ordered (half, pattern, class). The network is
    ``relu(x @ W1 + b1) @ W2`` (relu) or ``(gate(x) * (x @ W1 + b1)) @ W2`` (gated_relu) with
    ``gate(x) = 1[x @ gate_W1 + gate_b1 ≥ 0]``.

    Returns:
        ``W1`` [d, m], ``b1`` [m], ``W2`` [m, C], and for gated_relu ``gate_W1`` [d, m],
        ``gate_b1`` [m]; m = H·P·C, or the number of nonzero groups with ``drop_inactive``.
    """
    groups = [params.v] if params.w is None else [params.v, params.w]
    num_patterns, dim, num_outputs = params.v.shape
    stacked = np.stack([np.asarray(g) for g in groups])                  # [H, P, d, C]
    norms = np.linalg.norm(stacked, axis=2)                             # [H, P, C]
    safe = np.where(norms > 0, np.sqrt(np.maximum(norms, 1e-300)), 1.0)
    hidden = np.moveaxis(stacked / safe[:, :, None, :], 2, 0).reshape(dim, -1)   # [d, H·P·C]
    sign = np.array([1.0, -1.0])[: len(groups), None, None]
    out_scale = (sign * np.where(norms > 0, np.sqrt(norms), 0.0)).reshape(-1)
    classes = np.broadcast_to(np.arange(num_outputs), norms.shape).reshape(-1)
    w2 = np.zeros((out_scale.size, num_outputs), stacked.dtype)
    w2[np.arange(out_scale.size), classes] = out_scale
    gates = np.asarray(params.gates)
    patterns = np.broadcast_to(np.arange(num_patterns)[:, None], norms.shape[1:])
    unit_gates = gates[:, np.tile(patterns.reshape(-1), len(groups))]   # [d, H·P·C]
    keep = norms.reshape(-1) > 0 if drop_inactive else np.ones(out_scale.size, bool)

    def split_bias(matrix):
        if params.intercept:
            return matrix[:-1, keep], matrix[-1, keep]
        return matrix[:, keep], np.zeros(int(keep.sum()), matrix.dtype)

    weights = dict(zip(("W1", "b1"), split_bias(hidden)), W2=w2[keep])
    if params.w is None:
        weights.update(zip(("gate_W1", "gate_b1"), split_bias(unit_gates)))
    return weights


def network_predict(weights: dict, x: jax.Array) -> jax.Array:
    """Evaluates the mapped network of ``two_layer_weights``: [n, d] → [n, C]."""
    pre = x @ weights["W1"] + weights["b1"]
    if "gate_W1" in weights:
        hidden = (x @ weights["gate_W1"] + weights["gate_b1"] >= 0) * pre
    else:
        hidden = jax.nn.relu(pre)
    return hidden @ weights["W2"]
