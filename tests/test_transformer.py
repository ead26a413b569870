"""Transformer family: config, causality, KV-cache decoding, sampling options, overfitting, 8 devices."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import parallel, train
from genjax.config import ConfigError
from genjax.models import transformer as T

VOCAB = 37
# Two configs cover every option: learned/rope, gelu/swiglu, layernorm/rmsnorm, tied/untied, scan/unrolled.
CFGS = {
    "learned": T.Config(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, d_model=32),
    "rope": T.Config(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, d_model=32, pos="rope",
                     mlp="swiglu", norm="rmsnorm", tie_embeddings=False, bias=True, scan_layers=True),
}


@functools.lru_cache(maxsize=None)
def params_for(name):
    return T.init(jax.random.key(0), CFGS[name])


@functools.partial(jax.jit, static_argnames="cfg")
def forward(params, tokens, cfg):
    return T.forward(params, tokens, cfg)


def tokens(key, shape):
    return jax.random.randint(jax.random.key(key), shape, 0, VOCAB, jnp.int32)


# ----------------------------------------------------------------------------- config


def test_config_sizes_and_validation():
    shapes = jax.eval_shape(lambda: T.init(jax.random.key(0), T.config_for("shakespeare", vocab_size=65)))
    assert 10.6e6 < T.num_params(shapes) < 10.9e6
    shapes = jax.eval_shape(lambda: T.init(jax.random.key(0), T.config_for("gpt2")))
    assert 124.0e6 < T.num_params(shapes) < 124.8e6  # GPT-2 small: 124M with tied embeddings
    shapes = jax.eval_shape(lambda: T.init(jax.random.key(0), T.config_for("nanogpt-cpu", vocab_size=65)))
    assert 0.79e6 < T.num_params(shapes, exclude_positions=True) < 0.81e6
    with pytest.raises(ConfigError, match="n_head"):
        T.Config(d_model=30, n_head=4).validate()
    with pytest.raises(ConfigError, match="even head size"):
        T.Config(d_model=12, n_head=4, pos="rope").validate()
    with pytest.raises(ConfigError, match="unknown transformer size"):
        T.config_for("huge")
    with pytest.raises(ConfigError, match="vocab_size=0"):
        T.init(jax.random.key(0), T.Config())


def test_params_are_float32_and_bf16_runs():
    cfg = CFGS["learned"]
    params = params_for("learned")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    x = tokens(1, (2, 16))
    f32 = forward(params, x, cfg)
    # jax.nn.dot_product_attention (the GPU path) and the einsum form (the CPU path) agree.
    np.testing.assert_allclose(forward(params, x, dataclasses.replace(cfg, attention="xla")), f32, atol=1e-5)
    bf16 = forward(params, x, dataclasses.replace(cfg, dtype="bfloat16"))
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, f32, atol=0.05)


# ----------------------------------------------------------------------------- causality and the cache


@pytest.mark.parametrize("name", sorted(CFGS))
def test_causal(name):
    cfg, params = CFGS[name], params_for(name)
    x = tokens(2, (2, 16))
    base = forward(params, x, cfg)
    for t in (0, 7, 14):
        changed = x.at[:, t + 1].set((x[:, t + 1] + 1) % VOCAB)
        out = forward(params, changed, cfg)
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        assert not np.allclose(out[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("name", sorted(CFGS))
def test_kv_cache_decode_matches_forward(name):
    """Prefill a left-padded prompt, decode the rest one token at a time: every position's logits equal
    the full forward pass of the unpadded sequence."""
    cfg, params = CFGS[name], params_for(name)
    n = cfg.block_size
    seqs = np.asarray(tokens(3, (2, n)))
    ref = np.asarray(forward(params, jnp.asarray(seqs), cfg))
    pad = np.array([0, 3])  # row 1 starts 3 positions into the window
    p = 6  # prefill window columns
    window = np.zeros((2, n), np.int32)
    for b in range(2):
        window[b, pad[b]:] = seqs[b, : n - pad[b]]
    start = jnp.asarray(pad, jnp.int32)
    prefill = jax.jit(T.prefill, static_argnames="cfg")
    h, cache = prefill(params, jnp.asarray(window[:, :p]), start, cfg=cfg,
                       cache=T.init_cache(cfg, 2))
    logits = T._head(params, cfg, h)
    for b in range(2):
        np.testing.assert_allclose(logits[b, pad[b]:p], ref[b, : p - pad[b]], atol=2e-5, rtol=1e-5)
    decode = jax.jit(T.decode_step, static_argnames="cfg")
    for i in range(p, n):
        step_logits, cache = decode(params, cache, jnp.asarray(window[:, i]), jnp.int32(i), start, cfg=cfg)
        for b in range(2):
            np.testing.assert_allclose(step_logits[b], ref[b, i - pad[b]], atol=2e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- generation


def greedy_reference(params, cfg, prompts, lengths, steps):
    """Argmax continuation computed with full forward passes over a right-padded buffer."""
    buf = np.zeros((len(prompts), cfg.block_size), np.int32)
    for b, (row, n) in enumerate(zip(prompts, lengths)):
        buf[b, :n] = row[:n]
    lengths = np.array(lengths)
    out = []
    for _ in range(steps):
        logits = np.asarray(forward(params, jnp.asarray(buf), cfg))
        nxt = logits[np.arange(len(buf)), lengths - 1].argmax(-1)
        buf[np.arange(len(buf)), lengths] = nxt
        lengths = lengths + 1
        out.append(nxt)
    return np.stack(out, 1)


@pytest.mark.parametrize("name", sorted(CFGS))
def test_generate_greedy_matches_forward(name):
    cfg, params = CFGS[name], params_for(name)
    prompts = np.asarray(tokens(4, (2, 5)))
    lengths = [5, 2]
    ref = greedy_reference(params, cfg, prompts, lengths, 8)
    out, counts = T.generate(params, jax.random.key(0), prompts, lengths, 8, cfg, greedy=True)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(counts, [8, 8])
    # Past the window (16): the cache slides and generation goes on in the same compiled call.
    long, counts = T.generate(params, jax.random.key(0), prompts, lengths, 30, cfg, greedy=True)
    assert long.shape == (2, 30)
    np.testing.assert_array_equal(counts, [30, 30])
    np.testing.assert_array_equal(long[:, :8], ref)


def test_sampling_options():
    cfg, params = CFGS["learned"], params_for("learned")
    prompts = np.asarray(tokens(5, (2, 4)))
    lengths = [4, 1]
    greedy, _ = T.generate(params, jax.random.key(0), prompts, lengths, 12, cfg, greedy=True)
    again, _ = T.generate(params, jax.random.key(9), prompts, lengths, 12, cfg, greedy=True)
    np.testing.assert_array_equal(greedy, again)
    cold, _ = T.generate(params, jax.random.key(1), prompts, lengths, 12, cfg, temperature=0.0)
    np.testing.assert_array_equal(cold, greedy)
    top1, _ = T.generate(params, jax.random.key(2), prompts, lengths, 12, cfg, temperature=1.5, top_k=1)
    np.testing.assert_array_equal(top1, greedy)
    nucleus, _ = T.generate(params, jax.random.key(3), prompts, lengths, 12, cfg, temperature=1.5, top_p=1e-6)
    np.testing.assert_array_equal(nucleus, greedy)
    sampled, _ = T.generate(params, jax.random.key(4), prompts, lengths, 12, cfg, temperature=1.5)
    assert not np.array_equal(sampled, greedy)
    # Stop token: row 0 stops at its 4th greedy token, the others at theirs or never.
    stop = int(greedy[0, 3])
    out, counts = T.generate(params, jax.random.key(0), prompts, lengths, 12, cfg, greedy=True,
                             stop_token=stop)
    for b in range(2):
        hits = np.flatnonzero(np.asarray(greedy[b]) == stop)
        n = hits[0] + 1 if hits.size else 12
        assert counts[b] == n
        np.testing.assert_array_equal(out[b, :n], greedy[b, :n])
        assert not np.any(out[b, n:])
    assert counts[0] <= 4


def test_sample_and_sample_cli(tmp_path):
    from genjax.data import text as text_data

    cfg, params = CFGS["learned"], params_for("learned")
    assert T.sample(params, jax.random.key(0), 2, cfg, length=5).shape == (2, 5)
    alphabet = "abcdefghijklmnopqrstuvwxyz .,;:!?-'()\n"[:VOCAB]  # one symbol per vocabulary entry
    text_data.save_tokenizer(text_data.CharTokenizer.train(alphabet), str(tmp_path))
    out = T.sample_cli(str(tmp_path), params, cfg, prompt="to be", length=10, temperature=0.7, seed=1)
    assert out.startswith("to be") and len(out) == 15 and set(out) <= set(alphabet)


def test_sample_logits_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 512))
    draw = jax.jit(lambda top_k, top_p: T.sample_logits(jax.random.key(0), logits, 1.0, top_k, top_p, False))
    assert set(np.unique(draw(2, 1.0))) == {0, 1}
    assert set(np.unique(draw(0, 0.85))) == {0, 1, 2}  # 0.5 + 0.3 < 0.85: the third joins the nucleus
    assert set(np.unique(draw(0, 1.0))) == {0, 1, 2, 3}


# ----------------------------------------------------------------------------- training


def test_step_on_8_devices_matches_1_device_then_overfits(devices8, device1):
    """One make_step update on a (data=4, fsdp=2) mesh of 8 simulated devices equals the 1-device update
    (dropout included); the 1-device run then memorizes its 16 rows to near-zero loss."""
    cfg = T.Config(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, d_model=64, dropout=0.1)
    # Adam's first step is lr * sign(g) wherever |g| >> eps: a larger eps keeps it a smooth function of
    # the gradient, so reduction-order differences between meshes stay at float32 rounding.
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, eps=1e-5, weight_decay=0.0))
    rows = np.array(tokens(6, (16, 17)))
    rows[:, 0] = np.arange(16)  # distinct first tokens: every context names its row
    batch = {"tokens": rows}
    runs = []
    for devices, fsdp in ((device1, 1), (devices8, 2)):
        mesh = parallel.make_mesh(fsdp=fsdp, devices=devices)
        state = train.init_state(jax.random.key(0), T.init(jax.random.key(1), cfg), tx)
        shardings = parallel.state_sharding(state, mesh)
        step = jax.jit(train.make_step(functools.partial(T.loss, cfg=cfg), tx),
                       in_shardings=(shardings, parallel.batch_sharding(mesh)),
                       out_shardings=(shardings, parallel.replicated(mesh)))
        state, metrics = step(jax.device_put(state, shardings), parallel.global_batch(batch, mesh))
        runs.append((state, step, mesh, jax.device_get((state.params, metrics))))
    chex.assert_trees_all_close(runs[0][3], runs[1][3], atol=1e-5, rtol=1e-5)
    # The 8-device run split the largest leaves over the fsdp axis.
    fc = runs[1][0].params["blocks"]["layer_0"]["block"]["mlp"]["fc"]["kernel"]
    assert fc.sharding.spec == jax.P(None, "fsdp")

    state, step, mesh, _ = runs[0]
    for _ in range(150):
        state, metrics = step(state, parallel.global_batch(batch, mesh))
    final, metrics = jax.jit(functools.partial(T.loss, cfg=cfg))(state.params, batch, None)
    assert float(final) < 0.05, metrics
    assert float(metrics["accuracy"]) == 1.0
