"""Latent diffusion: the composition's shapes and gradients, the frozen autoencoder, exact resume of stage 2,
both stages end to end through their entry points, and the refused --autoencoder."""

import dataclasses
import functools
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import latent_diffusion as ld_exp
from experiments import vae_digits
from genjax import checkpoint, config as config_lib, experiment, sample as sample_cli, train
from genjax.config import ConfigError
from genjax.models import latent_diffusion as ld, vae
from tests.test_workdir import save_untrained_run

# a tiny composition: 8x8x1 -> 4x4x1 latents, a one-level U-Net without attention
CFG = ld.Config(ae_channels=(8,), ae_latent_channels=1, channels=8, num_groups=4, channel_mults=(1,),
                attn_resolutions=(), timesteps=50, latent_scale=2.0)
CONFIG_FILE = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs",
                           "vae_digits_latent.json")
STAGE1 = ["--config", CONFIG_FILE, "--model.channels", "8", "--model.latent_channels", "1",
          "--train.steps", "1", "--train.batch_size", "16", "--train.num_devices", "1",
          "--train.log_every", "1", "--model.iwae_samples", "2", "--num_quality_samples", "32"]
STAGE2 = {"model.channels": "8", "model.num_groups": "4", "model.channel_mults": "1",
          "model.attn_resolutions": "", "model.timesteps": "50", "sample.steps": "2",
          "num_quality_samples": "32", "train.batch_size": "16", "train.num_devices": "1",
          "train.log_every": "1", "train.eval_every": "100", "train.sample_every": "100",
          "train.ckpt_every": "1"}


def test_shapes_and_gradients_of_the_composition():
    params = ld.init(jax.random.key(0), CFG)
    assert set(params) == {"autoencoder", "diffusion"} and CFG.latent_shape == (4, 4, 1)
    images = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
    z = ld.encode(params["autoencoder"], images, CFG)
    chex.assert_shape(z, (3, 4, 4, 1))
    mean, _ = vae.encode(params["autoencoder"], images, ld.autoencoder_config(CFG))
    chex.assert_trees_all_close(z, 2.0 * mean)  # scaled by latent_scale
    chex.assert_shape(ld.decode(params["autoencoder"], z, CFG), (3, 8, 8, 1))

    batch = {"image": images, "label": jnp.zeros(3, jnp.int32)}
    (value, metrics), grads = jax.value_and_grad(functools.partial(ld.loss, cfg=CFG), has_aux=True)(
        params, batch, jax.random.key(2))
    assert np.isfinite(value) and value.shape == () and set(metrics) == {"mse"}
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["autoencoder"]))  # frozen
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads["diffusion"]))
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["diffusion"])) > 0

    latents, samples = ld.sample_latents_and_decode(params, jax.random.key(3), 5, CFG,
                                                    ld.SampleOptions(steps=3))
    chex.assert_shape(latents, (5, 4, 4, 1))
    chex.assert_shape(samples, (5, 8, 8, 1))
    assert samples.dtype == jnp.float32 and 0.0 <= float(samples.min()) and float(samples.max()) <= 1.0
    sums = ld.evaluate(params, batch, jax.random.key(4), CFG)
    assert int(sums["count"]) == 3 and all(np.isfinite(v) for v in sums.values())


def test_bad_model_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="model.latent_scale"):
        dataclasses.replace(CFG, latent_scale=0.0).validate()
    with pytest.raises(ConfigError, match="model.ae_latent_channels"):
        dataclasses.replace(CFG, ae_latent_channels=0).validate()
    with pytest.raises(ConfigError, match="model.attn_resolutions"):
        dataclasses.replace(CFG, attn_resolutions=(8,)).validate()  # 4x4 latents: no 8x8 level
    with pytest.raises(ConfigError, match="spatial latent"):
        ld.with_autoencoder(CFG, vae.Config())


def test_training_leaves_the_autoencoder_bit_identical():
    train_cfg = train.TrainConfig(lr=1e-2, ema_decay=0.9)
    tx = train.make_optimizer(train_cfg)
    params = ld.init(jax.random.key(0), CFG)
    state = ld.init_state(jax.random.key(1), params, tx, ema=True)
    step = jax.jit(ld.make_step(CFG, train_cfg, tx))
    rng = np.random.default_rng(0)
    for _ in range(3):
        state, metrics = step(state, {"latent": rng.normal(size=(8, 4, 4, 1)).astype(np.float32),
                                      "label": np.zeros(8, np.int32)})
        assert float(metrics["nonfinite"]) == 0.0
    chex.assert_trees_all_equal(state.params["autoencoder"], params["autoencoder"])
    chex.assert_trees_all_equal(state.ema_params["autoencoder"], params["autoencoder"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params["diffusion"], params["diffusion"])
    assert all(jax.tree.leaves(changed))
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(params["diffusion"]))


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    """Stage 1 through its entry point: vae_digits with the spatial-latent config, one step."""
    workdir = str(tmp_path_factory.mktemp("stage1") / "vae")
    summary = experiment.main(vae_digits.Config(), vae_digits.train_and_evaluate, "",
                              STAGE1 + ["--workdir", workdir])
    assert summary["steps"] == 1
    return workdir


def _stage2(workdir, autoencoder, **overrides):
    return config_lib.override(ld_exp.Config(), {**STAGE2, "autoencoder": autoencoder,
                                                 **{k: str(v) for k, v in overrides.items()}})


def test_both_stages_end_to_end(autoencoder_run, tmp_path, capsys):
    record = config_lib.load(autoencoder_run)
    assert record["config"]["model"]["latent_channels"] == 1 and record["config"]["model"]["arch"] == "conv"
    workdir = str(tmp_path / "latent")
    argv = ["--workdir", workdir, "--autoencoder", autoencoder_run, "--train.steps", "1",
            *[f"--{k}={v}" for k, v in STAGE2.items()]]
    summary = experiment.main(ld_exp.Config(), ld_exp.train_and_evaluate, "", argv)
    assert summary["steps"] == 1 and summary["autoencoder_unchanged"] and summary["latent_shape"] == [4, 4, 1]
    for key in ("frechet", "kid", "precision", "recall", "samples_per_sec", "recon_frechet", "test_mse"):
        assert np.isfinite(summary[key]), key
    saved = config_lib.load(workdir)["config"]
    np.testing.assert_allclose(saved["model"]["latent_scale"], 1.0 / summary["latent_std"], rtol=1e-6)
    assert saved["model"]["ae_latent_channels"] == 1 and len(saved["autoencoder_sha256"]) == 64
    # the composed model samples through the sample CLI, decoded to images
    out = tmp_path / "grid.png"
    code = sample_cli.main([workdir, "--num", "4", "--out", str(out), "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    assert out.exists()
    family, cfg, params, _ = sample_cli.load_run(workdir)
    assert family is ld and set(params) == {"autoencoder", "diffusion"}
    _, _, ae_params, _ = sample_cli.load_run(autoencoder_run)
    chex.assert_trees_all_equal(params["autoencoder"], ae_params)


def test_stage2_resumes_exactly(autoencoder_run, tmp_path):
    cfg = _stage2(tmp_path, autoencoder_run,
                  **{"train.steps": 4, "train.ckpt_every": 2, "train.schedule": "cosine"})
    full = str(tmp_path / "full")
    ld_exp.train_and_evaluate(cfg, full)
    final = lambda w: checkpoint.restore_raw(os.path.join(w, "checkpoints"))[1]  # noqa: E731
    reference = final(full)
    killed = str(tmp_path / "killed")  # a run killed after its step-2 checkpoint
    shutil.copytree(full, killed)
    for step in ("3", "4"):
        shutil.rmtree(os.path.join(killed, "checkpoints", step), ignore_errors=True)
    assert checkpoint.Checkpointer(os.path.join(killed, "checkpoints")).steps() == [2]
    ld_exp.train_and_evaluate(cfg, killed)
    resumed = final(killed)
    chex.assert_trees_all_equal(resumed["params"], reference["params"])
    chex.assert_trees_all_equal(resumed["ema_params"], reference["ema_params"])


def test_autoencoder_that_is_not_a_spatial_vae_is_refused(tmp_path, capsys):
    flat = save_untrained_run(str(tmp_path / "flat"), config_lib.override(
        vae_digits.Config(), {"model.hidden": "16", "model.latent_dim": "2"}), "vae_digits", vae)
    workdir = tmp_path / "latent"
    nowhere = str(tmp_path / "nowhere")
    for bad, message in ((flat, "flat latent"), (nowhere, "not a genjax run"), ("", "required")):
        with pytest.raises(SystemExit) as e:
            experiment.main(ld_exp.Config(), ld_exp.train_and_evaluate, "",
                            ["--workdir", str(workdir), "--autoencoder", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not workdir.exists()  # nothing written
