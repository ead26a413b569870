"""`ImageSource`: a random-access image dataset, and the picklable readers behind it.

A source holds its pixels as uint8 (in memory, or memory-mapped from an .npy / idx file, or as image files
decoded on demand); they become float32 in [0, 1] only in a batch (`fetch`). Readers are small picklable
objects, so parallel loader workers (`genjax.data.pipeline`) can each hold one: a memory-mapped array is
re-opened in the worker rather than copied into it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from genjax.config import ConfigError
from genjax.data.transforms import Transform, decode, to_float


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """`read(indices) -> (pixels (n, H, W, C) uint8 or float32 in [0, 1], labels int32 (n,))`.

    `num_classes` is 0 for unlabelled sources (their labels read as 0).
    """

    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    size: int
    shape: tuple[int, int, int]
    num_classes: int

    def fetch(self, indices) -> dict:
        """The batch of `indices`: {'image': float32 (n, H, W, C) in [0, 1], 'label': int32 (n,)}."""
        images, labels = self.read(np.asarray(indices, np.int64))
        return {"image": to_float(images), "label": labels}

    def all(self) -> dict:
        """The whole split in memory (fine for the small datasets genjax evaluates on)."""
        return self.fetch(np.arange(self.size))

    def subset(self, indices: np.ndarray) -> "ImageSource":
        rows = np.asarray(indices, np.int64)
        return dataclasses.replace(self, read=SubsetReader(self.read, rows), size=len(rows))

    def transformed(self, transform: Transform) -> "ImageSource":
        if transform.identity:
            return self
        return dataclasses.replace(self, read=TransformReader(self.read, transform),
                                   shape=transform.shape(self.shape))


# ----------------------------------------------------------------------------- readers


class ArrayReader:
    """Rows of an (N, H, W, C) array plus labels (None: unlabelled).

    A reader made by `ArrayReader.mapped` pickles as its file name and offset, so a worker process maps
    the file itself instead of receiving a copy of the pixels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, file: tuple | None = None):
        self.images, self.labels, self.file = images, labels, file

    @classmethod
    def mapped(cls, filename: str, offset: int, dtype, shape: tuple, labels: np.ndarray | None):
        file = (str(filename), int(offset), np.dtype(dtype).str, tuple(int(d) for d in shape))
        return cls(_open_mapped(file), labels, file)

    def __call__(self, indices: np.ndarray):
        # A sorted gather reads a memory-mapped file front to back; the result is put back in order.
        order = np.argsort(indices, kind="stable")
        images = np.empty((len(indices), *self.images.shape[1:]), self.images.dtype)
        images[order] = self.images[indices[order]]
        return images, _labels(self.labels, indices)

    def __getstate__(self):
        return {"images": None if self.file else self.images, "labels": self.labels, "file": self.file}

    def __setstate__(self, state):
        self.labels, self.file = state["labels"], state["file"]
        self.images = _open_mapped(self.file) if self.file else state["images"]


def _open_mapped(file: tuple) -> np.ndarray:
    filename, offset, dtype, shape = file
    return np.memmap(filename, np.dtype(dtype), "r", offset=offset, shape=shape)


class FileReader:
    """Image files decoded on demand (each to uint8 (H, W, 1 or 3), then `transform`ed)."""

    def __init__(self, paths: list[str], labels: np.ndarray | None, transform: Transform):
        self.paths, self.labels, self.transform = list(paths), labels, transform

    def __call__(self, indices: np.ndarray):
        images = np.stack([self.transform.image(decode(self.paths[int(i)])) for i in indices])
        return images, _labels(self.labels, indices)


class SubsetReader:
    def __init__(self, inner, rows: np.ndarray):
        self.inner, self.rows = inner, rows

    def __call__(self, indices: np.ndarray):
        return self.inner(self.rows[indices])


class TransformReader:
    def __init__(self, inner, transform: Transform):
        self.inner, self.transform = inner, transform

    def __call__(self, indices: np.ndarray):
        images, labels = self.inner(indices)
        return self.transform.batch(images), labels


def _labels(labels: np.ndarray | None, indices: np.ndarray) -> np.ndarray:
    if labels is None:
        return np.zeros(len(indices), np.int32)
    return np.asarray(labels[indices], np.int32)


# ----------------------------------------------------------------------------- arrays


def from_arrays(images: np.ndarray, labels: np.ndarray | None = None, num_classes: int | None = None,
                what: str = "images") -> ImageSource:
    """A source over (N, H, W, C) (or (N, H, W): grey) pixels, uint8 or floats in [0, 1], kept as they are
    (a memory-mapped array stays mapped). `labels` (N,) are integers in [0, num_classes); `num_classes`
    defaults to max(labels) + 1, and to 0 without labels."""
    images = check_images(images, what)
    if labels is not None:
        labels = check_labels(labels, len(images), num_classes, what)
        if num_classes is None:
            num_classes = int(labels.max(initial=-1)) + 1
    return ImageSource(ArrayReader(images, labels), len(images), tuple(images.shape[1:]),
                       0 if labels is None else int(num_classes))


def check_images(images: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W, C) uint8, or floats in [0, 1]; (N, H, W) gets C = 1. Returns the array, not copied."""
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ConfigError(f"{what} has shape {images.shape}; genjax expects (N, H, W, C) images")
    if images.shape[-1] not in (1, 3):
        hint = ("; it looks channel-first: np.transpose(x, (0, 2, 3, 1))" if images.shape[1] in (1, 3) else
                "; drop the alpha channel: x[..., :3]" if images.shape[-1] == 4 else "")
        raise ConfigError(f"{what} has shape {images.shape}: genjax expects (N, H, W, C) with C = 1 (grey) "
                          f"or 3 (RGB){hint}")
    if len(images) == 0:
        raise ConfigError(f"{what} holds no images (shape {images.shape})")
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.integer) or images.dtype == bool:
        lo, hi = int(images.min()), int(images.max())
        if lo < 0 or hi > 255:
            raise ConfigError(f"{what} holds integers in [{lo}, {hi}]; genjax expects uint8 pixels 0..255")
        return images.astype(np.uint8)
    if not np.issubdtype(images.dtype, np.floating):
        raise ConfigError(f"{what} has dtype {images.dtype}; genjax expects uint8 or float pixels")
    finite_values = images[np.isfinite(images)]
    finite = finite_values.size == images.size
    lo, hi = float(finite_values.min(initial=0.0)), float(finite_values.max(initial=0.0))
    if not finite or lo < 0.0 or hi > 1.0:
        raise ConfigError(
            f"{what} has values in [{lo:.3g}, {hi:.3g}]{'' if finite else ' and non-finite values'}; "
            "genjax expects finite floats in [0, 1] (divide uint8 pixels by 255) or uint8 pixels")
    return images if images.dtype == np.float32 else images.astype(np.float32)


def check_labels(labels, n: int, num_classes: int | None, what: str) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1) if np.ndim(labels) == 2 and np.shape(labels)[1] == 1 else np.asarray(labels)
    if labels.shape != (n,):
        raise ConfigError(f"{what}: labels have shape {labels.shape}, expected ({n},): one per image")
    if not (np.issubdtype(labels.dtype, np.integer) or
            (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)))):
        raise ConfigError(f"{what}: labels must be integer class ids, got dtype {labels.dtype}")
    lo, hi = int(labels.min(initial=0)), int(labels.max(initial=0))
    limit = num_classes if num_classes is not None else max(n, 1)  # more classes than images is a mistake
    if lo < 0 or hi >= limit:
        rule = f"num_classes={num_classes}" if num_classes is not None else f"{n} images"
        raise ConfigError(f"{what}: labels range over [{lo}, {hi}], outside [0, {limit}) for {rule}; "
                          "labels must be class ids 0..num_classes-1")
    return labels.astype(np.int32)
