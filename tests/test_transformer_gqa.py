"""Transformer: grouped-query attention (cache of key/value heads only, tensor parallel by whole groups),
norm_eps, and the padded LM head that users never see."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import parallel
from genjax.config import ConfigError
from genjax.loop import compile_step, place_state
from genjax.models import transformer as T
from tests.test_scaling import BATCH, _plain, _train
from tests.test_transformer import greedy_reference

VOCAB = 37  # padded to 64 inside the head
GQA = T.Config(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_kv_head=2, d_model=32, pos="rope",
               mlp="swiglu", norm="rmsnorm", norm_eps=1e-6)


@functools.lru_cache(maxsize=None)
def gqa_params():
    return T.init(jax.random.key(0), GQA)


def test_config_checks():
    with pytest.raises(ConfigError, match="n_kv_head=3 must divide model.n_head=4"):
        dataclasses.replace(GQA, n_kv_head=3).validate()
    with pytest.raises(ConfigError, match="norm_eps=0.0 must be > 0"):
        dataclasses.replace(GQA, norm_eps=0.0).validate()
    with pytest.raises(ConfigError, match="pad_vocab_to=0 must be >= 1"):
        dataclasses.replace(GQA, pad_vocab_to=0).validate()
    assert GQA.kv_heads == 2 and T.Config(n_head=4).kv_heads == 4 and GQA.padded_vocab == 64
    qkv = gqa_params()["blocks"]["layer_0"]["block"]["attn"]["qkv"]["kernel"]
    assert qkv.shape == (32, (4 + 2 * 2) * 8)  # 4 query heads, 2 key and 2 value heads of 8 dims


def test_padding_is_invisible():
    """Parameters, logits and losses have the user's vocabulary; padding changes no number."""
    params = gqa_params()
    assert params["wte"].shape == (VOCAB, 32)
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, VOCAB, jnp.int32)
    unpadded = dataclasses.replace(GQA, pad_vocab_to=1)
    logits = T.forward(params, tokens[:, :-1], GQA)
    assert logits.shape == (2, 16, VOCAB)
    np.testing.assert_allclose(logits, T.forward(params, tokens[:, :-1], unpadded), atol=1e-6)
    loss, _ = T.loss(params, {"tokens": tokens}, None, GQA)
    np.testing.assert_allclose(loss, T.loss(params, {"tokens": tokens}, None, unpadded)[0], rtol=1e-6)


def test_gqa_cache_holds_kv_heads_and_generation_matches_forward():
    params = gqa_params()
    assert T.init_cache(GQA, 3)[0]["k"].shape == (3, 2, 16, 8)
    prompts = np.asarray(jax.random.randint(jax.random.key(2), (2, 5), 0, VOCAB, jnp.int32))
    ref = greedy_reference(params, GQA, prompts, [5, 2], 8)
    out, _ = T.generate(params, jax.random.key(0), prompts, [5, 2], 8, GQA, greedy=True)
    np.testing.assert_array_equal(out, ref)
    # jax.nn.dot_product_attention (the GPU path) takes the grouped heads as they are
    tokens = jnp.asarray(prompts)
    np.testing.assert_allclose(T.forward(params, tokens, dataclasses.replace(GQA, attention="xla")),
                               T.forward(params, tokens, GQA), atol=1e-5)


def test_gqa_tensor_parallel_keeps_groups_whole(devices8, monkeypatch):
    """model=2 splits the 2 key/value groups, each with its 2 query heads: same params as 1 device, and
    a step with all-reduces of activations only (no weight or head all-gathers)."""
    monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 256)
    cfg = dataclasses.replace(GQA, vocab_size=64)
    tokens = np.random.default_rng(0).integers(0, 64, (BATCH, 17)).astype(np.int32)
    case = functools.partial(_plain, T, cfg, {"tokens": tokens})
    reference = jax.device_get(_train(case, parallel.make_mesh(1, devices=devices8[:1])).params)
    mesh = parallel.make_mesh(1, model=2)
    state = _train(case, mesh, T.MODEL_RULES)
    chex.assert_trees_all_close(jax.device_get(state.params), reference, rtol=2e-4, atol=2e-5)
    state, step, batch = case()
    state, shardings = place_state(state, mesh, T.MODEL_RULES)
    compiled = compile_step(step, shardings, mesh)
    with jax.set_mesh(mesh):
        hlo = compiled.jitted.lower(state, parallel.global_batch(batch, mesh)).compile().as_text()
    assert "all-reduce" in hlo and "all-gather" not in hlo and "all-to-all" not in hlo
