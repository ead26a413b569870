"""DCGAN-style generator and discriminator (conv, 8x8 up to 64x64 and beyond) and MLP versions for toy data.

Channel widths are given once, from the lowest resolution to the highest (as the generator walks them);
the discriminator walks them in reverse. With `widths` of length n, the generator starts from a
(H / 2^(n-1)) x (W / 2^(n-1)) grid and doubles the resolution n-1 times: (128, 64) makes 4x4 -> 8x8,
(512, 256, 128, 64, 32) makes 4x4 -> 64x64, (128, 64, 32) with a 28x28 image makes 7x7 -> 28x28.

Class conditioning (num_classes > 0): the generator concatenates a learned class embedding to z; the
discriminator is a projection discriminator (Miyato & Koyama, 2018): logit = psi(phi(x)) + <embed(y), phi(x)>.
The generator ends in tanh (images in [-1, 1]); the MLP generator is linear (raw coordinates).
The discriminators hold no normalization layers: spectral normalization, applied to their params from the
outside (`genjax.nn.spectral`), is what constrains them.

`dtype` is the compute dtype of the convolutions and dense layers (None: that of the inputs and params;
parameters stay float32, flax's normalization layers reduce in float32); generated data and
discriminator logits come out in at least float32.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("none", "layer", "group", "pixel")


def conv(features, kernel, **kw):
    return nn.Conv(features, kernel, **kw)


def conv_transpose(features, kernel, **kw):
    return nn.ConvTranspose(features, kernel, **kw)


class PixelNorm(nn.Module):
    """Per-pixel feature-vector normalization (Karras et al., 2018): no parameters, no batch statistics."""

    @nn.compact
    def __call__(self, x):
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + 1e-8)


def make_norm(kind: str, channels: int, dtype: Any = None):
    if kind == "none":
        return lambda x: x
    if kind == "layer":
        return nn.LayerNorm(dtype=dtype)
    if kind == "group":
        return nn.GroupNorm(num_groups=math.gcd(channels, 8), dtype=dtype)
    if kind == "pixel":
        return PixelNorm()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def _at_least_f32(x):
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _condition(z, labels, num_classes: int, dtype: Any = None):
    z = z if dtype is None else z.astype(dtype)
    if not num_classes:
        return z
    embed = nn.Embed(num_classes, z.shape[-1], dtype=dtype, name="class_embed")(labels)
    return jnp.concatenate([z, embed], axis=-1)


def _project(phi, labels, num_classes: int):
    """Unconditional logit plus, for conditional models, the projection term <embed(y), phi>; float32."""
    phi = _at_least_f32(phi)
    logit = nn.Dense(1, name="logit")(phi)[..., 0]
    if num_classes:
        logit = logit + jnp.sum(nn.Embed(num_classes, phi.shape[-1], name="class_proj")(labels) * phi, axis=-1)
    return logit


class Generator(nn.Module):
    image_shape: tuple[int, ...]  # (H, W, C)
    widths: tuple[int, ...]  # low resolution -> high resolution
    num_classes: int = 0
    norm: str = "group"
    upsample: str = "transposed"  # 'transposed' (4x4 stride-2 transposed conv) | 'nearest' (resize + 3x3 conv)
    dtype: Any = None

    @nn.compact
    def __call__(self, z, labels=None):
        height, width, channels = self.image_shape
        scale = 2 ** (len(self.widths) - 1)
        h0, w0 = height // scale, width // scale
        dt = self.dtype
        x = _condition(z, labels, self.num_classes, dt)
        x = nn.Dense(h0 * w0 * self.widths[0], dtype=dt)(x).reshape(z.shape[0], h0, w0, self.widths[0])
        x = nn.relu(make_norm(self.norm, self.widths[0], dt)(x))
        for w in self.widths[1:]:
            if self.upsample == "transposed":
                x = conv_transpose(w, (4, 4), strides=(2, 2), padding="SAME", dtype=dt)(x)
            else:
                b, h, ww, c = x.shape
                x = jax.image.resize(x, (b, 2 * h, 2 * ww, c), "nearest")
                x = conv(w, (3, 3), dtype=dt)(x)
            x = nn.relu(make_norm(self.norm, w, dt)(x))
        return jnp.tanh(_at_least_f32(conv(channels, (3, 3), dtype=dt)(x)))


class Discriminator(nn.Module):
    widths: tuple[int, ...]  # the generator's order; walked in reverse (high resolution -> low)
    num_classes: int = 0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, labels=None):
        widths, dt = self.widths[::-1], self.dtype
        x = nn.leaky_relu(conv(widths[0], (3, 3), dtype=dt)(x), 0.2)
        for w in widths[1:]:
            x = nn.leaky_relu(conv(w, (4, 4), strides=(2, 2), padding="SAME", dtype=dt)(x), 0.2)
        phi = nn.leaky_relu(nn.Dense(widths[-1], dtype=dt)(x.reshape(x.shape[0], -1)), 0.2)
        return _project(phi, labels, self.num_classes)


class MLPGenerator(nn.Module):
    data_dim: int
    widths: tuple[int, ...]
    num_classes: int = 0
    dtype: Any = None

    @nn.compact
    def __call__(self, z, labels=None):
        x = _condition(z, labels, self.num_classes, self.dtype)
        for w in self.widths:
            x = nn.relu(nn.Dense(w, dtype=self.dtype)(x))
        return nn.Dense(self.data_dim)(_at_least_f32(x))


class MLPDiscriminator(nn.Module):
    widths: tuple[int, ...]
    num_classes: int = 0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, labels=None):
        for w in self.widths:
            x = nn.leaky_relu(nn.Dense(w, dtype=self.dtype)(x), 0.2)
        return _project(x, labels, self.num_classes)
