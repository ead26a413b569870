"""VAE: densities against references, IWAE ordering, and the experiment end to end (1 and 8 devices)."""

import dataclasses
import functools
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import checkpoint, config as config_lib, experiment, log, sample as sample_cli
from genjax.config import ConfigError
from genjax.models import vae
from experiments import vae_digits
from tests.test_workdir import copy_run, tiny_config, tiny_run

CFG = vae.Config(hidden=(32,), latent_dim=4)


def tiny(**overrides):
    base = {"train.steps": "2", "train.batch_size": "16", "train.log_every": "1", "train.eval_every": "1",
            "train.sample_every": "2", "train.ckpt_every": "1", "model.iwae_samples": "4",
            "num_quality_samples": "64", "model.hidden": "32", "model.latent_dim": "4"}
    base.update({k: str(v) for k, v in overrides.items()})
    return config_lib.override(vae_digits.Config(), base)


def test_kl_against_reference_and_zero_for_the_prior():
    zeros = jnp.zeros((3, 5))
    np.testing.assert_allclose(vae.kl_normal(zeros, zeros), 0.0, atol=1e-7)
    mean, logvar = jnp.array([[0.5, -1.0]]), jnp.array([[0.3, -0.7]])
    var = np.exp(np.asarray(logvar, np.float64))
    ref = 0.5 * np.sum(var + np.asarray(mean, np.float64) ** 2 - 1 - np.log(var))
    np.testing.assert_allclose(vae.kl_normal(mean, logvar)[0], ref, rtol=1e-6)
    # and against a Monte Carlo estimate of E_q[log q - log p]
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.key(0), (200_000, 2))
    mc = jnp.mean(vae.log_normal(z, mean, logvar) - vae.log_normal(z, 0.0, jnp.zeros(())))
    np.testing.assert_allclose(mc, ref, rtol=2e-2)


def test_log_normal_matches_scipy():
    from scipy.stats import norm

    z, mean, logvar = np.array([[0.2, 1.5]]), np.array([[0.0, 1.0]]), np.array([[0.1, -0.4]])
    ref = norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum()
    np.testing.assert_allclose(vae.log_normal(z, mean, logvar)[0], ref, rtol=1e-6)


def test_mixture_prior_density_kl_and_samples():
    """log p(z) of the `mog` prior against a float64 mixture density, its one-sample KL estimate against
    the closed form when the mixture is one N(0, I) component, and prior samples drawn per component."""
    from scipy.stats import multivariate_normal

    cfg = dataclasses.replace(CFG, prior="mog", prior_components=3)
    params = vae.init(jax.random.key(0), cfg)
    params = {**params, "prior_logits": jnp.array([0.0, 1.0, -1.0]),
              "prior_logvar": jax.random.normal(jax.random.key(1), (3, 4)) * 0.3}
    z = np.asarray(jax.random.normal(jax.random.key(2), (5, 4)), np.float64)
    w = np.exp([0.0, 1.0, -1.0]) / np.exp([0.0, 1.0, -1.0]).sum()
    mean = np.asarray(params["prior_mean"], np.float64)
    var = np.exp(np.asarray(params["prior_logvar"], np.float64))
    ref = np.log(sum(w[k] * multivariate_normal(mean[k], np.diag(var[k])).pdf(z) for k in range(3)))
    np.testing.assert_allclose(vae.log_prior(params, jnp.asarray(z, jnp.float32), cfg), ref, rtol=1e-5)

    one = dataclasses.replace(CFG, prior="mog", prior_components=1)
    p1 = {**vae.init(jax.random.key(0), one), "prior_mean": jnp.zeros((1, 4))}
    m, lv = jnp.array([[0.3, -1.0, 0.5, 2.0]]), jnp.array([[0.1, -0.5, 0.0, 0.3]])
    draws = m + jnp.exp(0.5 * lv) * jax.random.normal(jax.random.key(3), (100_000, 4))
    kl_estimate = jnp.mean(vae.kl_term(p1, draws, m, lv, one))
    np.testing.assert_allclose(kl_estimate, vae.kl_normal(m, lv)[0], rtol=1e-2)

    # prior samples: a far-away component with all the weight gets every sample
    far = {**params, "prior_logits": jnp.array([-50.0, 50.0, -50.0]),
           "prior_mean": params["prior_mean"].at[1].set(100.0)}
    zs = vae.prior_sample(far, jax.random.key(4), 64, cfg, temperature=0.5)
    np.testing.assert_allclose(jnp.mean(zs, 0), 100.0, atol=0.5)
    assert float(jnp.max(jnp.abs(zs - 100.0))) < 0.5 * 4 * float(jnp.exp(0.5 * far["prior_logvar"][1]).max())


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes_and_iwae_ordering(arch, likelihood):
    prior = "mog" if likelihood == "gaussian" else "standard"  # the learned prior through the same checks
    cfg = dataclasses.replace(CFG, arch=arch, likelihood=likelihood, channels=(8, 16), prior=prior)
    params = vae.init(jax.random.key(0), cfg)
    x = vae.targets(jax.random.uniform(jax.random.key(1), (6, 8, 8, 1)), jax.random.key(2), cfg)
    recon, kl = vae.elbo(params, x, jax.random.key(3), cfg)
    chex.assert_shape([recon, kl], (6,))
    # E[IWAE_k] >= E[ELBO]: compare averages over many draws so the test is about the bound, not noise
    # (the untrained conv/bernoulli gap is only ~0.03 nats: 256 draws put it ~10 standard errors out)
    keys = jax.random.split(jax.random.key(4), 256)
    elbo_mean = jnp.mean(jax.vmap(lambda k: jnp.subtract(*vae.elbo(params, x, k, cfg)))(keys))
    iwae_mean = jnp.mean(jax.vmap(lambda k: vae.iwae_bound(params, x, k, cfg, k=16))(keys))
    assert float(iwae_mean) > float(elbo_mean)
    images = vae.sample(params, jax.random.key(5), 7, cfg)
    chex.assert_shape(images, (7, 8, 8, 1))
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_iwae_k1_is_the_elbo_in_expectation():
    params = vae.init(jax.random.key(0), CFG)
    x = vae.binarize(jax.random.uniform(jax.random.key(1), (4, 8, 8, 1)), jax.random.key(2))
    keys = jax.random.split(jax.random.key(3), 2000)
    iwae1 = jnp.mean(jax.vmap(lambda k: vae.iwae_bound(params, x, k, CFG, k=1))(keys), 0)
    elbo = jnp.mean(jax.vmap(lambda k: jnp.subtract(*vae.elbo(params, x, k, CFG)))(keys), 0)
    np.testing.assert_allclose(iwae1, elbo, rtol=2e-2)


def test_slerp_endpoints_and_norm():
    a, b = jnp.array([[3.0, 0.0]]), jnp.array([[0.0, 3.0]])
    chex.assert_trees_all_close(vae.slerp(a, b, 0.0), a, atol=1e-6)
    chex.assert_trees_all_close(vae.slerp(a, b, 1.0), b, atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(vae.slerp(a, b, 0.5)), 3.0, rtol=1e-6)


def test_evaluate_returns_sums_with_count():
    cfg = dataclasses.replace(CFG, iwae_samples=8)
    params = vae.init(jax.random.key(0), cfg)
    images = jax.random.uniform(jax.random.key(1), (6, 8, 8, 1))
    evaluate = jax.jit(functools.partial(vae.evaluate, cfg=cfg))

    @jax.jit
    def reference(key):  # the documented draws: a binarization, an ELBO sample, cfg.iwae_samples samples
        bin_key, elbo_key, iwae_key = jax.random.split(key, 3)
        x = vae.targets(images, bin_key, cfg)
        recon, kl = vae.elbo(params, x, elbo_key, cfg)
        return {"elbo": jnp.sum(recon - kl), "kl": jnp.sum(kl),
                "nll_iwae": -jnp.sum(vae.iwae_bound(params, x, iwae_key, cfg, cfg.iwae_samples))}

    key = jax.random.key(2)
    sums = evaluate(params, {"image": images}, key)
    assert int(sums["count"]) == 6
    chex.assert_trees_all_close({k: v for k, v in sums.items() if k != "count"}, reference(key), rtol=1e-5)
    # experiment.evaluate_batches turns the sums over batches into per-example means (batch i: fold_in(key, i))
    means = experiment.evaluate_batches(evaluate, params, [{"image": images}] * 2, key)
    assert set(means) == {"elbo", "nll_iwae", "kl"}
    each = [evaluate(params, {"image": images}, jax.random.fold_in(key, i)) for i in (0, 1)]
    np.testing.assert_allclose(means["elbo"], (each[0]["elbo"] + each[1]["elbo"]) / 12, rtol=1e-5)


def test_experiment_one_step_writes_everything(tmp_path, tmp_path_factory, capsys):
    workdir, summary = tiny_run("vae", tmp_path_factory)  # 2 steps on 1 device, evaluated every step
    assert summary["steps"] == 2 and summary["devices"] == 1 and np.isfinite(summary["test_nll_iwae"])
    assert summary["test_nll_iwae"] <= -summary["test_elbo"] + 1.0  # the IWAE bound is the tighter one
    for name in ("config.json", "metrics.jsonl", "summary.json", "samples/samples_000002.png",
                 "samples/reconstructions_000002.png", "samples/interpolation_000002.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "tb"))
    rows = log.read_metrics(workdir, "train")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    evals = log.read_metrics(workdir, "eval")
    assert [r["step"] for r in evals] == [1, 2] and all(r["nll_iwae"] > 0 for r in evals)
    # the sample CLI reads the run back
    out = tmp_path / "s.npy"
    assert sample_cli.main([workdir, "--num", "5", "--out", str(out)]) == 0, capsys.readouterr().err
    samples = np.load(out)
    assert samples.shape == (5, 8, 8, 1) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 1


def _final_params(workdir):
    return checkpoint.restore_raw(os.path.join(workdir, "checkpoints"))[1]["params"]


def test_eight_devices_match_one(tmp_path, devices8):
    cfg = tiny(**{"train.steps": 4, "train.sample_every": 100})
    one = vae_digits.train_and_evaluate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_devices=1)),
                                        str(tmp_path / "one"))
    eight = vae_digits.train_and_evaluate(cfg, str(tmp_path / "eight"))
    assert one["devices"] == 1 and eight["devices"] == 8
    chex.assert_trees_all_close(_final_params(tmp_path / "one"), _final_params(tmp_path / "eight"),
                                rtol=1e-5, atol=1e-6)


def test_killed_run_resumes_to_identical_params(tmp_path):
    cfg = tiny(**{"train.steps": 6, "train.ckpt_every": 3, "train.sample_every": 100,
                  "train.num_devices": 1, "train.schedule": "cosine"})
    full = str(tmp_path / "full")
    vae_digits.train_and_evaluate(cfg, full)
    reference = _final_params(full)
    # a run killed after its step-3 checkpoint: same workdir minus everything written later
    killed = str(tmp_path / "killed")
    shutil.copytree(full, killed)
    shutil.rmtree(os.path.join(killed, "checkpoints", "6"))
    assert checkpoint.Checkpointer(os.path.join(killed, "checkpoints")).steps() == [3]
    vae_digits.train_and_evaluate(cfg, killed)
    chex.assert_trees_all_equal(_final_params(killed), reference)


def test_batch_that_does_not_divide_over_devices(tmp_path, devices8):
    with pytest.raises(ConfigError, match="does not divide over the 8 batch shards"):
        vae_digits.train_and_evaluate(tiny(**{"train.batch_size": 12}), str(tmp_path / "w"))


def test_workdir_of_another_experiment_is_refused(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"experiment": "gan_digits", "family": "gan", "config": {}}))
    with pytest.raises(ConfigError, match="holds a 'gan_digits' run"):
        vae_digits.train_and_evaluate(tiny(), str(workdir))
    assert json.loads((workdir / "config.json").read_text())["experiment"] == "gan_digits"


def test_changed_model_shape_is_a_clear_error(tmp_path, tmp_path_factory):
    workdir = copy_run("vae", tmp_path_factory, tmp_path / "w")
    with pytest.raises(ConfigError, match="trained with model.latent_dim=2, not 3: resuming cannot change its model"):
        vae_digits.train_and_evaluate(tiny_config("vae", tmp_path_factory, **{"model.latent_dim": "3"}), workdir)


def test_sampling_a_workdir_without_checkpoint_fails_clearly(tmp_path, capsys):
    workdir = tmp_path / "w"
    config_lib.save(tiny(), str(workdir), experiment="vae_digits", family="vae")
    assert sample_cli.main([str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no checkpoint" in err
    assert not (workdir / "samples.npy").exists()
