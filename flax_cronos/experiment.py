"""Recipes to runs: an ml_collections config becomes data, a backbone and a trainer.

A recipe (``recipes/NAME.py``) defines ``get_config()`` with four sections:

- ``data``: ``dataset`` ("fashion_mnist" | "cifar10" | "imdb"), ``path`` (local folder; None:
  the Hugging Face Hub), ``classes`` (images: labels to keep, relabelled 0..k−1; None: all),
  ``train_size`` / ``val_size`` (random subsets; None: all), ``seed``; for imdb also
  ``tokenizer`` (folder or None: the Hub's "gpt2") and ``max_len``. The validation data is the
  dataset's test split (the paper's protocol); pixels are standardised by training statistics.
- ``model``: ``backbone`` ("mlp" | "cnn" | "gpt2") and its attributes (``widths`` |
  ``channels``, ``blocks`` | ``checkpoint`` (folder or Hub name of pretrained weights; None: a
  fresh model of ``size``, a key of ``models.gpt2.CONFIGS``), ``pooling`` ("last" | "mean")).
- ``cronos``: the fields of ``cronos.CronosConfig``.
- ``trainer``: the fields of ``trainer.AlternatingConfig`` plus ``optimizer`` (an Optax
  factory name) and ``learning_rate``.
"""

import ast
import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import ml_collections
import optax

from flax_cronos import cronos, data, models
from flax_cronos.cronos.problem import encode_targets
from flax_cronos.trainer import AlternatingConfig, AlternatingTrainer

LOADERS = {"fashion_mnist": data.load_fashion_mnist, "cifar10": data.load_cifar10}
OPTIMIZERS = {"dadapt_adamw": optax.contrib.dadapt_adamw, "adam": optax.adam,
              "adamw": optax.adamw, "sgd": optax.sgd, "yogi": optax.yogi}


def parse_setting(text: str):
    """A ``--config.KEY=VALUE`` value: a Python literal (number, None, tuple, bool) or else the
    string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_recipe(path: Path, overrides: dict[str, object] = None) -> ml_collections.ConfigDict:
    """``get_config()`` of a recipe file, with dotted-key ``overrides`` applied (type-checked)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"recipe {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"recipe {path} defines no get_config()")
    config = module.get_config()
    for key, value in (overrides or {}).items():
        *sections, name = key.split(".")
        parent = config
        for section in sections:
            parent = parent.get(section) if isinstance(parent, ml_collections.ConfigDict) else None
        if not isinstance(parent, ml_collections.ConfigDict) or name not in parent:
            raise ValueError(f"--config.{key}: the recipe has no such setting")
        try:
            parent[name] = value
        except TypeError as error:
            raise ValueError(f"--config.{key}={value!r}: {error}") from None
    return config


def load_data(config: ml_collections.ConfigDict):
    """(train, val) pairs for the data section: images (x float32 [n, H, W(, C)], y int32 [n])
    or, for imdb, ({'input_ids', 'attention_mask'} int32 [n, max_len], y int32 [n])."""
    if config.dataset == "imdb":
        return _load_imdb(config)
    if config.dataset not in LOADERS:
        raise ValueError(f"data.dataset must be one of {sorted(LOADERS) + ['imdb']}; "
                         f"got {config.dataset!r}")
    options = {} if config.classes is None else {"classes": tuple(config.classes)}
    if config.dataset == "fashion_mnist" and config.classes is not None:
        raise ValueError("data.classes is only supported for cifar10")
    x_train, y_train = LOADERS[config.dataset](config.path, "train", **options)
    x_val, y_val = LOADERS[config.dataset](config.path, "test", **options)
    x_train, y_train = data.subset(x_train, y_train, config.train_size, config.seed)
    x_val, y_val = data.subset(x_val, y_val, config.val_size, config.seed)
    x_train, x_val = data.standardize(x_train, x_val)
    return (x_train, y_train), (x_val, y_val)


def _load_imdb(config: ml_collections.ConfigDict):
    tokenizer = data.load_tokenizer(config.tokenizer)
    pairs = []
    for split, size in (("train", config.train_size), ("test", config.val_size)):
        texts, labels = data.load_imdb(config.path, split, size, config.seed)
        pairs.append((data.tokenize(texts, tokenizer, config.max_len), labels))
    return tuple(pairs)


def make_backbone(config: ml_collections.ConfigDict):
    """(backbone, its starting parameters or None for a fresh ``init``)."""
    if config.backbone == "mlp":
        return models.MLP(widths=tuple(config.widths)), None
    if config.backbone == "cnn":
        return models.SmallCNN(channels=config.channels, blocks=config.blocks), None
    if config.backbone == "gpt2":
        from flax_cronos.models import gpt2

        if config.checkpoint is not None:
            return gpt2.load_pretrained(config.checkpoint, pooling=config.pooling)
        if config.size not in gpt2.CONFIGS:
            raise ValueError(f"model.size must be one of {sorted(gpt2.CONFIGS)}; got {config.size!r}")
        return gpt2.GPT2Features(gpt2.CONFIGS[config.size], pooling=config.pooling), None
    raise ValueError(f"model.backbone must be 'mlp', 'cnn' or 'gpt2'; got {config.backbone!r}")


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}; got {name!r}")
    return OPTIMIZERS[name](learning_rate=learning_rate)


def make_trainer(config: ml_collections.ConfigDict) -> AlternatingTrainer:
    """The AlternatingTrainer a recipe describes (checks every setting)."""
    settings = config.trainer.to_dict()
    optimizer = make_optimizer(settings.pop("optimizer"), settings.pop("learning_rate"))
    backbone, backbone_params = make_backbone(config.model)
    return AlternatingTrainer(backbone,
                              _dataclass(cronos.CronosConfig, config.cronos.to_dict(), "cronos"),
                              _dataclass(AlternatingConfig, settings, "trainer"), optimizer,
                              backbone_params)


def _dataclass(cls, values: dict, section: str):
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{section}.{unknown[0]} is not a setting; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def train(config: ml_collections.ConfigDict, workdir: Path, progress: bool = True,
          on_round=None):
    """Runs (or resumes) a recipe in ``workdir``; returns the ``TrainResult``."""
    trainer = make_trainer(config)
    train_data, val_data = load_data(config.data)
    return trainer.fit(train_data, val_data, workdir=workdir, run_config=config.to_dict(),
                       progress=progress, on_round=on_round)


def evaluate(workdir: Path, round_=None, split: str = "val") -> dict:
    """Accuracy and loss of a run's checkpoint on its recipe's data.

    Args:
        workdir: the run directory (its ``config.json`` names the recipe).
        round_: None (the latest checkpoint), "best" (the best validation accuracy) or a round.
        split: "val" or "train".
    """
    config_file = Path(workdir) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{workdir} is not a run directory (no config.json)")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val'; got {split!r}")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text())["recipe"])
    trainer = make_trainer(config)
    train_data, val_data = load_data(config.data)
    train_targets, classes = encode_targets(train_data[1], "classification", len(train_data[1]))
    x, y = {"train": train_data, "val": val_data}[split]
    if round_ == "best":
        history = [json.loads(line) for line in
                   (Path(workdir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        round_ = max(history, key=lambda record: record.get("val_accuracy", -1.0))["round"]
    network, params, meta = trainer.load(workdir, x, train_targets.shape[1], round_)
    targets, _ = encode_targets(y, "classification", len(y), f"{split} labels", classes)
    scores = trainer.evaluate(network, params, x, y, targets)
    return {"round": meta["history"][-1]["round"], "split": split,
            "accuracy": scores["val_accuracy"], "loss": scores["val_loss"]}


def pretrain_lm(config: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    """Pretrains the GPT-2 of a language-model recipe (``recipes/gpt2_lm_imdb.py``) on the
    unlabelled IMDb reviews, saves it in the Hugging Face format in ``out`` and returns the
    summary also written to ``out/pretrain.json``."""
    from flax_cronos import lm
    from flax_cronos.models import gpt2

    if config.model.size not in gpt2.CONFIGS:
        raise ValueError(f"model.size must be one of {sorted(gpt2.CONFIGS)}; got {config.model.size!r}")
    sizes = gpt2.CONFIGS[config.model.size]
    tokenizer = data.load_tokenizer(config.data.tokenizer)
    texts, _ = data.load_imdb(config.data.path, "unsup", config.data.train_size, config.data.seed)
    held_out, _ = data.load_imdb(config.data.path, "test", config.data.val_size, config.data.seed)
    tokens = data.tokenize(texts, tokenizer, config.data.max_len)
    val_tokens = data.tokenize(held_out, tokenizer, config.data.max_len)
    train = config.train
    model = gpt2.GPT2(sizes)
    params, history = lm.pretrain(model, tokens, val_tokens=val_tokens, steps=train.steps,
                                  batch_size=train.batch_size, learning_rate=train.learning_rate,
                                  warmup=train.warmup, weight_decay=train.weight_decay,
                                  eval_every=train.eval_every, seed=train.seed, progress=progress)
    gpt2.save_pretrained(sizes, params, out)
    summary = {"size": config.model.size, "parameters": int(sum(a.size for a in
                                                                jax.tree.leaves(params))),
               "tokens": history[-1]["tokens"], "seconds": history[-1]["seconds"],
               "val_perplexity": history[-1]["val_perplexity"],
               "device": jax.devices()[0].device_kind, "history": history,
               "recipe": config.to_dict()}
    (Path(out) / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
