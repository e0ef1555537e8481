"""A small convolutional backbone for 28×28 grey and 32×32 colour images."""

import flax.linen as nn
import jax


class SmallCNN(nn.Module):
    """``blocks`` × [Conv(channels, 3×3, SAME)–ReLU–AvgPool(2×2, stride 2)], then flatten.

    An [n, H, W, C] input gives [n, (H // 2**blocks) * (W // 2**blocks) * channels] features,
    e.g. 8·8·32 = 2048 for 32×32 images with the defaults, 7·7·32 = 1568 for 28×28.

    Attributes:
        channels: output channels of every convolution.
        blocks: number of conv–ReLU–pool blocks.
    """

    channels: int = 32
    blocks: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Features of a batch of images.

        Args:
            x: [n, H, W, C] images, or [n, H, W] grey images (a channel axis is added).

        Returns:
            [n, features] flattened feature maps.
        """
        if x.ndim == 3:
            x = x[..., None]
        for _ in range(self.blocks):
            x = nn.relu(nn.Conv(self.channels, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return x.reshape(x.shape[0], -1)
