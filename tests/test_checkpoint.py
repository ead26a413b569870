"""Checkpoints: exact round trip, shardings across device counts, damaged checkpoints, shape mismatches,
no non-finite state on disk, the best healthy checkpoint kept through rotation."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import parallel, train
from genjax.checkpoint import CheckpointError, Checkpointer, NonFiniteError
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


def _loss(params, batch, key, step=None):
    out = batch["x"] @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.mean(out**2), {}


def _two_steps(directory):
    ckpt = Checkpointer(str(directory), keep=3)
    good = _state()
    ckpt.save(good, wait=True)
    ckpt.save(good.replace(step=jnp.int32(8)), wait=True)
    ckpt.close()
    return good


def _truncate_arrays(step_dir):
    """Cuts every array data file of a step to a third (what a torn write or bad disk leaves)."""
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            if "metadata" not in name.lower() and not name.endswith(".txt") and "metrics" not in root:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 3)


def _moved_to(err: str) -> str:
    return err.split("moved to ")[1].split(";")[0].split("\n")[0].strip()


@pytest.mark.parametrize("damage", ["truncated arrays", "missing _METADATA", "garbled metrics file"])
def test_damaged_latest_checkpoint_falls_back_and_is_kept_aside(tmp_path, capfd, damage):
    good = _two_steps(tmp_path / "ckpt")
    if damage == "truncated arrays":
        _truncate_arrays(tmp_path / "ckpt" / "8")
    elif damage == "missing _METADATA":  # was reported as "a model of another shape" with no fallback
        os.remove(tmp_path / "ckpt" / "8" / "default" / "_METADATA")
    else:  # orbax reads every step's metrics when it opens the folder and failed outright
        with open(tmp_path / "ckpt" / "8" / "metrics" / "metrics", "w") as f:
            f.write('{"train_lo')
    restored = Checkpointer(str(tmp_path / "ckpt")).restore(_state(seed=1))
    assert int(restored.step) == 7
    chex.assert_trees_all_equal(restored.params, good.params)
    err = capfd.readouterr().err
    assert "step 8" in err and "damaged" in err
    # moved, not deleted, to exactly where the message says
    assert os.path.isdir(_moved_to(err)) and not os.path.exists(tmp_path / "ckpt" / "8")
    assert "Traceback" not in err and "Event loop is closed" not in err


def test_all_damaged_is_a_clear_error_naming_the_steps(tmp_path, capfd):
    _two_steps(tmp_path / "ckpt")
    for step in ("7", "8"):
        _truncate_arrays(tmp_path / "ckpt" / step)
    with pytest.raises(CheckpointError, match=r"step\(s\) 8, 7 are damaged and were moved to .*quarantine.*"
                                              r"fresh --workdir") as e:
        Checkpointer(str(tmp_path / "ckpt")).restore(_state())
    assert str(tmp_path / "quarantine") in str(e.value) and len(os.listdir(tmp_path / "quarantine")) == 2
    err = capfd.readouterr().err
    assert "trying step 7" in err and "no older checkpoint" in err  # never "falling back" to nothing
    assert "Traceback" not in err and "Event loop is closed" not in err and len(err.splitlines()) == 2


def test_save_refuses_a_nonfinite_state_and_keeps_what_is_there(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    state = _state()
    ckpt.save(state, wait=True)
    bad = state.replace(step=jnp.int32(8), params={"dense": {**state.params["dense"],
                                                             "bias": state.params["dense"]["bias"].at[3].set(jnp.nan)}})
    with pytest.raises(NonFiniteError, match=r"refusing to checkpoint step 8: NaN/Inf in params\.dense\.bias\. "
                                             r"Checkpoints left in .*: step 7; a rerun resumes from step 7"):
        ckpt.save(bad, wait=True)
    assert ckpt.steps() == [7]
    ckpt.close()


def test_the_best_healthy_checkpoint_outlives_rotation(tmp_path):
    """keep=2 alone would leave only the blown-up steps 6 and 7; the lowest-loss healthy one stays too."""
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    losses = {1: 5.0, 2: 4.0, 3: 3.0, 4: 10.0, 5: 1e6, 6: None, 7: 1e9}  # None: an interval with a NaN step
    for step, loss in losses.items():
        ckpt.save(_state().replace(step=jnp.int32(step)), wait=True, train_loss=loss)
    assert ckpt.steps() == [3, 6, 7] and ckpt.best_healthy_step() == 3
    assert "Step 3 is the healthy one with the lowest train loss (3)" in ckpt.describe()
    ckpt.close()
    reopened = Checkpointer(str(tmp_path / "ckpt"), keep=2)  # the losses are stored with the checkpoints
    for step, loss in {8: 3.5, 9: 7.0, 10: 7.0}.items():
        reopened.save(_state().replace(step=jnp.int32(step)), wait=True, train_loss=loss)
    assert reopened.steps() == [3, 9, 10]
    reopened.save(_state().replace(step=jnp.int32(11)), wait=True, train_loss=1.0)
    assert reopened.steps() == [10, 11]  # a better healthy one replaces it
    assert reopened.best_healthy_step() == 11
    reopened.close()


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
