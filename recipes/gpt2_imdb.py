"""IMDb sentiment with a convex head on pooled GPT-2 features (CRONOS / CRONOS-AM).

    flax-cronos train recipes/gpt2_imdb.py --workdir checkpoints/gpt2_imdb

Settings: ``trainer.rounds=0`` (default) is the paper's "no fine-tuning": features once, then
the convex head. ``trainer.rounds=R`` alternates: each round trains the blocks that
``trainer.trainable`` selects (e.g. the last two of GPT-2 small: '^backbone/h_(10|11)/') with
the head frozen, then re-solves the head. ``model.checkpoint`` is a folder (Hugging Face
format: config.json + model.safetensors or pytorch_model.bin, e.g. the one
``recipes/gpt2_lm_imdb.py`` pretrains) or a Hub name ("gpt2", "openai-community/gpt2-medium").

The default runs on 2 CPU cores in a few minutes: a fresh 2-layer "mini" GPT-2 (no pretrained
weights can be downloaded here), mean-pooled, 2,000 / 1,000 reviews of 128 tokens. On a GPU
with pretrained weights (the paper's setting, GPT-2 medium, full data):

    flax-cronos train recipes/gpt2_imdb.py --workdir checkpoints/gpt2_medium_imdb \\
        --config.model.checkpoint=openai-community/gpt2-medium --config.model.pooling=last \\
        --config.data.train_size=None --config.data.val_size=None --config.data.max_len=512 \\
        --config.data.tokenizer=None
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(dict(
        dataset="imdb", path="../shared/data/imdb", tokenizer="../shared/data/gpt2-tokenizer",
        max_len=128, train_size=2_000, val_size=1_000, seed=0))
    config.model = ml_collections.ConfigDict(dict(
        backbone="gpt2", checkpoint=None, size="mini", pooling="mean"))
    config.cronos = ml_collections.ConfigDict(dict(
        patterns=16, beta=1e-3, activation="gated_relu", task="classification", intercept=False,
        rho=None, preconditioner="kronecker", rank=10, max_iters=200, tol=1e-3,
        pcg_max_iters=50, anderson=10, dtype="float32"))
    config.trainer = ml_collections.ConfigDict(dict(
        rounds=0, steps_per_round=10, batch_size=32, loss="mse", trainable="^backbone/h_1/",
        warm_start=True, auto_beta=True, feature_batch_size=64, seed=0, max_to_keep=3,
        optimizer="dadapt_adamw", learning_rate=1.0))
    return config
