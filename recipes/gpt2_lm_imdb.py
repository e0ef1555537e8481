"""Pretrain a small GPT-2 language model on the 50,000 unlabelled IMDb reviews.

    flax-cronos pretrain-lm recipes/gpt2_lm_imdb.py --out checkpoints/gpt2_lm_imdb
    flax-cronos train recipes/gpt2_imdb.py --workdir checkpoints/gpt2_imdb_lm \\
        --config.model.checkpoint=checkpoints/gpt2_lm_imdb

No pretrained GPT-2 can be downloaded on the project's machines, so this makes one: the
"mini" size (2 blocks, d = 128, the full 50,257-token vocabulary) trained on 128-token reviews,
a few minutes on 2 CPU cores; on a GPU use --config.model.size=gpt2 and more steps. Writes a
Hugging Face folder (config.json + model.safetensors) and pretrain.json (size, tokens, time,
perplexity on held-out test reviews).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(dict(
        path="../shared/data/imdb", tokenizer="../shared/data/gpt2-tokenizer", max_len=128,
        train_size=20_000, val_size=200, seed=0))
    config.model = ml_collections.ConfigDict(dict(size="mini"))
    config.train = ml_collections.ConfigDict(dict(
        steps=500, batch_size=8, learning_rate=2e-3, warmup=50, weight_decay=0.01,
        eval_every=100, seed=0))
    return config
