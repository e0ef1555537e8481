"""CRONOS-AM on CIFAR-10 with the paper's small CNN (Conv 32 3×3–ReLU–AvgPool 2, twice).

    flax-cronos train recipes/cnn_cifar10.py --workdir checkpoints/cnn_cifar10

All ten classes by default; the paper's binary cat vs dog task is
--config.data.classes=(3,5) (the paper's CNN settings: P = 8, batch 1024, 10 steps per solve).
The defaults run on 2 CPU cores in a few minutes (a 10,000-image training subset).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(dict(
        dataset="cifar10", path="../shared/data/cifar10", classes=None,
        train_size=10_000, val_size=2_000, seed=0))
    config.model = ml_collections.ConfigDict(dict(
        backbone="cnn", channels=32, blocks=2, normalization="global", input_size=None))
    config.cronos = ml_collections.ConfigDict(dict(
        patterns=8, beta=1e-3, activation="gated_relu", task="classification", intercept=False,
        rho=None, preconditioner="kronecker", rank=10, max_iters=50, tol=1e-3,
        pcg_max_iters=50, anderson=10, dtype="float32"))
    config.trainer = ml_collections.ConfigDict(dict(
        rounds=10, steps_per_round=10, batch_size=1024, loss="mse", trainable="^backbone/",
        warm_start=True, auto_beta=True, feature_batch_size=1024, seed=0, max_to_keep=3,
        optimizer="dadapt_adamw", learning_rate=1.0, augment=False, crop_padding=4))
    return config
