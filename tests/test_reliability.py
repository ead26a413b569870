"""Preemption, kill -9 and resume, NaN guard, disk errors: a run never loses a good checkpoint.

The kill harness runs a real experiment in a subprocess, SIGKILLs it at seeded random steps (often in
the middle of an async checkpoint write), resumes it, and compares the final params bitwise with an
uninterrupted run. CI runs GENJAX_KILL_TRIALS (default 2) trials; the full 10:
`GENJAX_KILL_TRIALS=10 python -m pytest tests/test_reliability.py -k kill`.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import checkpoint, loop, parallel, train
from genjax.checkpoint import CheckpointError, Checkpointer

STEPS = 24
ARGS = ["--train.steps", str(STEPS), "--train.batch_size", "16", "--train.log_every", "1",
        "--train.ckpt_every", "1", "--train.eval_every", "1000", "--train.sample_every", "1000",
        "--train.num_devices", "1", "--eval_iwae_k", "2", "--num_quality_samples", "64",
        "--model.hidden", "32", "--model.latent_dim", "4", "--train.schedule", "cosine"]


def _run(workdir, env=None, **kw):
    return subprocess.Popen([sys.executable, "experiments/vae_digits.py", "--workdir", str(workdir), *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **kw)


def _wait_for_step(workdir, step, proc, timeout=240):
    """Blocks until the run has logged `step` (metrics.jsonl), or the process ended."""
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(line)["step"] for line in f if line.strip()]
            if steps and max(steps) >= step:
                return max(steps)
        time.sleep(0.02)
    raise AssertionError(f"run did not reach step {step}: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}")


def _params(workdir):
    return checkpoint.restore_raw(os.path.join(workdir, "checkpoints"))[1]["params"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    proc = _run(workdir)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return _params(workdir)


def test_kill_9_at_random_steps_resumes_bitwise(tmp_path, reference):
    trials = int(os.environ.get("GENJAX_KILL_TRIALS", "2"))
    rng = np.random.default_rng(1234)
    for trial in range(trials):
        workdir = tmp_path / f"trial{trial}"
        kill_at = int(rng.integers(2, STEPS - 2))
        proc = _run(workdir)
        _wait_for_step(workdir, kill_at, proc)
        time.sleep(float(rng.uniform(0, 0.05)))  # land anywhere, often inside an async save
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        resumed = _run(workdir)
        out, err = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, err
        assert "resuming at step" in out
        chex.assert_trees_all_equal(_params(workdir), reference)


def test_sigterm_saves_a_checkpoint_at_the_stop_step_and_exits_clearly(tmp_path):
    workdir = tmp_path / "w"
    proc = _run(workdir)
    _wait_for_step(workdir, 4, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "stopped by signal at step" in err and "resume" in err
    stop_step = int(err.split("stopped by signal at step ")[1].split(";")[0])
    assert stop_step < STEPS
    assert stop_step in Checkpointer(str(workdir / "checkpoints")).steps()


# ----------------------------------------------------------------------------- NaN guard (in-process)


def _nan_at(k):
    def loss(params, batch, key, step):
        value = jnp.mean((batch["x"] * params["w"]) ** 2)
        return jnp.where(step == k - 1, jnp.nan, value), {}
    return loss


def _loop(tmp_path, on_nonfinite, k=5, steps=8):
    cfg = train.TrainConfig(steps=steps, batch_size=8, log_every=1, ckpt_every=2, num_devices=1,
                            on_nonfinite=on_nonfinite)
    tx = optax.sgd(0.1)
    state = train.init_state(jax.random.key(0), {"w": jnp.ones(3)}, tx)
    x = np.ones((8, 3), np.float32)
    return loop.run(state=state, step_fn=train.make_step(_nan_at(k), tx, with_step=True),
                    batches_from=lambda start: iter(lambda: {"x": x}, None),
                    mesh=parallel.make_mesh(devices=jax.devices()[:1]), cfg=cfg,
                    workdir=str(tmp_path), progress=False)


def test_nan_stops_the_run_naming_the_step_and_keeps_good_checkpoints(tmp_path):
    with pytest.raises(loop.NonFiniteError, match="non-finite loss at step 5") as e:
        _loop(tmp_path, "stop", k=5)
    assert "intact" in str(e.value)
    steps = Checkpointer(str(tmp_path / "checkpoints")).steps()
    assert steps == [2, 4]  # nothing at or after the bad step
    restored = checkpoint.restore_raw(str(tmp_path / "checkpoints"))[1]["params"]
    assert np.isfinite(restored["w"]).all()


def test_nan_skip_mode_goes_on_and_leaves_params_finite(tmp_path, capsys):
    state = _loop(tmp_path, "skip", k=5)
    assert int(state.step) == 8 and np.isfinite(np.asarray(state.params["w"])).all()
    assert "(skipped)" in capsys.readouterr().err


def test_disk_error_during_save_is_reported_and_older_checkpoints_survive(tmp_path, monkeypatch):
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    tx = optax.sgd(0.1)
    state = train.init_state(jax.random.key(0), {"w": jnp.ones(3)}, tx)
    ckpt.save(state, wait=True)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.manager, "save", full_disk)
    with pytest.raises(CheckpointError, match="step 1.*No space left on device.*intact"):
        ckpt.save(state.replace(step=jnp.int32(1)), wait=True)
    assert ckpt.steps() == [0]
    chex.assert_trees_all_equal(Checkpointer(str(tmp_path / "ckpt")).restore(state).params, state.params)
