"""Generated data for demos and tests: labels of a random two-layer ReLU teacher."""

import numpy as np


def teacher_classes(n: int, dim: int = 16, num_classes: int = 2, width: int = 8,
                    noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian points labelled by argmax of a random teacher relu(x W1) W2, with label noise.

    No linear model fits these labels; a two-layer ReLU network of ``width`` units does.

    Args:
        n: number of points.
        dim: feature dimension.
        num_classes: number of classes.
        width: hidden units of the teacher.
        noise: fraction of labels replaced by random ones.
        seed: NumPy seed.

    Returns:
        (x [n, dim] float32, y [n] int64 labels 0..num_classes−1).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    hidden = rng.normal(size=(dim, width))
    output = rng.normal(size=(width, num_classes))
    scores = np.maximum(x @ hidden, 0) @ output
    y = np.argmax(scores - scores.mean(axis=0), axis=1)
    flip = rng.random(n) < noise
    y = np.where(flip, rng.integers(0, num_classes, n), y)
    return x.astype(np.float32), y.astype(np.int64)
