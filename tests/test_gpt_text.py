"""gpt_text end to end on tiny settings: trains, logs text metrics, and `genjax.sample` prints text."""

import chex
import numpy as np

from genjax import checkpoint, config as config_lib, log, parallel, sample as sample_cli
from experiments import gpt_text
from tests.test_workdir import corpus, tiny_run


def test_gpt_text_one_step_and_sample_cli(tmp_path_factory, capsys):
    workdir, summary = tiny_run("gpt", tmp_path_factory)  # 2 steps, 1 layer, on a small corpus
    assert summary["steps"] == 2 and np.isfinite(summary["val_bits_per_char"])
    assert np.isclose(summary["val_perplexity"], np.exp(summary["val_loss"]))
    assert 0 <= summary["val_accuracy"] <= 1
    assert [r["step"] for r in log.read_metrics(workdir, "train")] == [1, 2]
    assert [r["step"] for r in log.read_metrics(workdir, "eval")] == [2]
    alphabet = set(open(corpus(tmp_path_factory)).read())
    final = open(f"{workdir}/samples/final.txt").read()
    assert len(final) >= 1 and set(final) <= alphabet
    capsys.readouterr()
    assert sample_cli.main([workdir, "--prompt", "the", "--length", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the") and set(out) <= alphabet | {"\n"}


def test_restore_on_other_device_counts_and_continue(tmp_path, devices8, monkeypatch):
    """Train on 8 devices (FSDP), continue on 1, then on 4 (fsdp 2 x model 2): same params as 1 device
    throughout. The checkpoint is restored with each new mesh's shardings."""
    monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 256)  # so that the tiny model is really split

    def run(workdir, steps, **layout):
        cfg = config_lib.override(gpt_text.Config(), {
            "train.steps": str(steps), "train.batch_size": "8", "train.schedule": "constant",
            "train.warmup_steps": "0", "train.log_every": "2", "train.ckpt_every": "4",
            "train.eval_every": "100", "train.sample_every": "100", "eval_blocks": "8", "sample.length": "4",
            "model.n_layer": "1", "model.d_model": "32", "model.n_head": "2",
            **{f"train.{k}": str(v) for k, v in layout.items()}})
        return gpt_text.train_and_evaluate(cfg, str(tmp_path / workdir))

    assert run("chain", 4, num_devices=8, fsdp=8)["devices"] == 8
    assert run("chain", 8, num_devices=1)["devices"] == 1
    assert run("chain", 12, num_devices=4, fsdp=2, model_parallel=2)["devices"] == 4
    run("straight", 12, num_devices=1)
    steps = [r["step"] for r in log.read_metrics(str(tmp_path / "chain"), "train")]
    assert steps == [2, 4, 6, 8, 10, 12]  # each run resumed where the previous one stopped
    chain = checkpoint.restore_raw(str(tmp_path / "chain" / "checkpoints"))
    straight = checkpoint.restore_raw(str(tmp_path / "straight" / "checkpoints"))
    assert chain[0] == straight[0] == 12
    # Adam scales every update to ~lr = 1e-3, so an element whose gradient is near zero can move by a few
    # 1e-6 under another reduction order (measured: 1 of 4096 by 9e-6); a lost or repeated step, or a
    # restarted optimizer, moves elements by ~1e-3
    chex.assert_trees_all_close(chain[1]["params"], straight[1]["params"], rtol=1e-4, atol=2e-5)
