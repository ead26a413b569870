"""Image datasets: embedded 8x8 digits (no download) and tfds datasets (mnist, cifar10, ...) without TensorFlow.

A dataset is random-access: `ImageSource(fetch, size, shape, num_classes)` where `fetch(indices)` returns
`{'image': float32 (n, H, W, C) in [0, 1], 'label': int32 (n,)}`. Batching (`genjax.data.batching`) only
needs that, so numpy arrays and tfds data sources share one seeded, resumable batch order.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from genjax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class ImageSource:
    fetch: Callable[[np.ndarray], dict]
    size: int
    shape: tuple[int, int, int]
    num_classes: int

    def all(self) -> dict:
        """The whole split in memory (fine for the small datasets genjax evaluates on)."""
        return self.fetch(np.arange(self.size))


def from_arrays(images: np.ndarray, labels: np.ndarray, num_classes: int) -> ImageSource:
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    check_images(images, "images")
    return ImageSource(lambda idx: {"image": images[idx], "label": labels[idx]},
                       len(images), tuple(images.shape[1:]), num_classes)


def check_images(images: np.ndarray, what: str) -> None:
    """Image arrays must be (N, H, W, C) floats in [0, 1]."""
    if images.ndim != 4:
        raise ConfigError(f"{what} has shape {images.shape}; genjax expects (N, H, W, C) images")
    lo, hi = float(images.min(initial=0.0)), float(images.max(initial=0.0))
    if lo < 0.0 or hi > 1.0 or not np.isfinite(images).all():
        raise ConfigError(
            f"{what} has values in [{lo:.3g}, {hi:.3g}]; genjax expects finite floats in [0, 1] "
            "(divide uint8 pixels by 255)"
        )


# ----------------------------------------------------------------------------- embedded digits


def digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageSource:
    """scikit-learn's 1,797 8x8 handwritten digits (ships with the package), scaled to [0, 1].

    A fixed seeded split: `test_fraction` of the images (stratified by nothing, just shuffled once with
    `seed`) is held out as 'test'.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    labels = bunch.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    idx = {"test": order[:n_test], "train": order[n_test:], "all": order}
    if split not in idx:
        raise ConfigError(f"digits split {split!r} is not one of {sorted(idx)}")
    return from_arrays(images[idx[split]], labels[idx[split]], num_classes=10)


# ----------------------------------------------------------------------------- tfds, no TensorFlow


def tfds_source(name: str, split: str, data_dir: str | None = None, image_key: str = "image",
                label_key: str = "label") -> ImageSource:
    """A tfds dataset split read through `tfds.data_source` (random access, array_record, no TensorFlow).

    Needs the dataset prepared in `data_dir` (it downloads on first use where the machine has internet).
    """
    try:
        import tensorflow_datasets as tfds  # lazy: GPU images often lack it
    except ImportError as e:
        raise ConfigError(
            f"data={name!r} needs tensorflow-datasets: pip install tensorflow-datasets "
            "(or use data=digits, which ships with scikit-learn)"
        ) from e
    builder = tfds.builder(name, data_dir=data_dir)
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    info = builder.info
    shape = tuple(info.features[image_key].shape)
    num_classes = info.features[label_key].num_classes if label_key in info.features else 0

    def fetch(indices: np.ndarray) -> dict:
        records = [source[int(i)] for i in indices]
        images = np.stack([np.asarray(r[image_key]) for r in records]).astype(np.float32) / 255.0
        labels = np.asarray([r.get(label_key, 0) for r in records], np.int32)
        return {"image": images, "label": labels}

    return ImageSource(fetch, len(source), shape, num_classes)


def load(name: str, split: str, data_dir: str | None = None) -> ImageSource:
    """`digits` (embedded) or any tfds image dataset name (`mnist`, `cifar10`, `fashion_mnist`, ...)."""
    if name == "digits":
        return digits(split)
    return tfds_source(name, split, data_dir=data_dir)
