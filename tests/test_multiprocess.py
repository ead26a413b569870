"""Two local processes through jax.distributed (gloo on CPU) train like one process with as many devices.

Each process gets 2 CPU devices and feeds only its half of every batch; the result must match a
1-process run on 4 devices: the VAE under data parallelism, the transformer (gpt_text on Python's docs)
with its heads and MLP split over a `model` axis inside each process (data 2 x model 2) against plain
data parallelism on one process. Workers are killed with SIGKILL if they hang (stuck collectives ignore
SIGTERM), so a failure of either process fails the test instead of stalling CI.
"""

import os
import socket
import subprocess
import sys

import chex
import pytest

from genjax import checkpoint

VAE_ARGS = ["--train.steps", "20", "--train.batch_size", "16", "--train.log_every", "5", "--train.ckpt_every", "10",
        "--train.eval_every", "1000", "--train.sample_every", "1000", "--model.iwae_samples", "2",
        "--num_quality_samples", "64", "--model.hidden", "32", "--model.latent_dim", "4"]
GPT_ARGS = ["--train.steps", "20", "--train.batch_size", "8", "--train.log_every", "5", "--train.ckpt_every", "10",
            "--train.eval_every", "1000", "--train.sample_every", "1000", "--eval_blocks", "16",
            "--sample.length", "8", "--model.n_layer", "2", "--model.n_head", "2", "--model.d_model", "32",
            "--model.block_size", "32"]
CASES = {  # experiment: (args of both runs, extra args of the 2-process run, its mesh as printed)
    "vae_digits": (VAE_ARGS, [], "'data': 4, 'fsdp': 1, 'model': 1"),
    "gpt_text": (GPT_ARGS, ["--train.model_parallel", "2"], "'data': 2, 'fsdp': 1, 'model': 2"),
}
TIMEOUT = 300


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=60")
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _wait_all(procs):
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("a worker hung; all were killed")
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


@pytest.mark.parametrize("experiment", sorted(CASES))
def test_two_processes_match_one_process_with_four_devices(experiment, tmp_path):
    args, multi_args, multi_mesh = CASES[experiment]
    cmd = [sys.executable, f"experiments/{experiment}.py", *args]
    single = subprocess.Popen(cmd + ["--workdir", str(tmp_path / "single")], env=_env(4),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_all([single])
    port = _free_port()
    workers = [
        subprocess.Popen(cmd + multi_args + ["--workdir", str(tmp_path / "multi"),
                                             "--coordinator", f"127.0.0.1:{port}",
                                             "--num_processes", "2", "--process_id", str(i)],
                         env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = _wait_all(workers)
    assert multi_mesh in outs[0][0]  # process 0 reports the global 4-device mesh
    assert "genjax:" not in outs[1][0]  # and only process 0 prints
    a = checkpoint.restore_raw(str(tmp_path / "single" / "checkpoints"))
    b = checkpoint.restore_raw(str(tmp_path / "multi" / "checkpoints"))
    assert a[0] == b[0] == 20
    chex.assert_trees_all_close(a[1]["params"], b[1]["params"], rtol=1e-5, atol=1e-6)
