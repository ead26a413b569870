"""Pixels on the way in: decoding image files, grey/RGB conversion, resize and centre-crop, flips.

Everything here works on uint8 (H, W, C) images (or float32 ones in [0, 1], for sources stored as floats)
and keeps their dtype; scaling to float happens once, when a batch is assembled (`to_float`).

Conventions, fixed so that every source behaves alike:
- grey is C = 1, colour is C = 3; alpha is dropped (not composited), palettes are expanded to RGB;
- RGB -> grey is ITU-R 601 luma, L = (299 R + 587 G + 114 B) / 1000, as PIL's `convert('L')` computes it;
- `image_size=S` scales the shorter side to S with PIL's antialiased bilinear filter, then cuts the
  central S x S square (`center_crop=True`, torchvision's Resize(S) + CenterCrop(S)); with
  `center_crop=False` it stretches to S x S instead.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from genjax.config import ConfigError

try:  # libspng: decodes a small PNG ~4x faster than PIL (40 vs 160 us for 32x32 RGB here)
    import pyspng
except ImportError:  # pragma: no cover - pyspng is a declared dependency; PIL still reads everything
    pyspng = None

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class CorruptImage(ConfigError):
    """An image file that cannot be decoded; the message names the file."""


# ----------------------------------------------------------------------------- files


def probe(path: str) -> tuple[int, int, int]:
    """(height, width, channels) of an image file, from its header; raises CorruptImage naming it.

    PNGs are decoded completely (libspng's full decode costs about what PIL's header read does), so a
    truncated or damaged PNG is caught here, before training starts; other formats are checked by header.
    """
    if path.lower().endswith(".png") and pyspng is not None:
        image = decode(path)
        return image.shape
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode = im.mode
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
        raise CorruptImage(f"{path} is not a readable image ({type(e).__name__}: {e}); "
                           "remove or replace it") from None
    return height, width, 1 if mode in _GREY_MODES else 3


def decode(path: str) -> np.ndarray:
    """The pixels of an image file as uint8 (H, W, 1) for grey images or (H, W, 3) for colour ones."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if pyspng is not None and data[:8] == _PNG_SIGNATURE and len(data) > 26:
            image = _decode_png(data)
        else:
            image = _decode_pil(io.BytesIO(data))
    except Exception as e:  # libspng's RuntimeError, PIL's UnidentifiedImageError / OSError / SyntaxError, ...
        raise CorruptImage(f"{path} could not be decoded ({type(e).__name__}: {e}); remove or replace it") from None
    return image[..., None] if image.ndim == 2 else image


def _decode_pil(file) -> np.ndarray:
    with Image.open(file) as im:
        if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: keep the top 8 bits
            return (np.asarray(im, np.int64) >> 8).clip(0, 255).astype(np.uint8)
        if im.mode == "F":
            return np.clip(np.asarray(im, np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.asarray(im.convert("L" if im.mode in _GREY_MODES else "RGB"))


def _decode_png(data: bytes) -> np.ndarray:
    depth, colour_type = data[24], data[25]  # from the IHDR chunk, which the PNG format puts first
    if colour_type == 0 and depth == 8:
        return pyspng.load(data, format="L")
    image = pyspng.load(data, format="RGB")  # grey with alpha or 16 bits comes back replicated to RGB
    return image[..., :1] if colour_type in (0, 4) else image


def image_files(folder: str) -> list[str]:
    """Image files under `folder` (recursive, sorted, hidden files and folders skipped)."""
    out = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, n) for n in sorted(names)
                if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]
    return out


# ----------------------------------------------------------------------------- resize, crop, channels


@dataclasses.dataclass(frozen=True)
class Transform:
    """Brings one image or a batch to `image_size` (0 = unchanged) and `channels` (0 = unchanged)."""

    image_size: int = 0
    center_crop: bool = True
    channels: int = 0

    def __post_init__(self):
        if self.image_size < 0:
            raise ConfigError(f"image_size={self.image_size} must be >= 0 (0 keeps the source's size)")
        if self.channels not in (0, 1, 3):
            raise ConfigError(f"channels={self.channels} must be 0 (the source's own), 1 (grey) or 3 (RGB)")

    @property
    def identity(self) -> bool:
        return self.image_size == 0 and self.channels == 0

    def shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        h, w, c = shape
        if self.image_size:
            h = w = self.image_size
        return h, w, self.channels or c

    def image(self, image: np.ndarray) -> np.ndarray:
        if self.channels:
            image = convert_channels(image, self.channels)
        if self.image_size and image.shape[:2] != (self.image_size, self.image_size):
            image = resize(image, self.image_size, self.center_crop)
        return image

    def batch(self, images: np.ndarray) -> np.ndarray:
        if self.identity:
            return images
        if self.channels:
            images = convert_channels(images, self.channels)
        if self.image_size and images.shape[1:3] != (self.image_size, self.image_size):
            images = np.stack([resize(im, self.image_size, self.center_crop) for im in images])
        return images


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Grey (C=1) <-> RGB (C=3) on the last axis; uint8 stays uint8 (luma rounded as PIL rounds it)."""
    have = images.shape[-1]
    if have == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    weights = np.asarray([299, 587, 114], np.int64 if images.dtype == np.uint8 else np.float32)
    if images.dtype == np.uint8:
        luma = (images.astype(np.int64) @ weights + 500) // 1000
        return luma.astype(np.uint8)[..., None]
    return (images @ (weights / np.float32(1000)))[..., None].astype(images.dtype)


def resize(image: np.ndarray, size: int, center_crop: bool = True) -> np.ndarray:
    """One (H, W, C) image to (size, size, C); see the module docstring for the rule."""
    h, w, c = image.shape
    if center_crop:
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    else:
        new_h = new_w = size
    size_wh = (new_w, new_h)
    if image.dtype == np.uint8:  # one PIL call for all channels
        pil = Image.fromarray(image[..., 0] if c == 1 else image)
        out = np.asarray(pil.resize(size_wh, Image.Resampling.BILINEAR)).reshape(new_h, new_w, c)
    else:  # float pixels: one 'F' image per channel
        out = np.stack([np.asarray(Image.fromarray(image[..., k].astype(np.float32))
                                   .resize(size_wh, Image.Resampling.BILINEAR)) for k in range(c)], axis=-1)
        out = np.clip(out, 0.0, 1.0).astype(image.dtype)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return out[top:top + size, left:left + size]


def to_float(images: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: uint8 pixels / 255, float pixels as they are."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return np.asarray(images, np.float32)


def flip_rows(images: np.ndarray, seed: int, step: int, batch_size: int, rows: slice) -> np.ndarray:
    """Random horizontal flips of the rows `rows` of the global batch of `step` (`batch_size` images):
    each image is flipped with probability 1/2 by a generator seeded with (seed, step), so the flips are
    the same whatever the host layout, and a resumed run flips as an uninterrupted one."""
    flips = np.random.default_rng([seed, step, 1]).random(batch_size)[rows] < 0.5
    out = np.array(images, copy=True)
    out[flips] = out[flips, :, ::-1]
    return out
