"""Two processes (jax.distributed over gloo, 2 CPU devices each) agree on every stop and save.

A SIGTERM that reaches one host only, or wall clocks that disagree about `train.ckpt_every_secs`, used
to leave one process saving or stopping while the other stepped on, both then waiting in different
collectives forever. The workers are this file run as a script: a small regression through the real
`loop.run`, so each run costs seconds, not an experiment's evaluation. A worker that hangs is SIGKILLed
(stuck collectives ignore SIGTERM) and the test fails.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

STEPS = 600
CKPT_SECS = 3.0  # wall-clock checkpoints: process 1 (6x clock) finds one due every 0.5 s
TIMEOUT = 150  # seconds for a pair of workers before they are SIGKILLed


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(workdir, *, steps=STEPS, ckpt_every_secs=1e9, clock_rate_1=1.0):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                         "--xla_cpu_collective_call_terminate_timeout_seconds=60", JAX_PLATFORMS="cpu")
    port = _free_port()
    return [subprocess.Popen([sys.executable, __file__, str(workdir), str(steps), str(port), str(i),
                              str(ckpt_every_secs), str(clock_rate_1 if i == 1 else 1.0)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def _finish(procs, timeout=TIMEOUT):
    """(returncode, stdout, stderr) of each worker; SIGKILLs both and fails if either hangs."""
    deadline = time.time() + timeout
    try:
        outs = [p.communicate(timeout=max(1.0, deadline - time.time())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        errs = [p.communicate()[1][-1500:] for p in procs]
        pytest.fail(f"a worker hung for {timeout} s; both were killed. stderr: {errs}")
    return [(p.returncode, *out) for p, out in zip(procs, outs)]


def _logged_step(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max([json.loads(line)["step"] for line in f if line.strip()] or [0])


def _final_params(workdir):
    from genjax import checkpoint

    step, tree = checkpoint.restore_raw(os.path.join(workdir, "checkpoints"))
    return step, np.asarray(tree["params"]["w"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted pair, and beside it (concurrently, to halve the wall time) a pair whose process
    1 has a clock running 6x fast and gets a SIGTERM once process 0 logged step 40; then that pair
    again, resuming."""
    root = tmp_path_factory.mktemp("preemption")
    started = []

    def start(workdir, **kw):
        started.extend(_start_pair(workdir, ckpt_every_secs=CKPT_SECS, **kw))
        return started[-2:]

    try:
        reference = start(root / "reference")
        preempted = start(root / "preempted", clock_rate_1=6.0)
        deadline = time.time() + TIMEOUT
        # step 40 and two wall-clock saves first (a loaded machine may run steps 4-40 in under 0.5 s)
        while ((_logged_step(root / "preempted") < 40 or len(_saves(root / "preempted", 0, missing=[])) < 2)
               and time.time() < deadline and all(p.poll() is None for p in preempted)):
            time.sleep(0.02)
        signalled_at_step = _logged_step(root / "preempted")
        sent = time.time()
        preempted[1].send_signal(signal.SIGTERM)  # a preemption notice that reaches one host only
        stopped = _finish(preempted)
        stop_seconds = time.time() - sent
        ref = _finish(reference)
        saves_before_resume = [_saves(root / "preempted", i) for i in range(2)]
        newest_before_resume = _final_params(root / "preempted")[0]
        resumed = _finish(start(root / "preempted", clock_rate_1=6.0))
    finally:
        for p in started:  # whatever failed, no worker outlives the test
            if p.poll() is None:
                p.kill()
    return dict(root=root, reference=ref, stopped=stopped, resumed=resumed, stop_seconds=stop_seconds,
                signalled_at_step=signalled_at_step, saves_before_resume=saves_before_resume,
                newest_before_resume=newest_before_resume)


def _saves(workdir, process, missing=None):
    path = os.path.join(workdir, f"saves-{process}.txt")
    if missing is not None and not os.path.exists(path):
        return missing
    with open(path) as f:
        return [int(s) for s in f.read().split()]


def test_sigterm_to_one_process_stops_both_at_the_same_step(runs):
    assert runs["signalled_at_step"] < STEPS - 100, "the run ended before the signal could land"
    stopped = runs["stopped"]
    assert [r[0] for r in stopped] == [75, 75], [r[2][-2000:] for r in stopped]  # EXIT_PREEMPTED, both
    stops = [int(err.split("stopped by signal at step ")[1].split(";")[0]) for _, _, err in stopped]
    assert stops[0] == stops[1] < STEPS, stops
    assert "[process 1]" in stopped[1][2]
    assert runs["stop_seconds"] < 30, f"stopping took {runs['stop_seconds']:.1f} s"
    assert runs["newest_before_resume"] == stops[0]  # the stop's checkpoint was complete before exit


def test_both_resume_from_the_stop_step_and_end_equal_to_an_uninterrupted_run(runs):
    assert [r[0] for r in runs["reference"]] == [0, 0], runs["reference"][0][2][-2000:]
    assert [r[0] for r in runs["resumed"]] == [0, 0], runs["resumed"][0][2][-2000:]
    stop = int(runs["stopped"][0][2].split("stopped by signal at step ")[1].split(";")[0])
    assert f"resuming at step {stop}" in runs["resumed"][0][1]
    step, params = _final_params(runs["root"] / "preempted")
    ref_step, ref_params = _final_params(runs["root"] / "reference")
    assert step == ref_step == STEPS
    np.testing.assert_array_equal(params, ref_params)  # bitwise: batches and keys depend on the step only


def test_wall_clock_checkpoints_are_agreed_when_clocks_disagree(runs):
    """Process 1's clock runs 6x fast: alone it would have saved 6x as often as process 0, in a
    collective that process 0 never joins."""
    saves = runs["saves_before_resume"]
    assert saves[0] == saves[1], saves
    timed = saves[0][:-1]  # the last save is the preemption's
    assert len(timed) >= 2 and all(s % 4 == 0 for s in timed), saves[0]  # at agreement steps only
    assert _saves(runs["root"] / "preempted", 0) == _saves(runs["root"] / "preempted", 1)  # after resuming too


# ----------------------------------------------------------------------------- the worker


def _worker(workdir, steps, port, process_id, ckpt_every_secs, clock_rate):
    import jax
    import jax.numpy as jnp

    from genjax import checkpoint, loop, parallel, train

    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, process_id)
    if clock_rate != 1.0:
        loop._clock = lambda: time.monotonic() * clock_rate
    save = checkpoint.Checkpointer.save

    def logged_save(self, state, **kw):  # which steps this process saved, for the test to compare
        with open(os.path.join(workdir, f"saves-{process_id}.txt"), "a") as f:
            f.write(f"{int(jax.device_get(state.step))}\n")
        return save(self, state, **kw)

    checkpoint.Checkpointer.save = logged_save
    cfg = train.TrainConfig(steps=steps, batch_size=8, lr=0.05, log_every=4, ckpt_every=10**6,
                            ckpt_every_secs=ckpt_every_secs, keep_checkpoints=1000)
    tx = train.make_optimizer(cfg)
    true_w = np.linspace(-1, 1, 16, dtype=np.float32)

    def loss(params, batch, key, step=None):
        return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2), {}

    def batches_from(start):  # this process's half of the global batch of `step`
        step = start
        while True:
            rng = np.random.default_rng(step)
            x = rng.normal(size=(8, 16)).astype(np.float32)
            y = x @ true_w + rng.normal(size=8).astype(np.float32)  # noisy: the weights never settle,
            rows = slice(4 * process_id, 4 * process_id + 4)  # so any change in the data order shows
            yield {"x": x[rows], "y": y[rows]}
            step += 1

    state = train.init_state(jax.random.key(0), {"w": jnp.zeros(16)}, tx)
    loop.run(state=state, step_fn=train.make_step(loss, tx), batches_from=batches_from,
             mesh=parallel.make_mesh(), cfg=cfg, workdir=workdir, progress=False)
    if process_id == 0:
        print("done")


if __name__ == "__main__":
    os.makedirs(sys.argv[1], exist_ok=True)
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]),
            float(sys.argv[6]))
