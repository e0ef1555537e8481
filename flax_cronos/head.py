"""ConvexHead: a Linen module holding a solution of the convex two-layer program.

Parameters (the ``params`` collection of the module), with d' = d (+1 with an intercept):

- ``gates`` [d', P]: the gate vectors Γ;
- ``v`` [P, d', C] and, for relu, ``w`` [P, d', C]: the convex weights.

The output is the convex model itself (``cronos.network``):

    relu:        f(x)_c = Σ_i (x·v_ic)₊ − (x·w_ic)₊
    gated_relu:  f(x)_c = Σ_i 1[x·g_i ≥ 0] (x·u_ic)

which is differentiable in x (and in v, w), so gradients reach the backbone that computes x.
Fresh parameters are N(0, 1) gates and zero weights; a CRONOS solve fills them
(``ConvexHead.from_solution``, or ``head_params`` to replace a head inside a larger model).
"""

from typing import Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_cronos.cronos import ConvexParams, Solution, predict
from flax_cronos.cronos.problem import ACTIVATIONS


class ConvexHead(nn.Module):
    """The convex two-layer ReLU head: features [n, d] → outputs [n, C].

    Attributes:
        patterns: P, the number of gates.
        outputs: C (1 for binary classification, the number of classes otherwise).
        activation: "relu" or "gated_relu".
        intercept: whether features get a constant-1 column appended.
        param_dtype: dtype of fresh parameters.
    """

    patterns: int
    outputs: int
    activation: str = "relu"
    intercept: bool = False
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        """features: [n, d] → [n, C], computed in ``param_dtype``."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {self.activation!r}")
        if features.ndim != 2:
            raise ValueError(f"features must be [n, d]; got shape {features.shape}")
        dim = features.shape[-1] + int(self.intercept)
        weight_shape = (self.patterns, dim, self.outputs)
        gates = self.param("gates", nn.initializers.normal(1.0), (dim, self.patterns),
                           self.param_dtype)
        v = self.param("v", nn.initializers.zeros, weight_shape, self.param_dtype)
        w = (self.param("w", nn.initializers.zeros, weight_shape, self.param_dtype)
             if self.activation == "relu" else None)
        return predict(ConvexParams(gates, v, w, self.intercept), features)

    @classmethod
    def from_solution(cls, solution: Union[Solution, ConvexParams]) -> tuple["ConvexHead", dict]:
        """The head of a solution and its parameters: ``head.apply({'params': p}, x)``."""
        params = solution.params if isinstance(solution, Solution) else solution
        patterns, _, outputs = params.v.shape
        head = cls(patterns=patterns, outputs=outputs, activation=params.activation,
                   intercept=params.intercept, param_dtype=params.v.dtype)
        return head, head_params(params)

    def to_convex(self, params: dict) -> ConvexParams:
        """The ``ConvexParams`` held by this head's ``params``."""
        return ConvexParams(gates=params["gates"], v=params["v"], w=params.get("w"),
                            intercept=self.intercept)


def head_params(params: ConvexParams) -> dict:
    """A solution as ConvexHead parameters: {'gates', 'v'(, 'w')}."""
    weights = {"gates": params.gates, "v": params.v}
    if params.w is not None:
        weights["w"] = params.w
    return weights
