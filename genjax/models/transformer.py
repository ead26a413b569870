"""Decoder-only transformer (GPT): pre-norm blocks, causal attention, weight tying, KV-cache generation.

    params = init(key, cfg)                               # plain dict of float32 arrays
    loss, metrics = loss(params, {'tokens': int32 (B, T + 1)}, key, cfg, step)
    sums = evaluate(params, batch, key, cfg)              # summed NLL, correct predictions, count
    tokens = sample(params, key, num, cfg, SampleOptions(prompt=(ids...), length=256))  # the contract
    tokens, counts = generate(params, key, prompts, prompt_lengths, max_new_tokens, cfg, ...)

The layers are a Python loop (params under blocks/layer_<i>), or with `scan_layers=True` one `nn.scan`
over a stacked block (params with a leading n_layer axis; compiles one block, for deep models).

Generation is one compiled call: the prompt is prefilled once into a KV cache preallocated at
`block_size`, then a `lax.while_loop` decodes one token per step. The number of new tokens and every
sampling option are traced values, so changing them does not recompile (the output buffer is bucketed to
a power of two, the prompt width to a power of two >= 8). Prompts of different lengths share one batch:
each row is left-aligned inside the window, so the whole batch writes the cache at one index and a row's
padding is masked out. A generation longer than the window slides it: when the cache is full, the window
drops its oldest half and the rest is prefilled again (an outer loop around the decode loop).

Grouped-query attention (`n_kv_head` < n_head) shares each key/value head among n_head / n_kv_head query
heads; the KV cache holds the n_kv_head heads only. The LM head multiplies by the vocabulary padded to a
multiple of `pad_vocab_to` (zero columns: full-width matmul tiles on accelerators) and slices the logits
back, so parameters, logits, losses and samples all have the user's `vocab_size`.

Tensor parallelism: `MODEL_RULES` names, per parameter, the dimension a mesh's `model` axis splits
(attention by heads, the MLP by hidden units, the output projections by their input rows: Megatron's
layout, one all-reduce per branch); pass it to `loop.run(model_rules=...)` with train.model_parallel > 1.
With grouped-query attention the model axis should divide n_kv_head, so that each device holds whole groups.

Randomness for init, dropout and sampling comes from `genjax.nn.fast_key(key)`: an RngBitGenerator key
derived from the caller's key, which XLA:CPU compiles several times faster than threefry.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax.config import ConfigError, check_at_least, check_choices
from genjax.nn import fast_key, init_params
from genjax.nn.attention import Block, Norm, matmul, normal, residual_std

# Dimension of each parameter split over the mesh's `model` axis (negative: also right for the stacked
# leaves of scan_layers). The qkv columns are head-major (grouped-query: group-major, each key/value head
# after its query heads) and the SwiGLU fc columns interleave gate and up (genjax.nn.attention), so a
# contiguous split keeps whole heads (groups) and whole hidden units together.
MODEL_RULES = {"attn/qkv/kernel": -1, "attn/qkv/bias": -1, "attn/proj/kernel": -2,
               "mlp/fc/kernel": -1, "mlp/fc/bias": -1, "mlp/proj/kernel": -2}


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 0  # 0: taken from the tokenizer by the experiment
    block_size: int = 64  # context length; the KV cache holds this many positions
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # key/value heads (grouped-query attention), a divisor of n_head; 0: n_head
    d_model: int = 128
    d_ff: int = 0  # 0: 4 * d_model (gelu) or the parameter-matched 8/3 * d_model rounded to 32 (swiglu)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    pos: Literal["learned", "rope"] = "learned"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    tie_embeddings: bool = True
    bias: bool = False
    dropout: float = 0.0
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params stay float32
    attention: Literal["auto", "einsum", "xla", "cudnn"] = "auto"  # auto: cuDNN on GPU in bf16, else einsum
    rope_base: float = 10000.0
    remat: bool = False  # recompute each block's activations in the backward pass
    # One nn.scan over stacked layers (compiles one block: use for deep models) or a Python loop of
    # layers (faster steps and decoding on CPU, measured ~20% on the nanoGPT CPU config).
    scan_layers: bool = False
    # The LM head's matmul runs on the vocabulary padded to a multiple of this (1: off); the padding never
    # reaches parameters or logits. 64 fills accelerator tiles (GPT-2's 50257 -> 50304, as in nanoGPT).
    pad_vocab_to: int = 64

    def validate(self):
        check_choices(self, "model")
        if self.vocab_size < 0:
            raise ConfigError(f"model.vocab_size={self.vocab_size} must be >= 1 (or 0: from the tokenizer)")
        check_at_least(self, "model", ("block_size", "n_layer", "n_head", "d_model", "pad_vocab_to"))
        if self.n_kv_head < 0 or (self.n_kv_head and self.n_head % self.n_kv_head):
            raise ConfigError(f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head} "
                              "(or be 0: one key/value head per query head)")
        if not self.norm_eps > 0:
            raise ConfigError(f"model.norm_eps={self.norm_eps} must be > 0")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; "
                f"pick n_head among the divisors of d_model"
            )
        if self.pos == "rope" and (self.d_model // self.n_head) % 2:
            raise ConfigError(
                f"model.pos='rope' needs an even head size, got d_model/n_head={self.d_model // self.n_head}"
            )
        if self.d_ff < 0:
            raise ConfigError(f"model.d_ff={self.d_ff} must be >= 0 (0: the default width)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")

    @property
    def ff_width(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return 32 * math.ceil(8 * self.d_model / 3 / 32)
        return 4 * self.d_model

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to

    @property
    def compute_dtype(self):
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32


SIZES = {
    # nanoGPT's CPU example (shakespeare_char at 4 layers, 128 dims, context 64): ~0.8M params at vocab 65;
    # vocab_size 0 is set from the tokenizer by the experiment.
    "nanogpt-cpu": Config(n_layer=4, n_head=4, d_model=128, block_size=64),
    # nanoGPT's shakespeare_char: ~10.7M params at vocab 65.
    "shakespeare": Config(n_layer=6, n_head=6, d_model=384, block_size=256, dropout=0.2),
    # GPT-2 small (124M).
    "gpt2": Config(n_layer=12, n_head=12, d_model=768, block_size=1024, vocab_size=50257, scan_layers=True),
}


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    prompt: tuple[int, ...] = ()  # token ids every sample continues ((): the vocabulary's first token)
    length: int = 256  # new tokens per sample
    temperature: float = 1.0
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # nucleus: keep the smallest set with this much probability (1: all)
    greedy: bool = False  # argmax decoding (ignores temperature, top_k and top_p)
    stop_token: int = -1  # end a sample early when drawn (-1: never)

    def validate(self, cfg: Config):
        if self.length < 1:
            raise ConfigError(f"length={self.length} must be >= 1 (new tokens per sample)")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0 (use --greedy for argmax decoding)")
        if self.top_k < 0:
            raise ConfigError(f"top_k={self.top_k} must be >= 0 (0 keeps every token)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1] (1 keeps every token)")
        bad = [t for t in self.prompt if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ConfigError(f"prompt tokens {bad[:5]} are outside the vocabulary [0, {cfg.vocab_size})")


# ----------------------------------------------------------------------------- the network


class _Layer(nn.Module):
    """One block as a scan body: carry = residual stream, scanned input/output = this layer's cache."""

    cfg: Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, cache, positions, cache_index, start):
        c = self.cfg
        return Block(
            n_head=c.n_head, d_ff=c.ff_width, n_kv_head=c.n_kv_head, norm=c.norm, norm_eps=c.norm_eps, mlp=c.mlp,
            use_bias=c.bias, dropout=c.dropout,
            use_rope=c.pos == "rope", rope_base=c.rope_base, out_std=residual_std(c.n_layer),
            implementation=c.attention, dtype=c.compute_dtype, name="block",
        )(x, positions, cache, cache_index, start, self.deterministic)


class _Unrolled(nn.Module):
    """The layers as a Python loop (params under layer_<i>); the cache is a tuple of per-layer dicts, so a
    decode step updates each layer's buffers in place instead of slicing and restacking one array."""

    cfg: Config
    deterministic: bool
    layer: Any

    @nn.compact
    def __call__(self, x, cache, positions, cache_index, start):
        caches = []
        for i in range(self.cfg.n_layer):
            layer_cache = None if cache is None else cache[i]
            x, new = self.layer(self.cfg, self.deterministic, name=f"layer_{i}")(
                x, layer_cache, positions, cache_index, start)
            caches.append(new)
        return x, None if cache is None else tuple(caches)


class GPT(nn.Module):
    cfg: Config
    deterministic: bool = True

    def setup(self):
        c = self.cfg
        self.wte = self.param("wte", normal(0.02), (c.vocab_size, c.d_model), jnp.float32)
        if c.pos == "learned":
            self.wpe = self.param("wpe", normal(0.02), (c.block_size, c.d_model), jnp.float32)
        layer = nn.remat(_Layer, prevent_cse=False) if c.remat else _Layer
        if not c.scan_layers:
            self.blocks = _Unrolled(c, self.deterministic, layer)
        else:
            self.blocks = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.n_layer,
            )(c, self.deterministic)
        self.drop = nn.Dropout(c.dropout)
        self.ln_f = Norm(c.norm, c.bias, c.compute_dtype, c.norm_eps)
        if not c.tie_embeddings:
            self.lm_head = self.param("lm_head", normal(0.02), (c.d_model, c.vocab_size), jnp.float32)

    def __call__(self, tokens, positions, cache=None, cache_index=None, start=None):
        """tokens, positions: (B, T) int -> final hidden states (B, T, D) and the updated cache."""
        c = self.cfg
        x = jnp.take(self.wte, tokens, axis=0)
        if c.pos == "learned":
            x = x + jnp.take(self.wpe, positions, axis=0)
        x = self.drop(x.astype(c.compute_dtype), deterministic=self.deterministic)
        x, new_cache = self.blocks(x, cache, positions, cache_index, start)
        return self.ln_f(x), new_cache

    def logits(self, h):
        """Hidden states (..., D) -> float32 logits (..., V), through the padded vocabulary's matmul."""
        c = self.cfg
        w = self.wte.T if c.tie_embeddings else self.lm_head
        if c.padded_vocab > c.vocab_size:
            w = jnp.pad(w, ((0, 0), (0, c.padded_vocab - c.vocab_size)))
        return matmul(h, w, c.compute_dtype)[..., : c.vocab_size]


def _check_vocab(cfg: Config):
    if cfg.vocab_size < 1:
        raise ConfigError("model.vocab_size=0: set it from the tokenizer (tokenizer.vocab_size) before init")


def init(key: jax.Array, cfg: Config):
    """Float32 parameters as a plain nested dict (see the module docstring for the block layout)."""
    cfg.validate()
    _check_vocab(cfg)
    tokens = jnp.zeros((1, 1), jnp.int32)
    return init_params(GPT(cfg), key, tokens, tokens)


def num_params(params, *, exclude_positions: bool = False) -> int:
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    if exclude_positions and "wpe" in params:
        n -= int(np.prod(params["wpe"].shape))
    return n


def flops_per_token(cfg: Config, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward): 6 * non-embedding matmul params + attention,
    plus the LM head at its padded width (PaLM appendix B / nanoGPT's estimate_mfu, counting the head
    explicitly)."""
    t = cfg.block_size if seq_len is None else seq_len
    d, L = cfg.d_model, cfg.n_layer
    mlp_mats = 3 if cfg.mlp == "swiglu" else 2
    attn = 2 * d * d + 2 * d * cfg.kv_heads * (d // cfg.n_head)  # q and output projections, k and v
    matmul = L * (attn + mlp_mats * d * cfg.ff_width) + d * cfg.padded_vocab
    attention = L * 2 * t * d  # q.k and p.v: 2 * t * d multiply-adds per token and layer (no causal halving)
    return 6.0 * matmul + 6.0 * attention


def forward(params, tokens, cfg: Config, key: jax.Array | None = None):
    """Full-sequence logits (B, T, V) float32. With a key (and cfg.dropout > 0) dropout is on."""
    deterministic = key is None or cfg.dropout == 0.0
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    model = GPT(cfg, deterministic)
    rngs = None if deterministic else {"dropout": fast_key(key)}
    h, _ = model.apply({"params": params}, tokens, positions, rngs=rngs)
    return model.apply({"params": params}, h, method=GPT.logits)


def _token_scores(params, batch, cfg: Config, key: jax.Array | None = None):
    """Per position of {'tokens': int32 (B, T + 1)}: next-token NLL, correctness (float32), and the
    batch's optional 'mask' (B, T) weights (None when absent)."""
    tokens = batch["tokens"]
    targets = tokens[:, 1:]
    logits = forward(params, tokens[:, :-1], cfg, key)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return nll, correct, batch.get("mask")


def loss(params, batch, key, cfg: Config, step=None):
    """Mean next-token cross entropy over {'tokens': int32 (B, T + 1)} (optional 'mask' (B, T) weights)."""
    nll, correct, weights = _token_scores(params, batch, cfg, key)
    if weights is None:
        mean_nll, accuracy = jnp.mean(nll), jnp.mean(correct)
    else:
        weights = weights.astype(jnp.float32)
        total = jnp.maximum(jnp.sum(weights), 1.0)
        mean_nll, accuracy = jnp.sum(nll * weights) / total, jnp.sum(correct * weights) / total
    metrics = {
        "nll": mean_nll,
        "perplexity": jnp.exp(mean_nll),
        "accuracy": accuracy,
        "bits_per_token": mean_nll / math.log(2.0),
    }
    return mean_nll, metrics


def evaluate(params, batch, key, cfg: Config):
    """Sums over held-out tokens: {'nll', 'correct', 'count'} (float32), weighted by batch['mask'] (B, T)
    where given (padding rows weigh 0); divide by 'count' for per-token averages. `key` is unused."""
    nll, correct, weights = _token_scores(params, batch, cfg)
    weights = jnp.ones_like(nll) if weights is None else weights.astype(jnp.float32)
    return {"nll": jnp.sum(nll * weights), "correct": jnp.sum(correct * weights), "count": jnp.sum(weights)}


# ----------------------------------------------------------------------------- KV cache


def init_cache(cfg: Config, batch: int):
    """Zeroed keys and values, (B, kv_heads, block_size, head_dim) per layer (the layout the attention dots
    read in place): one dict of arrays stacked along a leading n_layer axis (scan_layers) or a tuple of
    per-layer dicts."""
    shape = (batch, cfg.kv_heads, cfg.block_size, cfg.d_model // cfg.n_head)
    if cfg.scan_layers:
        shape = (cfg.n_layer, *shape)
        return {"k": jnp.zeros(shape, cfg.compute_dtype), "v": jnp.zeros(shape, cfg.compute_dtype)}
    return tuple({"k": jnp.zeros(shape, cfg.compute_dtype), "v": jnp.zeros(shape, cfg.compute_dtype)}
                 for _ in range(cfg.n_layer))


def _window_apply(params, cfg, tokens, cache, cache_index, start):
    """Runs `tokens` (B, t) at window positions cache_index.. through the model, reading and writing the
    cache. Row b's sequence begins at window position start[b]; its position ids count from there."""
    b, t = tokens.shape
    positions = jnp.maximum(cache_index + jnp.arange(t, dtype=jnp.int32)[None, :] - start[:, None], 0)
    return GPT(cfg).apply({"params": params}, tokens, positions, cache, cache_index, start)


def _head(params, cfg, h):
    # Inside generate's loop XLA hoists the head's transposed (and padded) copy of a tied embedding out of
    # the loop, once per call: a (D, V) GEMV ran 20-40% faster than reading the (V, D) embedding in place.
    return GPT(cfg).apply({"params": params}, h, method=GPT.logits)


def _unrolled(params, cfg: Config):
    """Stacked (scan_layers) params and config as the layer loop's: generation runs the layers unrolled,
    so each layer's cache is its own buffer, updated in place. Scanned layers slice and restack the whole
    stacked cache at every step (a copy of it per token)."""
    if not cfg.scan_layers:
        return params, cfg
    stacked = params["blocks"]["block"]
    blocks = {f"layer_{i}": {"block": jax.tree.map(lambda a, i=i: a[i], stacked)} for i in range(cfg.n_layer)}
    return {**params, "blocks": blocks}, dataclasses.replace(cfg, scan_layers=False)


def prefill(params, tokens, start, cfg: Config, cache=None):
    """Fills the cache from window position 0 with `tokens` (B, W <= block_size), left-padded so that
    row b begins at start[b]. Returns (hidden states (B, W, D), cache)."""
    cache = init_cache(cfg, tokens.shape[0]) if cache is None else cache
    return _window_apply(params, cfg, tokens, cache, jnp.zeros((), jnp.int32), start)


def decode_step(params, cache, tokens, cache_index, start, cfg: Config):
    """One new token per row (B,) at window position cache_index -> (logits (B, V), cache)."""
    h, cache = _window_apply(params, cfg, tokens[:, None], cache, cache_index, start)
    return _head(params, cfg, h[:, 0]), cache


# ----------------------------------------------------------------------------- sampling


def _filter_logits(scaled, top_k, top_p):
    """-inf outside the top_k most likely tokens and outside the nucleus of mass top_p (one sort)."""
    vocab = scaled.shape[-1]
    ranked = -jnp.sort(-scaled, axis=-1)  # descending
    rank = jnp.arange(vocab)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    in_k = rank < k
    probs = jax.nn.softmax(jnp.where(in_k, ranked, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = in_k & ((mass_before < top_p) | (top_p >= 1.0) | (rank == 0))
    count = jnp.sum(keep, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ranked, count - 1, axis=-1)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def sample_logits(key, logits, temperature=1.0, top_k=0, top_p=1.0, greedy=False):
    """Next tokens (B,) from float32 logits (B, V). All options may be traced: top_k <= 0 and
    top_p >= 1 switch those filters off (and skip the sort); greedy or temperature <= 0 takes the argmax."""
    greedy = jnp.asarray(greedy) | (temperature <= 0)

    def draw(logits):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        filtered = jax.lax.cond((top_k > 0) | (top_p < 1.0), _filter_logits, lambda x, *_: x,
                                scaled, top_k, top_p)
        return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

    return jax.lax.cond(greedy, lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32), draw, logits)


def _bucket(n: int, minimum: int = 32) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("cfg", "out_len"))
def _generate(params, key, prompt, lengths, max_new, temperature, top_k, top_p, greedy, stop_token, *,
              cfg: Config, out_len: int):
    bsz, p = prompt.shape
    w = cfg.block_size
    slide = max(w // 2, 1)
    key = fast_key(key)
    params, cfg = _unrolled(params, cfg)

    # Left-align every row (its last prompt token at column p - 1), then keep the last w columns.
    shift = p - lengths
    cols = (jnp.arange(p)[None, :] - shift[:, None]) % p
    aligned = jnp.take_along_axis(prompt, cols, axis=1)
    if p > w:
        aligned = aligned[:, p - w:]
        shift = shift - (p - w)
    filled = min(p, w)
    window = jnp.zeros((bsz, w), jnp.int32).at[:, :filled].set(aligned)
    start = jnp.maximum(shift, 0).astype(jnp.int32)
    h, cache = prefill(params, aligned, start, cfg)
    logits = _head(params, cfg, h[:, filled - 1])

    # State: (i, cur, window, start, cache, logits, done, out, count). `logits` predict the token at
    # window position `cur`; `i` tokens have been drawn.
    def unfinished(state):
        return (state[0] < max_new) & ~jnp.all(state[6])

    def decode(state):
        i, cur, window, start, cache, logits, done, out, count = state
        tok = sample_logits(jax.random.fold_in(key, i), logits, temperature, top_k, top_p, greedy)
        tok = jnp.where(done, 0, tok)
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))
        count = count + (~done).astype(jnp.int32)
        done = done | (tok == stop_token)
        window = jax.lax.dynamic_update_slice(window, tok[:, None], (0, cur))
        logits, cache = decode_step(params, cache, tok, cur, start, cfg)
        return i + 1, cur + 1, window, start, cache, logits, done, out, count

    def decode_until_full(state):
        return jax.lax.while_loop(lambda s: unfinished(s) & (s[1] < w), decode, state)

    def slide_window(state):
        # The window is full: drop its oldest `slide` positions and prefill the rest again.
        i, cur, window, start, cache, logits, done, out, count = state
        window = jnp.roll(window, -slide, axis=1)
        start = jnp.maximum(start - slide, 0)
        h, cache = prefill(params, window[:, : w - slide], start, cfg, cache)
        logits = _head(params, cfg, h[:, w - slide - 1])
        return i, jnp.asarray(w - slide, jnp.int32), window, start, cache, logits, done, out, count

    state = (jnp.zeros((), jnp.int32), jnp.asarray(filled, jnp.int32), window, start, cache, logits,
             jnp.zeros((bsz,), bool), jnp.zeros((bsz, out_len), jnp.int32), jnp.zeros((bsz,), jnp.int32))
    state = decode_until_full(state)
    if out_len > w - filled:  # only then can the window fill up (static)
        state = jax.lax.while_loop(unfinished, lambda s: decode_until_full(slide_window(s)), state)
    return state[7], state[8]


def generate(params, key, prompt_tokens, prompt_lengths=None, max_new_tokens: int = 64,
             cfg: Config | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             greedy: bool = False, stop_token: int = -1):
    """Continues each prompt row by up to `max_new_tokens` tokens in one compiled call.

    prompt_tokens: int32 (B, P), row b's prompt in its first prompt_lengths[b] (>= 1) columns (default:
    all P). Returns (tokens int32 (B, max_new_tokens), counts int32 (B,)): row b's new tokens are
    tokens[b, :counts[b]], ending with `stop_token` if it was drawn; the rest is 0. Recompiles only
    when the prompt width or max_new_tokens crosses a power of two.
    """
    if cfg is None:
        raise TypeError("generate needs cfg")
    prompt_tokens = np.asarray(prompt_tokens, np.int32)
    if prompt_tokens.ndim != 2 or prompt_tokens.shape[1] < 1:
        raise ValueError(f"prompt_tokens must be int (B, P) with P >= 1, got shape {prompt_tokens.shape}")
    bsz, p = prompt_tokens.shape
    lengths = np.full((bsz,), p, np.int32) if prompt_lengths is None else np.asarray(prompt_lengths, np.int32)
    if lengths.shape != (bsz,) or lengths.min() < 1 or lengths.max() > p:
        raise ValueError(f"prompt_lengths must be (B,) in [1, {p}], got {lengths}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    width = _bucket(p, 8)
    padded = np.zeros((bsz, width), np.int32)
    padded[:, :p] = prompt_tokens
    out, counts = _generate(
        params, key, jnp.asarray(padded), jnp.asarray(lengths), jnp.int32(max_new_tokens),
        jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), jnp.bool_(greedy),
        jnp.int32(stop_token), cfg=cfg, out_len=_bucket(max_new_tokens))
    return out[:, :max_new_tokens], counts


def sample(params, key, num: int, cfg: Config, options: SampleOptions = SampleOptions()) -> jax.Array:
    """int32 (num, length) new tokens continuing `options.prompt` (default: token 0, the first symbol of
    the vocabulary / BPE's end-of-text); a row that drew `stop_token` ends with it, then -1s."""
    options.validate(cfg)
    prompt = np.tile(np.asarray(options.prompt or (0,), np.int32), (num, 1))
    tokens, counts = generate(params, key, prompt, None, options.length, cfg, temperature=options.temperature,
                              top_k=options.top_k, top_p=options.top_p, greedy=options.greedy,
                              stop_token=options.stop_token)
    return jnp.where(jnp.arange(options.length)[None, :] < counts[:, None], tokens, -1).astype(jnp.int32)
