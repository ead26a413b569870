"""`load(data, split)`: every image source genjax reads, behind one random-access `ImageSource`.

    digits                    scikit-learn's 1,797 8x8 digits (embedded, no download; the default)
    tfds:NAME[:SPLIT]         a tfds dataset through `tfds.data_source` (no TensorFlow); bare NAME works too
    PATH                      a folder of images, an .npz / .npy file, MNIST-format idx files
                              (see genjax.data.files)

Splits: a source with its own train/test splits uses them. One without (a flat folder, a single .npz
'images' array, a lone idx pair, `tfds:NAME:SPLIT`, a tfds dataset with no 'test' split) is split by a
fixed rule: a permutation of its N examples seeded with 0 (whatever train.seed is, so every run scores
on the same images); its first round(N * test_fraction) examples are 'test', the rest 'train', 'all' is
everything. digits keeps its own historical rule (20% held out).

Resolution and channels: `image_size`, `center_crop` and `channels` (genjax.data.transforms.Transform)
bring every image to the model's shape; pixels stay uint8 until a batch is made.
"""

from __future__ import annotations

import os

import numpy as np

from genjax.config import ConfigError
from genjax.data import files, tfds_data
from genjax.data.source import ImageSource, check_images, from_arrays  # noqa: F401  (re-exported)
from genjax.data.transforms import Transform

SPLITS = ("train", "test", "all")
HOLDOUT_SEED = 0


def load(name: str, split: str, data_dir: str | None = None, *, image_size: int = 0, center_crop: bool = True,
         channels: int = 0, test_fraction: float = 0.1) -> ImageSource:
    """The `split` ('train', 'test' or 'all') of the source `name` (see the module docstring)."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {list(SPLITS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction} must be in (0, 1)")
    transform = Transform(image_size, center_crop, channels)
    if name == "digits":
        return digits(split).transformed(transform)
    if name.startswith("tfds:"):
        tfds_name, _, tfds_split = name[len("tfds:"):].partition(":")
        return tfds_images(tfds_name, split, data_dir, tfds_split or None, test_fraction).transformed(transform)
    if os.path.exists(name) or os.sep in name or name.lower().endswith((".npz", ".npy", ".gz", "-ubyte")):
        return pick_split(files.open_path(name, transform), split, test_fraction, name)
    if not name:
        raise ConfigError("--data is empty; use digits, tfds:NAME[:SPLIT], or a path to your images")
    return tfds_images(name, split, data_dir, None, test_fraction).transformed(transform)  # bare tfds name


def pick_split(sources: dict[str, ImageSource], split: str, test_fraction: float, name: str) -> ImageSource:
    """`split` of a source's own splits, or of its single 'all' by the seeded hold-out rule."""
    if "all" in sources:
        return holdout(sources["all"], split, test_fraction)
    if split == "all":
        raise ConfigError(f"--data {name} comes with its own splits {sorted(sources)}; load them one at a time")
    return sources[split]


def holdout(source: ImageSource, split: str, test_fraction: float) -> ImageSource:
    """The seeded train/test rule of the module docstring."""
    if split == "all":
        return source
    order = np.random.default_rng(HOLDOUT_SEED).permutation(source.size)
    n_test = int(round(source.size * test_fraction))
    if n_test < 1 or n_test >= source.size:
        raise ConfigError(f"a source of {source.size} images cannot be split with test_fraction={test_fraction} "
                          "(each split needs at least one image); add images or change test_fraction")
    return source.subset(np.sort(order[:n_test] if split == "test" else order[n_test:]))


# ----------------------------------------------------------------------------- embedded digits


def digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageSource:
    """scikit-learn's 1,797 8x8 handwritten digits (ships with the package), scaled to [0, 1].

    A fixed seeded split: `test_fraction` of the images (stratified by nothing, just shuffled once with
    `seed`) is held out as 'test'. Pixels are 0..16, so they are stored as float32 (k / 16), not uint8.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    idx = {"test": order[:n_test], "train": order[n_test:], "all": order}
    if split not in idx:
        raise ConfigError(f"digits split {split!r} is not one of {sorted(idx)}")
    return from_arrays(images[idx[split]], labels[idx[split]], num_classes=10)


# ----------------------------------------------------------------------------- tfds, no TensorFlow


class TfdsReader:
    """Rows of a tfds split; opened lazily so that it pickles as (name, split, data_dir) into workers."""

    def __init__(self, name: str, split: str, data_dir: str | None, image_key: str, label_key: str | None):
        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key = image_key, label_key
        self._source = None

    def source(self):
        if self._source is None:
            self._source = tfds_data.data_source(self.name, self.split, self.data_dir)
        return self._source

    def __call__(self, indices: np.ndarray):
        source = self.source()
        records = [source[int(i)] for i in indices]
        images = np.stack([np.asarray(r[self.image_key]) for r in records])
        if images.ndim == 3:
            images = images[..., None]
        labels = (np.asarray([r[self.label_key] for r in records], np.int32) if self.label_key
                  else np.zeros(len(indices), np.int32))
        return images, labels

    def __getstate__(self):
        return {**self.__dict__, "_source": None}


def tfds_source(name: str, split: str, data_dir: str | None = None, image_key: str = "image",
                label_key: str = "label") -> ImageSource:
    """One tfds split as it is (`split` may be any tfds split spelling, e.g. 'train[:80%]')."""
    source = tfds_data.data_source(name, split, data_dir)
    features = tfds_data.builder(name, data_dir).info.features
    if image_key not in features:
        raise ConfigError(f"tfds dataset {name!r} has no {image_key!r} feature (it has {sorted(features)}); "
                          "genjax's image experiments need an image dataset")
    shape = tuple(features[image_key].shape)
    if None in shape:
        raise ConfigError(f"tfds dataset {name!r} has images of varying size {shape}; set image_size "
                          "(e.g. --image_size 64) to resize and centre-crop them")
    has_labels = label_key in features and hasattr(features[label_key], "num_classes")
    reader = TfdsReader(name, split, data_dir, image_key, label_key if has_labels else None)
    return ImageSource(reader, len(source), shape, features[label_key].num_classes if has_labels else 0)


def tfds_images(name: str, split: str, data_dir: str | None, tfds_split: str | None,
                test_fraction: float) -> ImageSource:
    """`split` of tfds dataset `name`: its own train/test splits, or the hold-out rule over `tfds_split`
    (or over 'train' when the dataset has no 'test' split)."""
    if tfds_split is None:
        try:
            tfds_data.data_source(name, "test", data_dir)
            own_splits = True
        except tfds_data.MissingSplit:
            own_splits = False
        if own_splits:
            return tfds_source(name, "train+test" if split == "all" else split, data_dir)
        tfds_split = "train"
    return holdout(tfds_source(name, tfds_split, data_dir), split, test_fraction)
