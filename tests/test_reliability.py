"""Preemption, kill -9 and resume, NaN guard, finite blow-ups, disk errors, log output: a run never loses a
good checkpoint and says what it left.

The kill harness runs a real experiment in a subprocess, SIGKILLs it at seeded random steps (often in
the middle of an async checkpoint write), resumes it, and compares the final params bitwise with an
uninterrupted run. CI runs GENJAX_KILL_TRIALS (default 2) trials; the full 10:
`GENJAX_KILL_TRIALS=10 python -m pytest tests/test_reliability.py -k kill`.
"""

import itertools
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
        "--train.num_devices", "1", "--model.iwae_samples", "2", "--num_quality_samples", "64",
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


def test_sigterm_saves_a_checkpoint_at_the_stop_step_and_exits_with_the_requeue_code(tmp_path):
    workdir = tmp_path / "w"
    proc = _run(workdir)
    _wait_for_step(workdir, 4, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == loop.EXIT_PREEMPTED == 75, err[-2000:]  # not 1, the code of a diverged run
    assert "stopped by signal at step" in err and "resume" in err
    stop_step = int(err.split("stopped by signal at step ")[1].split(";")[0])
    assert stop_step < STEPS
    assert stop_step in Checkpointer(str(workdir / "checkpoints")).steps()
    # written to a pipe, progress is plain lines, not one line of carriage returns
    assert "\r" not in err and "genjax: compiling the train step..." in err
    assert any(line.startswith("genjax: step 2/24 loss=") and "examples/s | ETA" in line for line in err.splitlines())


# ----------------------------------------------------------------------------- NaN guard (in-process)


def _quadratic(params, batch, key, step=None):
    return jnp.mean((batch["x"] * params["w"]) ** 2), {}


def _loop(tmp_path, scale=lambda step: 1.0, *, on_nonfinite="stop", steps=8, ckpt_every=2, keep=3,
          step_fn=None, progress=False, lr=0.1, **train_kw):
    """Runs the loop on a quadratic whose update `s` sees inputs `scale(s)` (NaN there makes a NaN step)."""
    cfg = train.TrainConfig(steps=steps, batch_size=8, log_every=1, ckpt_every=ckpt_every, num_devices=1,
                            keep_checkpoints=keep, on_nonfinite=on_nonfinite, **train_kw)
    tx = optax.sgd(lr)
    state = train.init_state(jax.random.key(0), {"w": jnp.ones(3)}, tx)

    def batches_from(start):
        for step in itertools.count(start + 1):
            yield {"x": np.full((8, 3), scale(step), np.float32)}

    return loop.run(state=state, step_fn=step_fn or train.make_step(_quadratic, tx), batches_from=batches_from,
                    mesh=parallel.make_mesh(devices=jax.devices()[:1]), cfg=cfg, workdir=str(tmp_path),
                    progress=progress)


def _nan_at(k):
    return lambda step: np.nan if step == k else 1.0


def test_nan_stops_the_run_naming_the_step_and_the_checkpoints_left(tmp_path):
    with pytest.raises(loop.NonFiniteError, match="non-finite .*loss at step 5") as e:
        _loop(tmp_path, _nan_at(5))
    assert "steps 2, 4; a rerun resumes from step 4" in str(e.value)
    steps = Checkpointer(str(tmp_path / "checkpoints")).steps()
    assert steps == [2, 4]  # nothing at or after the bad step
    restored = checkpoint.restore_raw(str(tmp_path / "checkpoints"))[1]["params"]
    assert np.isfinite(restored["w"]).all()


def test_nan_before_any_checkpoint_says_there_is_none(tmp_path):
    with pytest.raises(loop.NonFiniteError, match="No checkpoint was written .* a rerun starts from step 0"):
        _loop(tmp_path, _nan_at(1))


def test_a_step_that_forgot_its_guard_never_reaches_a_checkpoint(tmp_path):
    """A hand-written step that lets NaN weights through unreported (no `nonfinite` metric)."""

    def unguarded(state, batch):
        params = jax.tree.map(lambda p: p * jnp.mean(batch["x"]), state.params)
        return state.replace(step=state.step + 1, params=params), {"loss": jnp.sum(params["w"])}

    with pytest.raises(loop.NonFiniteError, match=r"refusing to checkpoint step 4: NaN/Inf in params\.w.*"
                                                  r"a rerun resumes from step 2"):
        _loop(tmp_path, _nan_at(3), step_fn=unguarded)
    assert Checkpointer(str(tmp_path / "checkpoints")).steps() == [2]


def test_a_finite_blow_up_keeps_the_last_good_checkpoint_through_rotation(tmp_path):
    """The loss grows 100x per step from update 5 on, stays finite, and turns NaN at update 10. With a
    checkpoint every step and keep 2, keep-N alone would leave only the blown-up steps 8 and 9."""

    def scale(step):
        return np.nan if step == 10 else 1.0 if step <= 4 else 10.0 ** (step - 4)

    with pytest.raises(loop.NonFiniteError, match="at step 10") as e:
        _loop(tmp_path, scale, steps=12, ckpt_every=1, keep=2, lr=1e-6)
    assert Checkpointer(str(tmp_path / "checkpoints")).steps() == [4, 8, 9]
    assert "a rerun resumes from step 9. Step 4 is the healthy one with the lowest train loss" in str(e.value)
    assert "mv " in str(e.value)  # and how to resume from it


def test_nan_skip_mode_goes_on_and_leaves_params_finite(tmp_path, capsys):
    state = _loop(tmp_path, _nan_at(5), on_nonfinite="skip")
    assert int(state.step) == 8 and np.isfinite(np.asarray(state.params["w"])).all()
    assert "(skipped)" in capsys.readouterr().err


def test_an_ema_too_slow_for_the_run_is_a_warning(tmp_path, capsys):
    _loop(tmp_path / "slow", ema_decay=0.999)
    assert "leaves 99% of the initial (random) weights in the EMA" in capsys.readouterr().err
    for name, kw in (("warmup", dict(ema_decay=0.999, ema_warmup=True)), ("fast", dict(ema_decay=0.5))):
        _loop(tmp_path / name, **kw)
        assert "EMA" not in capsys.readouterr().err, name


def test_progress_to_a_file_is_plain_lines(tmp_path, capfd):
    _loop(tmp_path, steps=4, progress=True)
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("genjax: step ")]
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(" loss=" in line and "examples/s | ETA " in line for line in lines)
    assert err.splitlines()[0] == "genjax: compiling the train step..."


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
