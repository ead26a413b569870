"""GAN family: the two-player step, losses, spectral norm, R1, sampling, and a real ring-of-Gaussians run."""

import dataclasses
import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.config import ConfigError
from genjax.models import gan
from genjax.nn import spectral

# XLA:CPU compiles are the cost here (seconds each on 2 cores): the tests share one small conv config, one
# MLP config, and their states and compiled functions.
TINY = gan.Config(image_shape=(8, 8, 1), latent_dim=8, widths=(16, 8), num_classes=3, r1_weight=1.0, r1_every=2,
                  n_disc=2)
MLP = gan.Config(arch="mlp", data_dim=2, latent_dim=4, widths=(16, 16), num_classes=3)


# Faster compiles, slower code: right for the few steps these tests run (not for the ring run).
QUICK = {"xla_backend_optimization_level": 0}


@functools.cache
def compiled_step(cfg):
    return jax.jit(gan.make_step(cfg), compiler_options=QUICK)


@functools.cache
def fresh_state(cfg):
    return gan.init_state(jax.random.key(0), cfg)


def image_batch(n=8, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(size=(n, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, classes, n).astype(np.int32)}


@functools.partial(jax.jit, static_argnums=(3,), compiler_options=QUICK)
def d_step(state, batch, d_iter, cfg):
    return gan.d_step(state, gan._to_model(batch, cfg), batch["label"], jax.random.key(1), d_iter, cfg)


@functools.partial(jax.jit, static_argnums=(1,), compiler_options=QUICK)
def g_step(state, cfg):
    return gan.g_step(state, jnp.arange(8) % 3, jax.random.key(2), 8, cfg)


def test_config_validation():
    gan.Config().validate()
    gan.RING.validate()
    bad = [dict(loss="lsgan"), dict(widths=(64, 32, 16, 8, 4)), dict(image_shape=(8, 8)), dict(n_disc=0),
           dict(num_classes=1), dict(ema_decay=1.0), dict(loss="wgan_gp", gp_weight=0.0), dict(lr_d=0.0),
           dict(norm="batch"), dict(widths=())]
    for change in bad:
        with pytest.raises(ConfigError, match="model\\."):
            dataclasses.replace(gan.Config(), **change).validate()
    dataclasses.replace(gan.Config(), image_shape=(28, 28, 1), widths=(32, 16, 8)).validate()  # 7x7 -> 28x28


def test_step_updates_both_players_and_ema():
    cfg = TINY
    state = fresh_state(cfg)
    new, metrics = compiled_step(cfg)(state, image_batch())
    assert int(new.step) == 1 and float(metrics["nonfinite"]) == 0.0
    for name in ("d_loss", "g_loss", "d_real", "d_fake", "r1", "d_grad_norm", "g_grad_norm"):
        assert np.isfinite(float(metrics[name])), name
    for player in ("generator", "discriminator"):
        moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.params[player], state.params[player])
        assert all(jax.tree.leaves(moved)), f"{player} has leaves the step did not update"
    assert int(new.opt_state["discriminator"][0].count) == 2  # n_disc D updates
    assert int(new.opt_state["generator"][0].count) == 1
    assert not np.allclose(new.ema_params["Dense_0"]["kernel"], state.ema_params["Dense_0"]["kernel"])
    chex.assert_trees_all_equal_structs(new, state)
    with pytest.raises(ConfigError, match="n_disc"):
        gan.make_step(cfg)(state, image_batch(n=7))


@pytest.mark.parametrize("loss", ["nonsat", "hinge", "wgan_gp"])
def test_discriminator_separates_real_from_fake(loss):
    cfg = dataclasses.replace(MLP, loss=loss, lr_d=1e-2)
    state = fresh_state(MLP)  # the same state layout for every loss
    x, y = gan.ring_data(0, 64)
    batch = {"x": x, "label": y % 3}
    first = None
    for _ in range(10):  # same reals, same fakes (fixed key, G untouched)
        state, m = d_step(state, batch, jnp.int32(1), cfg)
        first = first or m
    assert float(m["d_real"] - m["d_fake"]) > float(first["d_real"] - first["d_fake"]) + 0.05
    assert float(m["d_real"]) > float(first["d_real"]) and float(m["d_fake"]) < float(first["d_fake"])
    assert float(m["d_loss"]) < float(first["d_loss"])


def test_no_gradient_leak_between_players():
    state = fresh_state(TINY)
    after_d, _ = d_step(state, image_batch(), jnp.int32(0), TINY)
    chex.assert_trees_all_equal(after_d.params["generator"], state.params["generator"])
    chex.assert_trees_all_equal(after_d.opt_state["generator"], state.opt_state["generator"])
    assert not np.allclose(after_d.params["discriminator"]["params"]["logit"]["kernel"],
                           state.params["discriminator"]["params"]["logit"]["kernel"])
    after_g, _ = g_step(state, TINY)
    chex.assert_trees_all_equal(after_g.params["discriminator"], state.params["discriminator"])  # incl. u vectors
    chex.assert_trees_all_equal(after_g.opt_state["discriminator"], state.opt_state["discriminator"])
    assert not np.allclose(after_g.params["generator"]["Dense_0"]["kernel"],
                           state.params["generator"]["Dense_0"]["kernel"])
    # The power-iteration vectors are state, not parameters: the optimizer never sees them.
    d_opt_leaves = jax.tree.leaves(state.opt_state["discriminator"])
    n_params = len(jax.tree.leaves(state.params["discriminator"]["params"]))
    assert len(d_opt_leaves) == 1 + 2 * n_params  # adam: count, mu, nu


def test_spectral_norm_top_singular_value_is_one():
    params = fresh_state(TINY).params["discriminator"]
    disc = dict(params)
    advance = jax.jit(gan.d_weights, static_argnums=(1, 2), compiler_options=QUICK)
    for _ in range(30):  # the power iteration converges over D updates
        weights, disc["spectral"] = advance(disc, TINY, True)
    weights, _ = advance(disc, TINY, False)
    flat = jax.tree_util.tree_flatten_with_path(weights)[0]
    checked = 0
    for path, w in flat:
        name = jax.tree_util.keystr(path)
        if ("kernel" in name or "embedding" in name) and w.ndim >= 2:
            top = np.linalg.svd(np.asarray(w, np.float64).reshape(-1, w.shape[-1]), compute_uv=False)[0]
            np.testing.assert_allclose(top, 1.0, rtol=2e-3, err_msg=name)
            checked += 1
        else:
            raw = params["params"]
            for k in path:
                raw = raw[k.key]
            np.testing.assert_array_equal(w, raw)  # biases are left alone
    assert checked == 5  # 2 convs, dense, logit, class projection
    # A single update from a fresh u already bounds the estimate from below.
    w = params["params"]["Conv_1"]["kernel"]
    est, _ = spectral.sigma(w, params["spectral"]["Conv_1"]["kernel"], n_iters=20)
    top = np.linalg.svd(np.asarray(w).reshape(-1, w.shape[-1]), compute_uv=False)[0]
    np.testing.assert_allclose(est, top, rtol=1e-3)


@pytest.mark.parametrize("cfg", [MLP, dataclasses.replace(TINY, widths=(8, 4))], ids=["mlp", "dcgan"])
def test_r1_penalty_matches_float64_finite_differences(cfg):
    params = fresh_state(cfg).params["discriminator"]
    shape = gan.data_shape(cfg)
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    labels = np.array([0, 2, 1], np.int32)
    got = float(jax.jit(gan.r1_penalty, static_argnums=3, compiler_options=QUICK)(params, x, labels, cfg))

    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64 = jnp.asarray(x, jnp.float64)
        d = x64[0].size
        eps = 1e-5
        basis = jnp.eye(d, dtype=jnp.float64).reshape(d, *shape)

        def f(xx):
            return gan.discriminator_logits(p64, xx, labels, cfg)  # (3,)

        central = jax.vmap(lambda e: (f(x64 + eps * e) - f(x64 - eps * e)) / (2 * eps))
        diffs = jax.jit(central, compiler_options=QUICK)(basis)  # (d, 3): d logit_i / d x_i[j]
        want = float(jnp.mean(jnp.sum(diffs**2, axis=0)))
    assert want > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_lazy_r1_and_nonfinite_guard():
    cfg = TINY  # r1_every=2
    state = fresh_state(cfg)
    _, off = d_step(state, image_batch(), jnp.int32(3), cfg)
    _, on = d_step(state, image_batch(), jnp.int32(4), cfg)
    assert float(off["r1"]) == 0.0 and float(on["r1"]) > 0.0

    bad = image_batch()
    bad["image"][0, 0, 0, 0] = np.nan
    new, metrics = compiled_step(cfg)(state, bad)
    assert float(metrics["nonfinite"]) == 1.0 and int(new.step) == 1
    chex.assert_trees_all_equal((new.params, new.opt_state, new.ema_params),
                                (state.params, state.opt_state, state.ema_params))


def test_sample_shapes_and_range():
    state = fresh_state(TINY)
    x = gan.sample(state.ema_params, jax.random.key(1), 5, TINY)
    chex.assert_shape(x, (5, 8, 8, 1))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    y = gan.sample(state.params, jax.random.key(1), 5, TINY)  # full two-player params work too
    chex.assert_trees_all_close(x, y)
    z = gan.sample(state.params, jax.random.key(1), 5, TINY, labels=jnp.full((5,), 2))
    assert not np.allclose(x, z)
    chex.assert_shape(gan.sample(fresh_state(MLP).ema_params, jax.random.key(1), 7, MLP), (7, 2))


def test_ring_data_and_score():
    x, y = gan.ring_data(0, 4000)
    np.testing.assert_array_equal(x, gan.ring_data(0, 4000)[0])  # seeded
    score = gan.ring_score(x)
    assert score["modes"] == 8 and score["hq"] > 0.98
    assert gan.ring_score(np.zeros((100, 2)))["modes"] == 0
    assert gan.ring_score(gan.ring_centers()[[0] * 100])["modes"] == 1


def test_ring_training_covers_modes():
    cfg = gan.RING
    state = gan.init_state(jax.random.key(0), cfg)
    step = jax.jit(gan.make_step(cfg), donate_argnums=0)
    data = gan.ring_batches(gan.RING_BATCH, seed=0)
    for i in range(gan.RING_STEPS):
        state, metrics = step(state, next(data))
    assert float(metrics["nonfinite"]) == 0.0
    score = gan.ring_score(gan.sample(state.ema_params, jax.random.key(1), 2500, cfg))
    assert score["modes"] >= 7 and score["hq"] >= 0.7, score


# ----------------------------------------------------------------------------- checkpoints and experiments


def test_checkpoint_resume_of_the_two_player_state(tmp_path):
    from genjax.checkpoint import Checkpointer

    step = compiled_step(TINY)
    state = fresh_state(TINY)
    s1, _ = step(state, image_batch(seed=1))
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(s1, wait=True)
    restored = Checkpointer(str(tmp_path / "checkpoints")).restore(state)  # template: a fresh state
    keys_as_data = functools.partial(jax.tree.map, lambda x: jax.random.key_data(x)
                                     if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
    chex.assert_trees_all_equal(keys_as_data(restored), keys_as_data(s1))  # params, u vectors, adam, EMA, key
    assert type(restored.opt_state["generator"][0]) is type(s1.opt_state["generator"][0])
    # and the resumed run continues exactly as the uninterrupted one
    a, _ = step(s1, image_batch(seed=2))
    b, _ = step(restored, image_batch(seed=2))
    chex.assert_trees_all_equal(keys_as_data(a), keys_as_data(b))
    ckpt.close()


def test_gan_digits_experiment_and_sample_cli(tmp_path, device1):
    import subprocess
    import sys

    from genjax import config as config_lib, log
    from experiments import gan_digits

    overrides = {"train.steps": 2, "train.batch_size": 16, "train.log_every": 1, "train.eval_every": 2,
                 "train.sample_every": 2, "train.ckpt_every": 1, "train.num_devices": 1,
                 "num_quality_samples": 64, "model.widths": "16,8", "model.latent_dim": 8,
                 "model.num_classes": 10, "baselines": "false"}
    cfg = config_lib.override(gan_digits.Config(), {k: str(v) for k, v in overrides.items()})
    workdir = str(tmp_path / "run")
    summary = gan_digits.train_and_evaluate(cfg, workdir)
    assert summary["steps"] == 2 and np.isfinite(summary["frechet"]) and np.isfinite(summary["kid"])
    assert len(summary["class_hist"]) == 10 and 0.0 <= summary["label_accuracy"] <= 1.0
    for name in ("config.json", "metrics.jsonl", "summary.json", "samples/samples_000002.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert [r["step"] for r in log.read_metrics(workdir, "train")] == [1, 2]
    assert np.isfinite(log.read_metrics(workdir, "eval")[0]["kid"])
    with pytest.raises(ConfigError, match="train.lr"):
        gan_digits.train_and_evaluate(config_lib.override(cfg, {"train.lr": "0.1"}), str(tmp_path / "bad"))

    out = tmp_path / "s.npy"
    res = subprocess.run([sys.executable, "-m", "genjax.sample", workdir, "--num", "5", "--labels", "3",
                          "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    samples = np.load(out)
    assert samples.shape == (5, 8, 8, 1) and samples.min() >= 0 and samples.max() <= 1
