"""Transformer building blocks (Flax linen): dense layers, norms, rotary embeddings, causal
self-attention with an explicit KV cache, MLPs and the pre-norm block. Given a `mask` (without a cache)
the same attention and block are bidirectional encoders (genjax.nn.text_encoder).

Parameters are float32; `dtype` is the compute dtype (bfloat16 casts weights and activations at each
matmul, accumulating in float32). Norms and softmax always run in float32.

Attention runs through `jax.nn.dot_product_attention` on GPU (training: `is_causal=True` with no mask,
the shape cuDNN's flash attention takes, `implementation='cudnn'` in 16-bit) and through two einsums
elsewhere (faster on XLA:CPU, see `einsum_attention`). With a cache, (B, kv heads, S, head dim)
per layer, the block writes this call's keys and values at `cache_index` (one index shared by the batch)
and attends over all S cache positions under a mask: key j is visible to a query at window position q when
`start[b] <= j <= q`, so rows whose prompts were left-padded never see their padding.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def normal(std: float):
    return nn.initializers.normal(stddev=std)


def matmul(x, w, dtype=jnp.float32):
    """(..., K) @ (K, N) -> (..., N) float32, inputs cast to `dtype`. The leading axes are flattened first:
    XLA:CPU runs a rank-2 dot (and its two backward dots) as one GEMM, ~1.5x faster than the 3-D form."""
    x2 = x.reshape(-1, x.shape[-1])
    if jax.default_backend() == "cpu":
        y = _dot_cpu(x2, w, jnp.dtype(dtype))
    else:
        y = jnp.dot(x2.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
    return y.reshape(*x.shape[:-1], w.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot_cpu(x, w, dtype):
    return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _dot_cpu_fwd(x, w, dtype):
    return _dot_cpu(x, w, dtype), (x, w)


def _dot_cpu_bwd(dtype, res, g):
    """The weight gradient x^T g from an explicitly transposed x: XLA:CPU's fast GEMM path (YNNPACK) does
    not take a dot contracting both operands' first axis, which autodiff emits, so those ran on a slower
    one (the costliest single ops of a GPT step: 4.5 ms vs 2.8 ms for the MLP's output projection on the
    2-core VM; the step ~2% faster there). The barrier keeps XLA from folding the transpose back."""
    x, w = res
    g = g.astype(dtype)
    dx = jnp.dot(g, w.astype(dtype).T, preferred_element_type=jnp.float32)
    xt = jax.lax.optimization_barrier(x.astype(dtype).T)
    dw = jnp.dot(xt, g, preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dot_cpu.defvjp(_dot_cpu_fwd, _dot_cpu_bwd)


class Dense(nn.Module):
    """y = x @ W (+ b): float32 params, matmul in `dtype` with float32 accumulation."""

    features: int
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    std: float = 0.02

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", normal(self.std), (x.shape[-1], self.features), jnp.float32)
        y = matmul(x, kernel, self.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y.astype(self.dtype)


class Norm(nn.Module):
    """LayerNorm or RMSNorm, computed in float32, output in `dtype`."""

    kind: Literal["layernorm", "rmsnorm"] = "layernorm"
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        if self.kind == "layernorm":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps) * scale
        if self.use_bias and self.kind == "layernorm":
            y = y + self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return y.astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (half-split layout). x: (B, T, H, Dh), positions: (B, T) int."""
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[..., None] * freq  # (B, T, half)
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x.dtype)


def cache_mask(start: jax.Array, cache_index: jax.Array, t: int, s: int) -> jax.Array:
    """(B, 1, t, s) bool: query i (window position cache_index + i) sees keys start[b] <= j <= it."""
    q = cache_index + jnp.arange(t)[:, None]  # (t, 1)
    j = jnp.arange(s)[None, :]  # (1, s)
    visible = (j <= q)[None] & (j >= start[:, None, None])  # (B, t, s)
    return (visible | (j == q)[None])[:, None]  # a padding query sees itself: no empty softmax


def attention_impl(impl: str, dtype: Dtype) -> str:
    """'auto' -> cuDNN flash attention on GPU in 16-bit, the einsum form elsewhere."""
    if impl != "auto":
        return impl
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if jax.default_backend() == "gpu" and half else "einsum"


def einsum_attention(q, k, v, mask=None, heads_first: bool = False):
    """Softmax attention as two einsums, scores and softmax in float32. q: (B, T, H, Dh), k and v:
    (B, S, K, Dh), or (B, K, S, Dh) with `heads_first` (the KV cache's layout), K dividing H
    (grouped-query attention: query head i reads key/value head i // (H / K)), mask: bool (B, 1, T, S)
    or None for causal (T == S).

    On XLA:CPU its backward pass is ~4x faster than `jax.nn.dot_product_attention(implementation='xla')`,
    whose vmapped batched dots fall off the fast GEMM path (measured on jax 0.10.2, 2-core Zen 4)."""
    b, t, h, dh = q.shape
    s, kv = (k.shape[2], k.shape[1]) if heads_first else (k.shape[1], k.shape[2])
    kspec = "bksd" if heads_first else "bskd"
    if mask is None:
        mask = jnp.tril(jnp.ones((t, s), bool))
    scale, low = dh ** -0.5, jnp.finfo(jnp.float32).min
    if kv == h:  # multi-head: the plain 4-D einsums (XLA:CPU's fastest form)
        spec = kspec.replace("k", "h")
        scores = jnp.einsum(f"bthd,{spec}->bhts", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(jnp.where(mask, scores * scale, low), axis=-1).astype(v.dtype)
        return jnp.einsum(f"bhts,{spec}->bthd", probs, v, preferred_element_type=jnp.float32).astype(q.dtype)
    # Grouped: the query heads of a group share one key/value head, which is never repeated in memory.
    qg = q.reshape(b, t, kv, h // kv, dh)
    mask = mask[:, :, None] if mask.ndim == 4 else mask  # (B, 1, T, S) -> (B, 1, 1, T, S)
    scores = jnp.einsum(f"btkgd,{kspec}->bkgts", qg, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(jnp.where(mask, scores * scale, low), axis=-1).astype(v.dtype)
    y = jnp.einsum(f"bkgts,{kspec}->btkgd", probs, v, preferred_element_type=jnp.float32)
    return y.reshape(b, t, h, dh).astype(q.dtype)


def causal_block_attention(q, k, v, block: int = 128):
    """Causal self-attention (T == S) by blocks of `block` queries, each against only the keys at or
    before its last position: half the score FLOPs of the masked square, and each block's scores fit in
    cache. Same shapes and result as `einsum_attention(q, k, v)` (which it calls per block); a Python loop
    of T / block static slices, not a scan (XLA:CPU runs dots inside loops far slower).

    On XLA:CPU at context 1024 (4 heads of 32, batch 1) the forward takes ~2x less time and forward +
    backward ~3x less than the square (benchmarks/results/gpt_cpu.md measures it in the model)."""
    t = q.shape[1]
    out = []
    for lo in range(0, t, block):
        hi = min(t, lo + block)
        mask = (jnp.arange(hi)[None, :] <= jnp.arange(lo, hi)[:, None])[None, None]  # (1, 1, hi - lo, hi)
        out.append(einsum_attention(q[:, lo:hi], k[:, :hi], v[:, :hi], mask))
    return jnp.concatenate(out, axis=1)


# Causal contexts longer than this run by query blocks (`causal_block_attention`); shorter ones as one square,
# which is as fast there (training at context 64 and 256 measured the same or faster unblocked).
BLOCK_FROM = 512


def attention(q, k, v, mask=None, implementation: str = "einsum", heads_first: bool = False):
    """Causal (mask=None) or masked attention through `implementation`: 'einsum', or 'xla' / 'cudnn'
    (`jax.nn.dot_product_attention`, which takes grouped key/value heads as they are; cuDNN takes only
    the causal, unmasked 16-bit case). `heads_first`: k and v are (B, K, S, Dh), the cache's layout."""
    if implementation == "einsum":
        if mask is None and not heads_first and q.shape[1] >= BLOCK_FROM:
            return causal_block_attention(q, k, v)
        return einsum_attention(q, k, v, mask, heads_first)
    if heads_first:
        k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


class CausalSelfAttention(nn.Module):
    """Multi-head (n_kv_head = 0 or n_head) or grouped-query attention: n_kv_head key/value heads, each
    read by n_head / n_kv_head consecutive query heads. The cache holds the n_kv_head heads only."""

    n_head: int
    n_kv_head: int = 0  # 0: n_head
    use_bias: bool = False
    dropout: float = 0.0
    use_rope: bool = False
    rope_base: float = 10000.0
    out_std: float = 0.02
    implementation: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, cache=None, cache_index=None, start=None, deterministic=True, mask=None):
        """`mask` bool (B, 1, T, T) replaces the causal mask (no cache): True where a query sees a key."""
        b, t, d = x.shape
        h, dh = self.n_head, d // self.n_head
        kv = self.n_kv_head or h
        g = h // kv
        # Group-major columns (kv group, [its g query heads, k, v], dh); with kv == h that is (head, q/k/v,
        # dh). A tensor-parallel split of them keeps whole groups: queries next to the keys they read.
        qkv = Dense((h + 2 * kv) * dh, self.use_bias, self.dtype, name="qkv")(x).reshape(b, t, kv, g + 2, dh)
        q, k, v = qkv[..., :g, :].reshape(b, t, h, dh), qkv[..., g, :], qkv[..., g + 1, :]
        if self.use_rope:
            q, k = rope(q, positions, self.rope_base), rope(k, positions, self.rope_base)
        impl = attention_impl(self.implementation, self.dtype)
        if cache is None:
            y = attention(q, k, v, mask, impl)
            new_cache = None
        else:
            # The cache is (B, K, S, Dh): the attention dots read it as stored, with no transposed copy
            # of the whole cache at every step; only this call's t positions are written.
            zero = jnp.zeros((), jnp.int32)
            at = (zero, zero, cache_index, zero)
            ck = jax.lax.dynamic_update_slice(cache["k"], k.swapaxes(1, 2).astype(cache["k"].dtype), at)
            cv = jax.lax.dynamic_update_slice(cache["v"], v.swapaxes(1, 2).astype(cache["v"].dtype), at)
            mask = cache_mask(start, cache_index, t, ck.shape[2])
            y = attention(q, ck.astype(q.dtype), cv.astype(q.dtype), mask, impl, heads_first=True)
            new_cache = {"k": ck, "v": cv}
        y = y.reshape(b, t, d)
        y = Dense(d, self.use_bias, self.dtype, std=self.out_std, name="proj")(y)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        return y, new_cache


class MLP(nn.Module):
    d_ff: int
    kind: Literal["gelu", "swiglu"] = "gelu"
    use_bias: bool = False
    dropout: float = 0.0
    out_std: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic=True):
        d = x.shape[-1]
        if self.kind == "gelu":
            hdn = nn.gelu(Dense(self.d_ff, self.use_bias, self.dtype, name="fc")(x), approximate=True)
        else:
            # Columns interleave (gate, up) per hidden unit, so a tensor-parallel split keeps pairs.
            gate_up = Dense(2 * self.d_ff, self.use_bias, self.dtype, name="fc")(x)
            gate_up = gate_up.reshape(*gate_up.shape[:-1], self.d_ff, 2)
            gate, up = gate_up[..., 0], gate_up[..., 1]
            hdn = nn.silu(gate) * up
        y = Dense(d, self.use_bias, self.dtype, std=self.out_std, name="proj")(hdn)
        return nn.Dropout(self.dropout)(y, deterministic=deterministic)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    n_head: int
    d_ff: int
    n_kv_head: int = 0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    use_bias: bool = False
    dropout: float = 0.0
    use_rope: bool = False
    rope_base: float = 10000.0
    out_std: float = 0.02
    implementation: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, cache=None, cache_index=None, start=None, deterministic=True, mask=None):
        a, new_cache = CausalSelfAttention(
            self.n_head, self.n_kv_head, self.use_bias, self.dropout, self.use_rope, self.rope_base,
            self.out_std, self.implementation, self.dtype, name="attn",
        )(Norm(self.norm, self.use_bias, self.dtype, self.norm_eps, name="ln1")(x), positions, cache, cache_index,
          start, deterministic, mask)
        x = x + a
        m = MLP(self.d_ff, self.mlp, self.use_bias, self.dropout, self.out_std, self.dtype, name="mlp")(
            Norm(self.norm, self.use_bias, self.dtype, self.norm_eps, name="ln2")(x), deterministic)
        return x + m, new_cache


def residual_std(n_layer: int, std: float = 0.02) -> float:
    """GPT-2 / nanoGPT init of the projections that write into the residual stream."""
    return std / math.sqrt(2 * n_layer)
