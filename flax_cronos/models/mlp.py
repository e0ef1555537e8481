"""Fully connected networks: the paper's deep ReLU MLP backbone and the nonconvex two-layer head."""

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """Flatten, then Dense(w)–ReLU for each width ``w``.

    The paper's backbone is ``MLP((256, 256))``: Dense 256–ReLU–Dense 256–ReLU, no biases.

    Attributes:
        widths: output width of each Dense layer.
        use_bias: whether the Dense layers have biases.
    """

    widths: Sequence[int] = (256, 256)
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Features of a batch.

        Args:
            x: [n, ...] inputs, flattened to [n, d].

        Returns:
            [n, widths[-1]] features.
        """
        x = x.reshape(x.shape[0], -1)
        for width in self.widths:
            x = nn.relu(nn.Dense(width, use_bias=self.use_bias)(x))
        return x


class TwoLayerHead(nn.Module):
    """Dense(width)–ReLU–Dense(outputs), no biases: the nonconvex head of end-to-end baselines.

    Attributes:
        width: hidden units.
        outputs: output dimension C.
    """

    width: int
    outputs: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Scores of a batch.

        Args:
            x: [n, d] features.

        Returns:
            [n, outputs] scores.
        """
        x = nn.relu(nn.Dense(self.width, use_bias=False)(x))
        return nn.Dense(self.outputs, use_bias=False)(x)
