"""gpt_text end to end on tiny settings: trains, logs text metrics, and `genjax.sample` prints text."""

import subprocess
import sys

import numpy as np

from genjax import config as config_lib, log
from experiments import gpt_text


def test_gpt_text_one_step_and_sample_cli(tmp_path):
    cfg = config_lib.override(gpt_text.Config(), {
        "train.steps": "2", "train.log_every": "1", "train.eval_every": "2", "train.sample_every": "2",
        "train.num_devices": "1", "eval_blocks": "8", "sample_length": "8",
        "model.n_layer": "1", "model.d_model": "32", "model.n_head": "2"})
    workdir = str(tmp_path / "run")
    summary = gpt_text.train_and_evaluate(cfg, workdir)
    assert summary["steps"] == 2 and np.isfinite(summary["val_bits_per_char"])
    assert summary["val_perplexity"] == np.exp(summary["val_loss"])
    assert [r["step"] for r in log.read_metrics(workdir, "train")] == [1, 2]
    res = subprocess.run([sys.executable, "-m", "genjax.sample", workdir, "--prompt", "The", "--length", "8"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("The")
