"""CRONOS-AM on Fashion-MNIST (10 classes): the paper's deep ReLU MLP backbone.

    flax-cronos train recipes/mlp_fashion_mnist.py --workdir checkpoints/mlp_fashion_mnist

The defaults run on 2 CPU cores in a few minutes (a 10,000-image training subset); for the
full data: --config.data.train_size=None --config.data.val_size=None.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(dict(
        dataset="fashion_mnist", path="../shared/data/fashion-mnist", classes=None,
        train_size=10_000, val_size=2_000, seed=0))
    config.model = ml_collections.ConfigDict(dict(
        backbone="mlp", widths=(256, 256), normalization="global", input_size=None))
    config.cronos = ml_collections.ConfigDict(dict(
        patterns=10, beta=1e-3, activation="gated_relu", task="classification", intercept=False,
        rho=None, preconditioner="kronecker", rank=10, max_iters=50, tol=1e-3,
        pcg_max_iters=50, anderson=10, dtype="float32"))
    config.trainer = ml_collections.ConfigDict(dict(
        rounds=10, steps_per_round=10, batch_size=1024, loss="mse", trainable="^backbone/",
        warm_start=True, auto_beta=True, feature_batch_size=2048, seed=0, max_to_keep=3,
        optimizer="dadapt_adamw", learning_rate=1.0, augment=False, crop_padding=4))
    return config
