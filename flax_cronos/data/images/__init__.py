"""Image classification data as NumPy arrays, and their preprocessing.

Loaders return uint8 pixels and int32 labels:

- :func:`load_image_folder`: ImageNet-format trees ``root/<split>/<class>/<image>``;
- :func:`load_hub_images`: Hugging Face image data sets (Hub names, local folders, parquet);
- :func:`load_fashion_mnist` (IDX files) and :func:`load_cifar10` (a parquet of JPEGs), each
  also from the Hub.

The first two decode in a thread pool, resize the shorter side to ``size / crop_ratio`` and
centre crop ``size`` × ``size`` (:func:`decode_image`), and return an :class:`ImageSet` that
also lists the unreadable images they skipped. Preprocessing: :func:`standardize` (the paper's
global mean and std) or :func:`normalize` (per channel), both fitted on the training split
only; :func:`subset`; and :func:`augment`, random flips and crops of a batch in JAX.
"""

from flax_cronos.data.images.augment import augment
from flax_cronos.data.images.classic import (CIFAR10_CLASSES, load_cifar10, load_fashion_mnist,
                                             read_idx)
from flax_cronos.data.images.decode import ImageSet, decode_image, decode_images
from flax_cronos.data.images.folder import load_image_folder
from flax_cronos.data.images.hub import load_hub_images
from flax_cronos.data.images.transforms import (ChannelStats, apply_normalization, channel_stats,
                                                normalize, standardize, subset)

__all__ = ["CIFAR10_CLASSES", "ChannelStats", "ImageSet", "apply_normalization", "augment",
           "channel_stats", "decode_image", "decode_images", "load_cifar10", "load_fashion_mnist",
           "load_hub_images", "load_image_folder", "normalize", "read_idx", "standardize",
           "subset"]
