"""The DDPM U-Net (Ho et al. 2020, after PixelCNN++): a noise-conditional image-to-image network.

    out = UNet(out_channels=C, channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
               attn_resolutions=(16,), dropout=0.1)(x, t, labels, train=True)

- `x` (B, H, W, C), `t` (B,) noise level in [0, 1] (continuous time; embedded as sin/cos of t * 1000,
  so t = i / 1000 gives DDPM's integer-timestep embedding), `labels` (B,) int32 in [0, num_classes]
  when `num_classes > 0`, the value `num_classes` being the "no label" of classifier-free guidance.
- Levels: one per entry of `channel_mults`, each `num_res_blocks` residual blocks (GroupNorm, swish,
  3x3 conv, time/class embedding added between the convs, dropout) with self-attention where the
  feature map's side is in `attn_resolutions`, then a stride-2 conv down (all but the last level).
  A middle block (res, attention, res), then the mirror image going up with skip connections
  (nearest-neighbour upsampling + 3x3 conv).
- Cross-attention (text conditioning, Rombach et al. 2022): with `context_resolutions` non-empty the
  network also takes `context` (B, S, D) token states and `context_mask` (B, S) bool, and at every
  feature-map side listed there (levels and middle block) a residual block's output attends to them
  (queries from the features, keys and values from the tokens, padding masked out). Empty (the default):
  no cross-attention layers, the parameters of every existing configuration unchanged.
- Any H, W: the input is zero-padded to a multiple of 2^(levels - 1) and the output cropped back
  (28x28 MNIST with 4 levels runs at 32x32 inside); `attn_resolutions` refer to the padded sizes
  (`level_resolutions` lists them).
- Residual branches end in zero-initialized layers, so a fresh network is the identity on its
  residual stream and outputs exactly zero.
- `dtype` is the compute dtype (parameters stay float32); normalization statistics, softmax and the
  output are float32.

The DDPM CIFAR-10 configuration (channels 128, mults (1, 2, 2, 2), 2 blocks, attention at 16) has
35.7M parameters, as in the paper.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.nn.attention import einsum_attention

TIME_SCALE = 1000.0  # t in [0, 1] is embedded as t * TIME_SCALE (DDPM's integer timesteps at T=1000)


def level_resolutions(height: int, num_levels: int) -> tuple[int, ...]:
    """Feature-map side at each level (after padding the input to a multiple of 2^(levels - 1))."""
    side = padded_size(height, num_levels)
    return tuple(side // 2**i for i in range(num_levels))


def padded_size(size: int, num_levels: int) -> int:
    m = 2 ** (num_levels - 1)
    return -(-size // m) * m


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Transformer-style sinusoidal features of `t * TIME_SCALE`: (B,) -> (B, dim), float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = (t.astype(jnp.float32) * TIME_SCALE)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _zeros_init(key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


# Variance-scaling as in the DDPM reference (fan_avg, uniform).
_default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


class GroupNorm(nn.Module):
    num_groups: int

    @nn.compact
    def __call__(self, x):
        groups = math.gcd(self.num_groups, x.shape[-1])
        y = nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=jnp.float32)(x.astype(jnp.float32))
        return y.astype(x.dtype)


class ResBlock(nn.Module):
    out_channels: int
    num_groups: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        conv = lambda ch, k, init=_default_init, name=None: nn.Conv(  # noqa: E731
            ch, (k, k), dtype=self.dtype, kernel_init=init, name=name)
        h = nn.swish(GroupNorm(self.num_groups, name="norm1")(x))
        h = conv(self.out_channels, 3, name="conv1")(h)
        h = h + nn.Dense(self.out_channels, dtype=self.dtype, kernel_init=_default_init,
                         name="emb_proj")(nn.swish(emb))[:, None, None, :]
        h = nn.swish(GroupNorm(self.num_groups, name="norm2")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(self.out_channels, 3, init=_zeros_init, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual, zero-initialized output."""

    num_groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = GroupNorm(self.num_groups, name="norm")(x).reshape(b, h * w, c)
        qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=_default_init, name="qkv")(y)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(c)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        y = jnp.einsum("bqk,bkc->bqc", weights, v)
        y = nn.Dense(c, dtype=self.dtype, kernel_init=_zeros_init, name="proj")(y)
        return x + y.reshape(b, h, w, c)


class CrossAttnBlock(nn.Module):
    """Multi-head attention of the H*W positions (queries) to `context` tokens (keys/values), padding masked,
    residual, zero-initialized output (a fresh layer leaves the U-Net as it was)."""

    num_groups: int
    head_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context, context_mask):
        b, h, w, c = x.shape
        heads = max(1, c // self.head_dim)
        dense = lambda n, name, init=_default_init: nn.Dense(  # noqa: E731
            n, dtype=self.dtype, kernel_init=init, name=name)
        y = GroupNorm(self.num_groups, name="norm")(x).reshape(b, h * w, c)
        q = dense(c, "q")(y).reshape(b, h * w, heads, c // heads)
        kv = dense(2 * c, "kv")(context.astype(self.dtype)).reshape(b, -1, heads, 2, c // heads)
        mask = context_mask[:, None, None, :]  # (B, 1, 1, S): every query sees the real tokens
        y = einsum_attention(q, kv[..., 0, :], kv[..., 1, :], mask).reshape(b, h * w, c)
        return x + dense(c, "proj", _zeros_init)(y).reshape(b, h, w, c)


class UNet(nn.Module):
    out_channels: int
    channels: int = 128
    channel_mults: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    num_groups: int = 32
    num_classes: int = 0  # 0: unconditional; else labels in [0, num_classes], num_classes = "no label"
    context_resolutions: Sequence[int] = ()  # sides with cross-attention to `context` (() = none)
    context_head_dim: int = 16  # channels per cross-attention head
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, t, labels=None, train: bool = False, context=None, context_mask=None):
        B, H, W, _ = x.shape
        levels = len(self.channel_mults)
        ph, pw = padded_size(H, levels) - H, padded_size(W, levels) - W
        if ph or pw:
            x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))

        emb_dim = 4 * self.channels
        emb = timestep_embedding(jnp.broadcast_to(t, (B,)), self.channels)
        emb = nn.Dense(emb_dim, kernel_init=_default_init, name="time_dense0")(emb)
        emb = nn.Dense(emb_dim, kernel_init=_default_init, name="time_dense1")(nn.swish(emb))
        if self.num_classes > 0:
            if labels is None:
                raise ValueError("a class-conditional UNet needs labels (num_classes = no label)")
            emb = emb + nn.Embed(self.num_classes + 1, emb_dim, name="class_embed")(labels)
        emb = emb.astype(self.dtype)

        block = lambda ch, name: ResBlock(ch, self.num_groups, self.dropout, self.dtype, name=name)  # noqa: E731
        attn = lambda name: AttnBlock(self.num_groups, self.dtype, name=name)  # noqa: E731
        if self.context_resolutions and context is None:
            raise ValueError("a UNet with context_resolutions needs context and context_mask")

        def cross(h, name):
            if h.shape[1] not in self.context_resolutions:
                return h
            return CrossAttnBlock(self.num_groups, self.context_head_dim, self.dtype, name=name)(
                h, context, context_mask)

        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, kernel_init=_default_init,
                    name="conv_in")(x.astype(self.dtype))
        skips = [h]
        for i, mult in enumerate(self.channel_mults):
            for j in range(self.num_res_blocks):
                h = block(self.channels * mult, f"down{i}_res{j}")(h, emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(f"down{i}_attn{j}")(h)
                h = cross(h, f"down{i}_cross{j}")
                skips.append(h)
            if i != levels - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype,
                            kernel_init=_default_init, name=f"down{i}_downsample")(h)
                skips.append(h)

        h = block(h.shape[-1], "mid_res0")(h, emb, train)
        h = attn("mid_attn")(h)
        h = cross(h, "mid_cross")
        h = block(h.shape[-1], "mid_res1")(h, emb, train)

        for i, mult in reversed(list(enumerate(self.channel_mults))):
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = block(self.channels * mult, f"up{i}_res{j}")(h, emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(f"up{i}_attn{j}")(h)
                h = cross(h, f"up{i}_cross{j}")
            if i != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype, kernel_init=_default_init,
                            name=f"up{i}_upsample")(h)
        assert not skips

        h = nn.swish(GroupNorm(self.num_groups, name="norm_out")(h))
        out = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, kernel_init=_zeros_init,
                      name="conv_out")(h).astype(jnp.float32)
        return out[:, ph // 2:ph // 2 + H, pw // 2:pw // 2 + W, :]
