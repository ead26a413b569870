"""Checkpoints: exact round trip, shardings across device counts, damaged checkpoints, shape mismatches."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import parallel, train
from genjax.checkpoint import CheckpointError, Checkpointer
from genjax.config import ConfigError
from genjax.loop import compile_step, place_state


def _state(width=64, seed=0):
    params = {"dense": {"kernel": jax.random.normal(jax.random.key(seed), (width, 256)), "bias": jnp.ones(256)}}
    tx = optax.adam(1e-3)
    state = train.init_state(jax.random.key(seed), params, tx, ema=True)
    # a state that has moved: non-trivial optimizer moments and step
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    return state.replace(step=jnp.int32(7), opt_state=opt_state, params=optax.apply_updates(params, updates))


def test_round_trip_is_exact_including_key_and_optimizer_types(tmp_path):
    state = _state()
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(state, wait=True)
    restored = ckpt.restore(_state(seed=1))
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x, restored.params), state.params)
    chex.assert_trees_all_equal(restored.opt_state, state.opt_state)  # same types: namedtuples, not lists
    assert jax.random.key_data(restored.key).tolist() == jax.random.key_data(state.key).tolist()
    assert int(restored.step) == 7
    ckpt.close()


def test_restore_across_device_counts(tmp_path, devices8):
    """Saved FSDP-sharded on 8 devices, restored on 1 and on 4 (2x2), and back."""
    mesh8 = parallel.make_mesh(fsdp=8)
    state8, shard8 = place_state(_state(), mesh8)
    assert state8.params["dense"]["kernel"].sharding.spec == jax.P(None, "fsdp")
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(state8, wait=True)
    for devices, fsdp in ((devices8[:1], 1), (devices8[:4], 2)):
        mesh = parallel.make_mesh(fsdp=fsdp, devices=devices)
        template, shardings = place_state(_state(seed=3), mesh)
        restored = ckpt.restore(template, shardings)
        assert restored.params["dense"]["kernel"].sharding == shardings.params["dense"]["kernel"]
        chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(state8.params))
        chex.assert_trees_all_equal(jax.device_get(restored.opt_state), jax.device_get(state8.opt_state))
        # and training continues on the new layout: one sharded step from the restored state
        step = compile_step(train.make_step(_loss, optax.adam(1e-3)), shardings, mesh)
        after, metrics = step(restored, parallel.global_batch({"x": np.ones((8, 64), np.float32)}, mesh))
        assert int(after.step) == 8 and float(metrics["nonfinite"]) == 0.0
        assert after.params["dense"]["kernel"].sharding == shardings.params["dense"]["kernel"]
    ckpt.close()


def _loss(params, batch, key):
    out = batch["x"] @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.mean(out**2), {}


def test_damaged_latest_checkpoint_falls_back_and_is_kept_aside(tmp_path, capsys):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=3)
    good = _state()
    ckpt.save(good, wait=True)
    ckpt.save(good.replace(step=jnp.int32(8)), wait=True)
    # damage every data file of step 8
    for root, _, files in os.walk(tmp_path / "ckpt" / "8"):
        for name in files:
            if "metadata" not in name.lower() and not name.endswith(".txt"):
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(max(0, os.path.getsize(os.path.join(root, name)) // 3))
    restored = Checkpointer(str(tmp_path / "ckpt")).restore(_state(seed=1))
    assert int(restored.step) == 7
    chex.assert_trees_all_equal(restored.params, good.params)
    assert "damaged" in capsys.readouterr().out
    assert os.listdir(tmp_path / "quarantine")  # the damaged step is moved aside, not deleted


def test_all_damaged_is_a_clear_error(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(_state(), wait=True)
    for root, _, files in os.walk(tmp_path / "ckpt" / "7"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises((CheckpointError, ConfigError)):
        Checkpointer(str(tmp_path / "ckpt")).restore(_state())


def test_shape_mismatch_names_the_leaf(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(_state(width=64), wait=True)
    with pytest.raises(ConfigError, match=r"params\.dense\.kernel: checkpoint \(64, 256\) vs this config \(32, 256\)"):
        Checkpointer(str(tmp_path / "ckpt")).restore(_state(width=32))


def test_keep_n(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    for step in (1, 2, 3):
        ckpt.save(_state().replace(step=jnp.int32(step)), wait=True)
    assert ckpt.steps() == [2, 3]
    ckpt.close()
