"""vae_gan: the VAE family's autoencoder trained against the GAN family's discriminator. Shapes and
gradients, the plain VAE's update before adv_start (and at weight 0), D learning, the adaptive weight by
hand, the refused configs, and the experiment end to end with latent diffusion on its autoencoder."""

import dataclasses
import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import latent_diffusion as ld_exp
from experiments import vae_gan_digits
from genjax import config as config_lib, experiment, sample as sample_cli, train
from genjax.config import ConfigError
from genjax.models import gan, vae, vae_gan
from tests.test_config import cli, one_line
from tests.test_latent_diffusion import STAGE1, STAGE2

# 8x8x1 -> 4x4x1 latents, a D of widths 8/4 (8x8 -> 4x4)
TINY = dataclasses.replace(vae_gan.SIZES["digits"], channels=(8,), latent_channels=1, disc_widths=(8, 4),
                           iwae_samples=2)
TRAIN = train.TrainConfig(lr=1e-2, ema_decay=0.9)
QUICK = {"xla_backend_optimization_level": 0}  # faster compiles for the few steps run here
CONFIG_FILE = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs",
                           "vae_gan_digits_latent.json")


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(size=(n, 8, 8, 1)).astype(np.float32), "label": np.zeros(n, np.int32)}


@functools.cache
def params_of(cfg=TINY):
    return vae_gan.init(jax.random.key(0), cfg)


@functools.cache
def compiled_step(cfg):
    return jax.jit(vae_gan.make_step(cfg, TRAIN), compiler_options=QUICK)


@functools.cache
def compiled_vae_step(cfg):
    return jax.jit(train.step_for(functools.partial(vae.loss, cfg=cfg), TRAIN), compiler_options=QUICK)


def quick(fn):
    return jax.jit(fn, compiler_options=QUICK)


def changed(a, b):
    return any(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.any(x != y)), a, b)))


def test_shapes_and_finite_gradients():
    params = params_of()
    assert set(params) == {"autoencoder", "discriminator"}
    assert set(params["discriminator"]) == {"params", "spectral"}
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # noqa: E731
    assert shapes(params["autoencoder"]) == shapes(vae.init(jax.random.key(0), vae_gan.vae_config(TINY)))
    assert vae_gan.last_layer(TINY) == ("decoder", "out", "kernel")
    images = batch()
    d_fixed = gan.d_weights(params["discriminator"], vae_gan.gan_config(TINY))[0]
    loss = functools.partial(vae_gan.autoencoder_loss, d_weights=d_fixed, active=True, step=0, cfg=TINY)
    (value, metrics), grads = quick(jax.value_and_grad(loss, has_aux=True))(
        params["autoencoder"], images, jax.random.key(1))
    assert value.shape == () and np.isfinite(value) and float(metrics["adv_weight"]) > 0
    np.testing.assert_allclose(value, metrics["vae_loss"] + metrics["adv_weight"] * metrics["adv"], rtol=1e-6)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert float(optax.tree.norm(grads["decoder"]["out"]["kernel"])) > 0

    recon = quick(functools.partial(vae_gan.reconstruct, cfg=TINY))(params, images["image"])
    chex.assert_shape(recon, (8, 8, 8, 1))
    d_batch = {"real": images["image"] * 2 - 1, "fake": recon * 2 - 1}
    d_loss = functools.partial(vae_gan.discriminator_loss, d_iter=0, cfg=TINY)
    (d_value, _), d_grads = quick(jax.value_and_grad(d_loss, has_aux=True))(
        params["discriminator"]["params"], d_batch, jax.random.key(2), params["discriminator"]["spectral"])
    assert np.isfinite(d_value) and all(np.isfinite(g).all() for g in jax.tree.leaves(d_grads))

    sums = quick(functools.partial(vae_gan.evaluate, cfg=TINY))(params, images, jax.random.key(3))
    assert int(sums["count"]) == 8 and 0 <= int(sums["d_correct"]) <= 16
    assert all(np.isfinite(v) for v in sums.values())


@pytest.mark.parametrize("cfg", [
    dataclasses.replace(TINY, adv_start=1),  # adaptive, from step 1 on
    dataclasses.replace(TINY, adv_weight=0.0, adv_adaptive=False),  # fixed weight 0 from the start
], ids=["before-adv-start", "weight-0"])
def test_without_the_adversarial_term_the_autoencoder_trains_as_the_vae(cfg):
    params = params_of()
    state = vae_gan.init_state(jax.random.key(1), params, cfg, TRAIN)
    plain = train.init_state(jax.random.key(1), params["autoencoder"], train.make_optimizer(TRAIN), ema=True)
    plain_step = compiled_vae_step(vae_gan.vae_config(cfg))  # the same for both cases
    new, metrics = compiled_step(cfg)(state, batch())
    plain, _ = plain_step(plain, batch())
    assert float(metrics["adv_weight"]) == 0.0 and float(metrics["nonfinite"]) == 0.0
    chex.assert_trees_all_equal(new.params["autoencoder"], plain.params)  # exactly
    chex.assert_trees_all_equal(new.ema_params["autoencoder"], plain.ema_params)
    chex.assert_trees_all_equal(new.opt_state["autoencoder"], plain.opt_state)
    if cfg.adv_start == 1:  # D waits, then both players move
        chex.assert_trees_all_equal(new.params["discriminator"], params["discriminator"])
        chex.assert_trees_all_equal(new.opt_state["discriminator"], state.opt_state["discriminator"])
        newer, metrics = compiled_step(cfg)(new, batch(seed=1))
        plain, _ = plain_step(plain, batch(seed=1))
        assert float(metrics["adv_weight"]) > 0.0
        assert changed(newer.params["discriminator"]["params"], new.params["discriminator"]["params"])
        assert changed(newer.params["autoencoder"], plain.params)
    else:  # D trains from the start
        assert changed(new.params["discriminator"]["params"], params["discriminator"]["params"])


def test_discriminator_loss_goes_down_on_real_against_reconstructions():
    params = params_of()
    gcfg = vae_gan.gan_config(TINY)
    images = batch(16)["image"]
    fake = vae_gan.reconstruct(params, images, TINY)
    d_batch = {"real": images * 2 - 1, "fake": fake * 2 - 1}
    tx = vae_gan.optimizers(TINY, train.TrainConfig(lr=1e-2))["discriminator"]
    d_fn = functools.partial(vae_gan.discriminator_loss, d_iter=0, cfg=TINY)

    @functools.partial(jax.jit, compiler_options=QUICK)
    def update(disc, opt_state, key):
        return gan.discriminator_update(tx, disc, opt_state, d_fn, d_batch, key, 1, gcfg)

    disc, opt_state, losses = params["discriminator"], tx.init(params["discriminator"]["params"]), []
    for i in range(8):
        disc, opt_state, finite, metrics = update(disc, opt_state, jax.random.key(i))
        assert bool(finite)
        losses.append(float(metrics["d_loss"]))
    assert losses[-1] < 0.5 * losses[0], losses  # hinge: 2 at chance


def test_adaptive_weight_matches_a_hand_computation():
    assert float(vae_gan.adaptive_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 2.0]), 0.5)) == \
        pytest.approx(0.5 * 5.0 / (2.0 + 1e-4))
    assert float(vae_gan.adaptive_weight(jnp.array([3.0, 4.0]), jnp.zeros(2), 1.0)) == 1e4  # clipped
    params, images, key = params_of()["autoencoder"], batch(4), jax.random.key(5)
    gcfg = vae_gan.gan_config(TINY)
    d_fixed = gan.d_weights(params_of()["discriminator"], gcfg)[0]
    kernel = params["decoder"]["out"]["kernel"]

    def with_kernel(k):
        return {**params, "decoder": {**params["decoder"], "out": {**params["decoder"]["out"], "kernel": k}}}

    def adversarial(k):  # by hand: the posterior sample vae.loss draws, decoded, clipped, shown to D
        p = with_kernel(k)
        data_key, z_key = jax.random.split(key)
        mean, logvar = vae.encode_flat(p, images["image"], TINY)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_key, mean.shape)
        recon = jnp.clip(vae.decode(p, z, TINY), 0.0, 1.0)
        return -jnp.mean(gan.d_apply(d_fixed, recon * 2 - 1, None, gcfg))  # hinge's generator term

    g_vae = quick(jax.grad(lambda k: vae.loss(with_kernel(k), images, key, TINY)[0]))(kernel)
    adv, g_adv = quick(jax.value_and_grad(adversarial))(kernel)
    expected = TINY.adv_weight * np.linalg.norm(g_vae) / (np.linalg.norm(g_adv) + 1e-4)
    loss = quick(lambda active: vae_gan.autoencoder_loss(params, images, key, d_weights=d_fixed,
                                                         active=active, step=0, cfg=TINY)[1])
    metrics = loss(True)
    np.testing.assert_allclose(metrics["adv"], adv, rtol=1e-6)
    np.testing.assert_allclose(metrics["adv_weight"], expected, rtol=1e-5)
    assert float(loss(False)["adv_weight"]) == 0.0


@pytest.mark.parametrize("field, value", [("adv_weight", -0.1), ("adv_start", -1), ("disc_widths", ()),
                                          ("disc_widths", (8, 4, 4, 4, 4)), ("d_lr_scale", 0.0),
                                          ("adv_loss", "wgan_gp"), ("latent_dim", 0)])
def test_bad_values_are_one_line_config_errors(field, value):
    with pytest.raises(ConfigError, match=f"model.{field}") as e:
        dataclasses.replace(TINY, **{field: value}).validate()
    assert "\n" not in str(e.value)


def test_bad_value_on_the_command_line(capsys):
    code, _, err = cli(vae_gan_digits, ["--workdir", "w", "--model.adv_weight", "-1"], capsys)
    assert code == 2 and "model.adv_weight" in one_line(err)


@pytest.fixture(scope="module")
def vae_gan_run(tmp_path_factory):
    """The experiment through its entry point: two steps, D on from the second."""
    workdir = str(tmp_path_factory.mktemp("stage1") / "vae_gan")
    argv = [CONFIG_FILE if a.endswith("vae_digits_latent.json") else a for a in STAGE1]
    argv += ["--train.steps", "2", "--model.adv_start", "1", "--model.disc_widths", "8,4",
             "--workdir", workdir]
    summary = experiment.main(vae_gan_digits.Config(), vae_gan_digits.train_and_evaluate, "", argv)
    assert summary["steps"] == 2
    for key in ("test_elbo", "test_d_correct", "frechet", "recon_frechet", "recon_precision", "recon_mse",
                "test_recon_mse"):
        assert np.isfinite(summary[key]), key
    return workdir


def test_experiment_then_latent_diffusion_on_its_autoencoder(vae_gan_run, tmp_path, capsys):
    record = config_lib.load(vae_gan_run)
    assert record["family"] == "vae_gan" and record["config"]["model"]["adv_adaptive"] is True
    out = tmp_path / "samples.png"
    assert sample_cli.main([vae_gan_run, "--num", "4", "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.exists()
    workdir = str(tmp_path / "latent")
    argv = ["--workdir", workdir, "--autoencoder", vae_gan_run, "--train.steps", "1",
            *[f"--{k}={v}" for k, v in STAGE2.items()]]
    summary = experiment.main(ld_exp.Config(), ld_exp.train_and_evaluate, "", argv)
    assert summary["steps"] == 1 and summary["autoencoder_unchanged"] and summary["latent_shape"] == [4, 4, 1]
    _, _, ld_params, _ = sample_cli.load_run(workdir)
    _, _, params, _ = sample_cli.load_run(vae_gan_run)
    chex.assert_trees_all_equal(ld_params["autoencoder"], params["autoencoder"])
