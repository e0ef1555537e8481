"""Pretrained EfficientNet-Lite0 on CIFAR-10 (10 classes): convex head vs trained heads, and
CRONOS-AM vs AdamW fine-tuning of the last stages.

    python benchmarks/cnn_imagenet.py [--train-size 2000] [--test-size 500] [--size 96]
        [--patterns 16] [--rounds 2] [--steps-per-round 10] [--batch-size 64]
    python benchmarks/cnn_imagenet.py --quick       # a smoke test, a few minutes on 2 cores

CIFAR-10 images (a seeded random subset of the train and test splits) are resized on the device
to ``--size`` (bilinear) and normalised as the ImageNet weights expect, (pixel − 127) / 128.

1. **Heads on frozen features** (``heads.frozen_heads``): the pooled 1280-d features of the
   training and test images (extraction speed in images/s); the convex head against an AdamW
   ``TwoLayerHead`` over a 5-point log grid of learning rates (1e-4 … 1e-2, ``--head-epochs``
   epochs) and logistic regression.
2. **Fine-tuning** (``heads.fine_tuning``) the parameters matching ``^backbone/(stage7|top)/``:
   CRONOS-AM (``--rounds`` rounds of ``--steps-per-round`` D-Adapt AdamW steps) against AdamW
   on the same parameters plus a fresh head over a 3-point learning-rate grid.

Times exclude compilation (``heads.py`` says how).
Writes ``docs/cnn_imagenet.json``.
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from flax_cronos import models
from flax_cronos.data import images
from heads import fine_tuning, frozen_heads, log, parse_args, timed_features

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"
FINE_TUNED = r"^backbone/(stage7|top)/"
HEAD_LEARNING_RATES = [float(v) for v in np.logspace(-4, -2, 5)]
FINE_TUNE_LEARNING_RATES = [1e-4, 1e-3, 1e-2]
QUICK = dict(train_size=200, test_size=100, size=64, rounds=1, steps_per_round=2,
             batch_size=32, head_epochs=5)


def load(args):
    train = images.subset(*images.load_cifar10(args.data, "train"), args.train_size, seed=0)
    test = images.subset(*images.load_cifar10(args.data, "test"), args.test_size, seed=0)
    return train, test


def backbone(size: int):
    model, variables = models.efficientnet.load_pretrained(top=False)
    return models.ImageInput(model, mean=(127.0,), std=(128.0,), size=size), variables["params"]


def heads(args, network, params, train, test) -> dict:
    x, seconds = timed_features(network, params, train[0], args.feature_batch_size)
    x_test, _ = timed_features(network, params, test[0], args.feature_batch_size)
    rate = len(x) / seconds
    log(f"features {x.shape} at {rate:.1f} images/s")
    return {"feature_images_per_second": rate,
            **frozen_heads(args, x, train[1], x_test, test[1], HEAD_LEARNING_RATES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(CIFAR10), help="CIFAR-10 parquet or its folder")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--size", type=int, default=96, help="image side fed to the network")
    args = parse_args(parser, quick=QUICK, out=str(ROOT / "docs" / "cnn_imagenet.json"),
                      head_epochs=30, head_batch_size=256, rounds=2, steps_per_round=10,
                      batch_size=64, feature_batch_size=100)
    train, test = load(args)
    network, params = backbone(args.size)
    report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
              "settings": vars(args),
              "heads": heads(args, network, params, train, test)}
    if not args.skip_fine_tuning:
        report.update(fine_tuning(args, network, params, train, test, FINE_TUNED,
                                  FINE_TUNE_LEARNING_RATES))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
