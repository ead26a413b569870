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
    size = lambda name, **kw: dataclasses.replace(T.SIZES[name], **kw)  # noqa: E731
    shapes = jax.eval_shape(lambda: T.init(jax.random.key(0), size("shakespeare", vocab_size=65)))
    assert 10.6e6 < T.num_params(shapes) < 10.9e6
    shapes = jax.eval_shape(lambda: T.init(jax.random.key(0), T.SIZES["gpt2"]))
    assert 124.0e6 < T.num_params(shapes) < 124.8e6  # GPT-2 small: 124M with tied embeddings
    shapes = jax.eval_shape(lambda: T.init(jax.random.key(0), size("nanogpt-cpu", vocab_size=65)))
    assert 0.79e6 < T.num_params(shapes, exclude_positions=True) < 0.81e6
    for cfg in T.SIZES.values():
        cfg.validate()
    with pytest.raises(ConfigError, match="n_head"):
        T.Config(d_model=30, n_head=4).validate()
    with pytest.raises(ConfigError, match="even head size"):
        T.Config(d_model=12, n_head=4, pos="rope").validate()
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


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_causal_blocks_match_the_square_in_float64(heads, kv_heads):
    """Query-blocked causal attention (long contexts) = the masked square, values and gradients, against
    a float64 softmax; 70 positions in blocks of 16 leave a partial last block."""
    from genjax.nn.attention import causal_block_attention, einsum_attention

    ks = jax.random.split(jax.random.key(5), 3)
    q = jax.random.normal(ks[0], (2, 70, heads, 8))
    k, v = (jax.random.normal(kk, (2, 70, kv_heads, 8)) for kk in ks[1:])
    rep = lambda x: np.repeat(np.asarray(x, np.float64), heads // kv_heads, axis=2)  # noqa: E731
    s = np.einsum("bthd,bshd->bhts", np.asarray(q, np.float64), rep(k)) / np.sqrt(8)
    s = np.where(np.tril(np.ones((70, 70), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = np.einsum("bhts,bshd->bthd", p / p.sum(-1, keepdims=True), rep(v))
    blocked = functools.partial(causal_block_attention, block=16)
    np.testing.assert_allclose(blocked(q, k, v), want, atol=2e-6)
    grad = lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    for a, b in zip(grad(blocked), grad(einsum_attention)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)  # float32 sums in another order


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_gradients_equal_the_plain_dots(dtype):
    """On CPU `matmul`'s weight gradient comes from an explicitly transposed input (a faster GEMM path):
    its value and both gradients equal plain `jnp.dot`'s, under jit and remat."""
    from genjax.nn.attention import matmul

    x = jax.random.normal(jax.random.key(1), (2, 5, 8))
    w = jax.random.normal(jax.random.key(2), (8, 3))

    def plain(x, w):
        y = jnp.dot(x.reshape(-1, 8).astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
        return y.reshape(2, 5, 3)

    for f in (matmul, jax.checkpoint(matmul, static_argnums=2)):
        loss = lambda f, x, w: jnp.sum(jnp.sin(f(x, w, dtype) if f is not plain else f(x, w)))  # noqa: E731
        got = jax.jit(jax.value_and_grad(functools.partial(loss, f), argnums=(0, 1)))(x, w)
        want = jax.value_and_grad(functools.partial(loss, plain), argnums=(0, 1))(x, w)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert a.dtype == b.dtype
            # bfloat16: autodiff rounds the input gradient to bfloat16, the CPU path keeps float32
            tol = 1e-6 if dtype == "float32" else 2e-2
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


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


def test_sample_options_and_stop_token():
    cfg, params = CFGS["learned"], params_for("learned")
    key, prompt = jax.random.key(0), (3, 1, 4)
    out = T.sample(params, key, 2, cfg, T.SampleOptions(prompt=prompt, length=12, temperature=0.7))
    assert out.shape == (2, 12) and out.dtype == jnp.int32
    assert int(out.min()) >= 0 and int(out.max()) < VOCAB  # no stop token: all 12 drawn
    greedy = np.asarray(T.sample(params, key, 1, cfg, T.SampleOptions(prompt=prompt, length=12, greedy=True)))[0]
    ref = greedy_reference(params, cfg, np.array([prompt]), [3], 12)[0]
    np.testing.assert_array_equal(greedy, ref)
    # a row that draws the stop token ends with it, then -1s
    stop = int(greedy[4])
    n = int(np.flatnonzero(greedy == stop)[0]) + 1
    stopped = np.asarray(T.sample(params, key, 1, cfg, T.SampleOptions(prompt=prompt, length=12, greedy=True,
                                                                      stop_token=stop)))[0]
    np.testing.assert_array_equal(stopped[:n], greedy[:n])
    assert np.all(stopped[n:] == -1) and n <= 5
    for options, match in ((T.SampleOptions(prompt=(VOCAB,)), "outside the vocabulary"),
                           (T.SampleOptions(length=0), "length=0"), (T.SampleOptions(top_p=0.0), "top_p"),
                           (T.SampleOptions(temperature=0.0), "temperature"), (T.SampleOptions(top_k=-1), "top_k")):
        with pytest.raises(ConfigError, match=match):
            T.sample(params, key, 1, cfg, options)


def test_the_sample_cli_prints_text_of_a_text_run(tmp_path, capsys):
    """`python -m genjax.sample WORKDIR --prompt ...` on a run with a tokenizer: the prompt, then exactly
    what `sample` draws with the CLI's key (chunk 0 of --seed) and options."""
    from experiments import gpt_text
    from genjax import sample as sample_cli
    from genjax.data import text as text_data
    from tests.test_workdir import save_untrained_run

    cfg = CFGS["learned"]
    alphabet = "abcdefghijklmnopqrstuvwxyz .,;:!?-'()\n"[:VOCAB]  # one symbol per vocabulary entry
    tok = text_data.CharTokenizer.train(alphabet)
    workdir = str(tmp_path / "run")
    text_data.save_tokenizer(tok, workdir)
    save_untrained_run(workdir, gpt_text.Config(model=cfg), "gpt_text", T)  # the weights of params_for
    assert sample_cli.main([workdir, "--prompt", "to be", "--length", "10", "--temperature", "0.7",
                            "--seed", "1"]) == 0
    out = capsys.readouterr().out
    options = T.SampleOptions(prompt=tuple(tok.encode("to be")), length=10, temperature=0.7)
    new = np.asarray(T.sample(params_for("learned"), jax.random.fold_in(jax.random.key(1), 0), 1, cfg, options))[0]
    assert out == "to be" + tok.decode(new) + "\n"
    assert len(out) == 16 and set(out[:-1]) <= set(alphabet)


def test_evaluate_returns_sums_over_tokens():
    cfg, params = CFGS["learned"], params_for("learned")
    batch = {"tokens": np.asarray(tokens(7, (4, 17))), "mask": np.ones((4, 16), np.float32)}
    masked = {**batch, "mask": np.array([[1.0] * 16, [1.0] * 16, [0.0] * 16, [1.0] * 8 + [0.0] * 8], np.float32)}
    evaluate = jax.jit(functools.partial(T.evaluate, cfg=cfg))
    loss = jax.jit(functools.partial(T.loss, cfg=cfg))
    for b, count in ((batch, 64), (masked, 40)):
        sums = evaluate(params, b, None)
        assert float(sums["count"]) == count
        mean, metrics = loss(params, b, None)
        np.testing.assert_allclose(sums["nll"] / sums["count"], mean, rtol=1e-5)
        np.testing.assert_allclose(sums["correct"] / sums["count"], metrics["accuracy"], rtol=1e-5)


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
