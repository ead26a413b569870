"""GAN family: losses, spectral norm, R1, sampling, the two-player step built from genjax.train's pieces
(and so taking the shared train config: schedule, clipping, weight decay, accumulation, the finite guard),
checkpoints and the gan_digits experiment. The ring-of-Gaussians quality run is in test_ring.py."""

import dataclasses
import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import config as config_lib, train
from genjax.config import ConfigError
from genjax.data.ring import ring_data
from genjax.models import gan
from genjax.nn import spectral

# XLA:CPU compiles are the cost here (seconds each on 2 cores): the tests share one small conv config, a few
# MLP configs, and their states and compiled functions.
TINY = gan.Config(image_shape=(8, 8, 1), latent_dim=8, widths=(16, 8), num_classes=3, r1_weight=1.0, r1_every=2,
                  n_disc=2)
MLP = gan.Config(arch="mlp", data_dim=2, latent_dim=4, widths=(16, 16), num_classes=3)
# The train-config tests: conditional, spectrally normalized, lazy R1, two D updates, a faster D.
SHARED = gan.Config(arch="mlp", data_dim=2, latent_dim=4, widths=(16, 16), num_classes=3, r1_weight=1.0,
                    r1_every=2, n_disc=2, d_lr_scale=3.0)
TRAIN = train.TrainConfig(lr=2e-4, b1=0.5, ema_decay=0.999, ema_warmup=True)
# Plain one-D-update MLP (no spectral norm, no R1) for the update-bound and non-finite tests.
PLAIN = dataclasses.replace(SHARED, spectral_norm=False, r1_weight=0.0, n_disc=1)
PLAIN_TRAIN = train.TrainConfig(lr=1e-3, b1=0.5, ema_decay=0.9)

# Faster compiles, slower code: right for the few steps these tests run (not for the ring run).
QUICK = {"xla_backend_optimization_level": 0}
ADAM_EPS = 1e-8  # optax's default, which train.make_optimizer keeps


@functools.cache
def compiled_step(cfg, train_cfg=TRAIN):
    return jax.jit(gan.make_step(cfg, train_cfg), compiler_options=QUICK)


_init = jax.jit(gan.init, static_argnums=1, compiler_options=QUICK)  # one compile, not op-by-op dispatch


def init(key, cfg):
    """gan.init, compiled once per parameter layout (the training-only fields do not change it)."""
    layout = dataclasses.replace(cfg, loss="nonsat", r1_weight=0.0, r1_every=1, n_disc=1, d_lr_scale=1.0)
    return _init(key, layout)


def new_state(cfg, train_cfg=TRAIN, seed=0, dtype=None):
    k_init, k_state = jax.random.split(jax.random.key(seed))
    params = init(k_init, cfg)
    if dtype is not None:
        params = jax.tree.map(lambda a: a.astype(dtype), params)
    return gan.init_state(k_state, params, cfg, train_cfg)


@functools.cache
def fresh_state(cfg, train_cfg=TRAIN):
    return new_state(cfg, train_cfg)


def image_batch(n=8, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(size=(n, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, classes, n).astype(np.int32)}


def point_batch(n=8, seed=0, classes=3):
    x, y = ring_data(seed, n)
    return {"x": x, "label": (y % classes).astype(np.int32)}


def adam_count(opt_state) -> int:
    """Updates applied, from the Adam state inside a player's optimizer chain."""
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    (adam,) = [x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x)]
    return int(adam.count)


def leaves_moved(a, b):
    return jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.any(x != y)), a, b))


def max_abs_delta(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def delta_norm(a, b):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


def test_config_validation():
    for name, cfg in gan.SIZES.items():
        cfg.validate()
    bad = [dict(widths=(64, 32, 16, 8, 4)), dict(image_shape=(8, 8)), dict(n_disc=0), dict(num_classes=1),
           dict(d_lr_scale=0.0), dict(loss="wgan_gp", gp_weight=0.0), dict(r1_every=0), dict(r1_weight=-1.0),
           dict(widths=())]
    for change in bad:
        with pytest.raises(ConfigError, match="model\\."):
            dataclasses.replace(gan.Config(), **change).validate()
    # Literal choices are checked where configs are parsed (CLI, --config files, overrides)
    for key, value in (("loss", "lsgan"), ("norm", "batch"), ("arch", "resnet")):
        with pytest.raises(ConfigError, match="is not one of"):
            config_lib.override(gan.Config(), {key: value})
    dataclasses.replace(gan.Config(), image_shape=(28, 28, 1), widths=(32, 16, 8)).validate()  # 7x7 -> 28x28
    # the optimizer lives in the shared train config now
    assert not {"lr_g", "lr_d", "b1", "b2", "ema_decay"} & {f.name for f in dataclasses.fields(gan.Config)}


def test_step_updates_both_players_and_ema():
    cfg = TINY
    state = fresh_state(cfg)
    new, metrics = compiled_step(cfg)(state, image_batch())
    assert int(new.step) == 1 and float(metrics["nonfinite"]) == 0.0
    for name in ("d_loss", "g_loss", "d_real", "d_fake", "r1", "d_grad_norm", "g_grad_norm"):
        assert np.isfinite(float(metrics[name])), name
    for player in ("generator", "discriminator"):
        assert all(leaves_moved(new.params[player], state.params[player])), f"{player}: a leaf did not move"
    assert adam_count(new.opt_state["discriminator"]) == 2  # n_disc D updates
    assert adam_count(new.opt_state["generator"]) == 1
    # EMA of all params, warmed up: decay min(0.999, 1/10) after update 0
    expected = jax.tree.map(lambda e, p: 0.1 * e + 0.9 * p, state.ema_params, new.params)
    chex.assert_trees_all_close(new.ema_params, expected, rtol=1e-5, atol=1e-7)
    assert new.eval_params is new.ema_params
    chex.assert_trees_all_equal_structs(new, state)
    with pytest.raises(ConfigError, match="n_disc"):
        gan.make_step(cfg, TRAIN)(state, image_batch(n=7))
    with pytest.raises(ConfigError, match="grad_accum"):  # 2 D slices of 3 do not split in 2 microbatches
        gan.make_step(cfg, dataclasses.replace(TRAIN, grad_accum=2))(state, image_batch(n=6))


@functools.partial(jax.jit, static_argnums=(3,), compiler_options=QUICK)
def d_only_update(params, opt_state, batch, cfg):
    """One discriminator update through gan.d_loss, with plain Adam(1e-2); the generator is held fixed."""
    disc = params["discriminator"]
    _, u = gan.d_weights(disc, cfg, update=True)
    loss_fn = functools.partial(gan.d_loss, params=params, spectral_u=u, d_iter=jnp.int32(1), cfg=cfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(disc["params"], batch, jax.random.key(1))
    d_params, opt_state, _ = train.apply_gradients(optax.adam(1e-2), disc["params"], opt_state, grads, loss)
    return {**params, "discriminator": {"params": d_params, "spectral": u}}, opt_state, metrics


@pytest.mark.parametrize("loss", ["nonsat", "hinge", "wgan_gp"])
def test_discriminator_separates_real_from_fake(loss):
    cfg = dataclasses.replace(MLP, loss=loss)
    params = fresh_state(MLP).params  # the same layout for every loss
    opt_state = optax.adam(1e-2).init(params["discriminator"]["params"])
    x, y = ring_data(0, 64)
    batch = {"real": jnp.asarray(x), "label": jnp.asarray(y % 3)}
    first = None
    for _ in range(20):  # same reals, same fakes (fixed key, G untouched)
        params, opt_state, m = d_only_update(params, opt_state, batch, cfg)
        first = first or m
    assert float(m["d_real"] - m["d_fake"]) > float(first["d_real"] - first["d_fake"]) + 0.05
    assert float(m["d_real"]) > float(first["d_real"]) and float(m["d_fake"]) < float(first["d_fake"])
    assert float(m["d_loss"]) < float(first["d_loss"])
    if loss == "wgan_gp":
        assert float(m["gp"]) >= 0.0 and "gp" in first


def test_each_loss_differentiates_only_its_player():
    cfg = SHARED
    params = fresh_state(cfg).params
    batch = point_batch()
    real = {"real": jnp.asarray(batch["x"]), "label": jnp.asarray(batch["label"])}
    u = params["discriminator"]["spectral"]

    def d_loss_of_all(p):  # the generator's params reach d_loss only through `params`
        return gan.d_loss(p["discriminator"]["params"], real, jax.random.key(0), params=p, spectral_u=u,
                          d_iter=0, cfg=cfg)[0]

    grads = jax.jit(jax.grad(d_loss_of_all), compiler_options=QUICK)(params)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads["generator"]))
    assert all(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree.leaves(grads["discriminator"]["params"]))
    # The power-iteration vectors are state, not parameters: the optimizer never sees them.
    state = fresh_state(cfg)
    d_opt_leaves = jax.tree.leaves(state.opt_state["discriminator"])
    n_params = len(jax.tree.leaves(params["discriminator"]["params"]))
    assert len(d_opt_leaves) == 1 + 2 * n_params  # count, mu, nu


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
    # From a fresh u every estimate is a lower bound (||W u|| with unit u), rising to the top singular value.
    w = params["params"]["Conv_1"]["kernel"]
    top = np.linalg.svd(np.asarray(w, np.float64).reshape(-1, w.shape[-1]), compute_uv=False)[0]
    u0 = params["spectral"]["Conv_1"]["kernel"]
    estimates = [float(spectral.sigma(w, u0, n_iters=n)[0]) for n in (1, 5, 200)]
    assert estimates[0] <= estimates[1] + 1e-6 and max(estimates) <= top * (1 + 1e-5), (estimates, top)
    np.testing.assert_allclose(estimates[-1], top, rtol=1e-4)


@pytest.mark.parametrize("cfg", [MLP, dataclasses.replace(TINY, widths=(8, 4))], ids=["mlp", "dcgan"])
def test_r1_penalty_matches_float64_finite_differences(cfg):
    weights = gan.d_weights(fresh_state(cfg).params["discriminator"], cfg)[0]
    shape = gan.data_shape(cfg)
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    labels = np.array([0, 2, 1], np.int32)
    got = float(jax.jit(gan.r1_penalty, static_argnums=3, compiler_options=QUICK)(weights, x, labels, cfg))

    with jax.enable_x64(True):
        w64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), weights)
        x64 = jnp.asarray(x, jnp.float64)
        d = x64[0].size
        eps = 1e-5
        basis = jnp.eye(d, dtype=jnp.float64).reshape(d, *shape)

        def f(xx):
            return gan.d_apply(w64, xx, labels, cfg)  # (3,)

        central = jax.vmap(lambda e: (f(x64 + eps * e) - f(x64 - eps * e)) / (2 * eps))
        diffs = jax.jit(central, compiler_options=QUICK)(basis)  # (d, 3): d logit_i / d x_i[j]
        want = float(jnp.mean(jnp.sum(diffs**2, axis=0)))
    assert want > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-4)


@functools.partial(jax.jit, static_argnums=(3,), compiler_options=QUICK)
def d_loss_at(params, batch, d_iter, cfg):
    real = {"real": gan._to_model(batch, cfg), "label": batch["label"]}
    return gan.d_loss(params["discriminator"]["params"], real, jax.random.key(1), params=params,
                      spectral_u=params["discriminator"]["spectral"], d_iter=d_iter, cfg=cfg)


def test_lazy_r1_and_nonfinite_guard():
    cfg = TINY  # r1_every=2, r1_weight=1
    state = fresh_state(cfg)
    off_loss, off = d_loss_at(state.params, image_batch(), jnp.int32(3), cfg)
    on_loss, on = d_loss_at(state.params, image_batch(), jnp.int32(4), cfg)
    assert float(off["r1"]) == 0.0 and float(on["r1"]) > 0.0
    # lazy: the weight is scaled by r1_every on the updates that compute it
    np.testing.assert_allclose(on_loss - off_loss, 0.5 * 1.0 * 2 * on["r1"], rtol=1e-4)

    bad = image_batch()
    bad["image"][0, 0, 0, 0] = np.nan
    new, metrics = compiled_step(cfg)(state, bad)
    assert float(metrics["nonfinite"]) == 1.0 and int(new.step) == 1
    chex.assert_trees_all_equal((new.params, new.opt_state, new.ema_params),
                                (state.params, state.opt_state, state.ema_params))


def test_sample_shapes_range_and_labels():
    state = fresh_state(TINY)
    x = gan.sample(state.ema_params, jax.random.key(1), 5, TINY)
    chex.assert_shape(x, (5, 8, 8, 1))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    y = gan.sample(state.params, jax.random.key(1), 5, TINY)  # raw and EMA params: the same layout
    chex.assert_trees_all_close(x, y)
    # default labels cycle 0, 1, 2, ...; explicit labels are cycled too
    chex.assert_trees_all_close(x, gan.sample(state.params, jax.random.key(1), 5, TINY,
                                              gan.SampleOptions(labels=(0, 1, 2))))
    z = gan.sample(state.params, jax.random.key(1), 5, TINY, gan.SampleOptions(labels=(2,)))
    assert not np.allclose(x, z)
    chex.assert_trees_all_close(z[2], x[2])  # sample 2 had label 2 both times, the same z
    with pytest.raises(ConfigError, match="out of range"):
        gan.sample(state.params, jax.random.key(1), 5, TINY, gan.SampleOptions(labels=(3,)))
    uncond = dataclasses.replace(MLP, num_classes=0)
    with pytest.raises(ConfigError, match="unconditional"):
        gan.sample(new_state(uncond).params, jax.random.key(1), 5, uncond, gan.SampleOptions(labels=(1,)))
    chex.assert_shape(gan.sample(fresh_state(MLP).ema_params, jax.random.key(1), 7, MLP), (7, 2))


def test_truncation_bounds_the_latents():
    """truncation=0 is the plain N(0, I) draw; a tiny bound puts every latent near 0, so the unconditional
    generator's samples collapse onto G(0); a negative bound is refused."""
    cfg = dataclasses.replace(MLP, num_classes=0)
    params = new_state(cfg).params
    plain = gan.sample(params, jax.random.key(1), 64, cfg)
    chex.assert_trees_all_close(plain, gan.sample(params, jax.random.key(1), 64, cfg,
                                                  gan.SampleOptions(truncation=0.0)))
    tight = gan.sample(params, jax.random.key(1), 64, cfg, gan.SampleOptions(truncation=1e-3))
    assert float(jnp.std(tight, 0).max()) < 1e-2 * float(jnp.std(plain, 0).min())
    with pytest.raises(ConfigError, match="truncation"):
        gan.sample(params, jax.random.key(1), 4, cfg, gan.SampleOptions(truncation=-1.0))


def test_evaluate_returns_sums_with_count():
    state = fresh_state(TINY)
    evaluate = jax.jit(gan.evaluate, static_argnums=3, compiler_options=QUICK)
    out = evaluate(state.params, image_batch(n=6), jax.random.key(2), TINY)
    assert int(out["count"]) == 6 and 0 <= int(out["d_correct"]) <= 12
    assert np.isfinite(float(out["d_real"])) and np.isfinite(float(out["d_fake"]))
    # sums, not means: twice the batch, twice the real-logit sum
    twice = {k: np.concatenate([v, v]) for k, v in image_batch(n=6).items()}
    out2 = evaluate(state.params, twice, jax.random.key(2), TINY)
    np.testing.assert_allclose(out2["d_real"], 2 * out["d_real"], rtol=1e-5)
    assert int(out2["count"]) == 12


# ----------------------------------------------------------------------------- the shared train config
#
# The step's updates are genjax.train's: gradients of gan.d_loss / gan.g_loss, accumulated over
# train.grad_accum microbatches, through train.make_optimizer's optax chain (D's at lr * d_lr_scale),
# one finite guard over both players, the EMA. These tests rebuild that by hand.


def hand_optimizer(tc: train.TrainConfig, peak: float) -> optax.GradientTransformation:
    """What train.make_optimizer should be, written out: clip, Adam, decoupled weight decay, lr schedule."""
    warm, total = max(tc.warmup_steps, 1), max(tc.steps, tc.warmup_steps + 1)

    def lr(count):
        if tc.schedule == "constant":
            assert tc.warmup_steps == 0
            return peak
        t = jnp.asarray(count, jnp.float64)
        frac = jnp.clip((t - warm) / (total - warm), 0.0, 1.0)
        cosine = 0.1 * peak + 0.9 * peak * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return jnp.where(t < warm, peak * t / warm, cosine)

    parts = [optax.clip_by_global_norm(tc.grad_clip)] if tc.grad_clip else []
    parts += [optax.scale_by_adam(tc.b1, tc.b2, eps=ADAM_EPS), optax.add_decayed_weights(tc.weight_decay, train.decay_mask),
              optax.scale_by_learning_rate(lr)]
    return optax.chain(*parts)


@functools.partial(jax.jit, static_argnums=(2, 3), compiler_options=QUICK)
def hand_steps(state, batches, cfg, tc):
    """The two-player steps over `batches`, by hand: (params, ema) after them. Keys as the step draws them:
    (k_d, k_g) = split(fold_in(key, step)); D update i gets split(k_d, n_disc)[i], G's z is
    normal(fold_in(k_g, 0)); D update i of step s is R1's update s * n_disc + i."""
    tx_g, tx_d = hand_optimizer(tc, tc.lr), hand_optimizer(tc, tc.lr * cfg.d_lr_scale)
    params, ema = state.params, state.ema_params
    opt_g, opt_d = tx_g.init(params["generator"]), tx_d.init(params["discriminator"]["params"])
    for s, batch in enumerate(batches):
        k_d, k_g = jax.random.split(jax.random.fold_in(state.key, s))
        real, labels = jnp.asarray(batch["x"]), jnp.asarray(batch["label"])
        m = real.shape[0] // cfg.n_disc
        for i, k in enumerate(jax.random.split(k_d, cfg.n_disc)):
            disc = params["discriminator"]
            _, u = gan.d_weights(disc, cfg, update=True)
            chunk = {"real": real[i * m:(i + 1) * m], "label": labels[i * m:(i + 1) * m]}
            grads = jax.grad(lambda p: gan.d_loss(p, chunk, k, params=params, spectral_u=u,
                                                  d_iter=s * cfg.n_disc + i, cfg=cfg)[0])(disc["params"])
            updates, opt_d = tx_d.update(grads, opt_d, disc["params"])
            params = {**params, "discriminator": {"params": optax.apply_updates(disc["params"], updates),
                                                  "spectral": u}}
        d_fixed = gan.d_weights(params["discriminator"], cfg)[0]
        g_batch = {"z": jax.random.normal(jax.random.fold_in(k_g, 0), (m, cfg.latent_dim), jnp.float32),
                   "label": labels[:m]}
        grads = jax.grad(lambda p: gan.g_loss(p, g_batch, k_g, d_weights_fixed=d_fixed, cfg=cfg)[0])(
            params["generator"])
        updates, opt_g = tx_g.update(grads, opt_g, params["generator"])
        params = {**params, "generator": optax.apply_updates(params["generator"], updates)}
        decay = min(tc.ema_decay, (1 + s) / (10 + s)) if tc.ema_warmup else tc.ema_decay
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
    return params, ema


REFERENCE_CASES = {  # (model config, train config, steps)
    # two D updates per step at 3x the lr (lazy R1 on every other one), decoupled weight decay, and a clip
    # small enough that Adam's eps makes it matter (Adam alone is invariant to a gradient's scale)
    "ndisc2-clip-decay": (SHARED, train.TrainConfig(lr=1e-2, b1=0.5, weight_decay=0.1, grad_clip=1e-6,
                                                    ema_decay=0.9, ema_warmup=True), 2),
    # cosine schedule with warmup (lr 0, peak, then decaying) and weight decay; one D update per step
    "cosine-warmup-decay": (dataclasses.replace(SHARED, n_disc=1, r1_weight=0.0, d_lr_scale=0.5),
                            train.TrainConfig(lr=1e-2, schedule="cosine", warmup_steps=1, steps=4,
                                              weight_decay=0.5, b2=0.99, ema_decay=0.95), 3),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_step_is_train_pieces_by_hand(case):
    cfg, tc, steps = REFERENCE_CASES[case]
    batches = [point_batch(8, seed=s) for s in range(steps)]
    with jax.enable_x64(True):  # float64: Adam's g / (|g| + eps) would amplify float32 rounding
        state = new_state(cfg, tc, dtype=jnp.float64)
        step = compiled_step(cfg, tc)
        got = state
        for batch in batches:
            got, metrics = step(got, batch)
            assert float(metrics["nonfinite"]) == 0.0
        params, ema = hand_steps(state, batches, cfg, tc)
        # float64 throughout, but optax evaluates the lr schedule in float32
        chex.assert_trees_all_close(got.params, params, rtol=1e-6, atol=1e-8)
        chex.assert_trees_all_close(got.ema_params, ema, rtol=1e-6, atol=1e-7)  # the EMA decay is a float32
        assert adam_count(got.opt_state["generator"]) == len(batches)
        assert adam_count(got.opt_state["discriminator"]) == len(batches) * cfg.n_disc
        if tc.grad_clip:  # the clip binds
            assert min(float(metrics["d_grad_norm"]), float(metrics["g_grad_norm"])) > 10 * tc.grad_clip


def test_grad_accum_equals_one_microbatch():
    """grad_accum=2 splits each D slice (batch / n_disc) and the G batch into 2 microbatches: same step."""
    # n_disc=2, R1 every 2nd D update, spectral norm, conditional; clip and weight decay (and the step of
    # test_step_is_train_pieces_by_hand, compiled once)
    cfg, tc1, _ = REFERENCE_CASES["ndisc2-clip-decay"]
    tc2 = dataclasses.replace(tc1, grad_accum=2)
    batch = point_batch(8)
    with jax.enable_x64(True):
        state = new_state(cfg, tc1, dtype=jnp.float64)
        # Each microbatch draws its own noise (its own key), so make the fakes independent of z: zero the
        # generator's first-layer rows that read z (the rest read the class embedding). G's own batch of z is
        # drawn once per step, outside the microbatches. (One step: G's update makes those rows nonzero.)
        g = state.params["generator"]
        kernel = g["Dense_0"]["kernel"].at[:cfg.latent_dim].set(0.0)
        state = state.replace(params={**state.params, "generator": {**g, "Dense_0": {**g["Dense_0"],
                                                                                     "kernel": kernel}}})
        state = state.replace(ema_params=state.params)
        results = []
        for tc in (tc1, tc2):
            results.append(compiled_step(cfg, tc)(state, batch))
        (s1, m1), (s2, m2) = results
        assert float(m1["r1"]) > 0.0 and float(m1["nonfinite"]) == 0.0
        # params, optimizer states, EMA; and the metrics, whose grad norms show a sum instead of a mean (which
        # the tiny clip would hide from the updates)
        chex.assert_trees_all_close((s1.params, s1.opt_state, s1.ema_params),
                                    (s2.params, s2.opt_state, s2.ema_params), rtol=1e-9, atol=1e-12)
        chex.assert_trees_all_close(m1, m2, rtol=1e-6)  # (r1 comes out of a lax.cond as a float32)
        d_before, d_after = state.params["discriminator"]["params"], s2.params["discriminator"]["params"]
        assert all(leaves_moved(d_after, d_before))


def test_d_learning_rate_scale_and_tiny_clip_bound_each_update():
    cfg, free = PLAIN, PLAIN_TRAIN  # d_lr_scale=3
    clipped = dataclasses.replace(free, grad_clip=1e-10)
    lrs = {"generator": free.lr, "discriminator": free.lr * cfg.d_lr_scale}

    def trained(params):  # each player's optimized params
        return {"generator": params["generator"], "discriminator": params["discriminator"]["params"]}

    state = new_state(cfg, free)
    batch = point_batch()
    new, metrics = compiled_step(cfg, free)(state, batch)
    before, after = trained(state.params), trained(new.params)
    # Adam's first update is lr * g / (|g| + eps) per element: at most lr, and ~lr for the largest gradients.
    # So D's largest step shows its lr: train.lr * d_lr_scale.
    for player, lr in lrs.items():
        np.testing.assert_allclose(max_abs_delta(after[player], before[player]), lr, rtol=2e-3, err_msg=player)

    # the same init, with a clip state in the optimizer's
    new_c, metrics_c = compiled_step(cfg, clipped)(new_state(cfg, clipped), batch)
    assert float(metrics_c["nonfinite"]) == 0.0
    after_c = trained(new_c.params)
    # clip_by_global_norm(c) leaves a gradient of norm <= c, so each Adam update has norm <= lr * c / eps
    # (plus float32 rounding of the parameters).
    for player, lr in lrs.items():
        assert float(metrics_c[f"{player[0]}_grad_norm"]) > 1e3 * clipped.grad_clip  # the clip binds
        moved = delta_norm(after_c[player], before[player])
        assert 0.0 < moved <= lr * clipped.grad_clip / ADAM_EPS * 1.01 + 2e-6, player
        assert moved < 0.1 * delta_norm(after[player], before[player]), player


def _poison_second_moment(state, player, table):
    """NaN in row 2 of `table`'s embedding in `player`'s Adam second moment: that player's update of that
    row is NaN, while the losses and gradients (no example of class 2) stay finite."""
    adam = state.opt_state[player][0]
    nu = {**adam.nu, table: {"embedding": adam.nu[table]["embedding"].at[2].set(jnp.nan)}}
    opt = (adam._replace(nu=nu), *state.opt_state[player][1:])
    return state.replace(opt_state={**state.opt_state, player: opt})


@pytest.mark.parametrize("player,table", [("generator", "class_embed"), ("discriminator", "class_proj")])
def test_nonfinite_update_of_either_player_keeps_the_whole_state(player, table):
    # no spectral norm, so a NaN row of D stays in its row (and out of the G update's logits)
    cfg, tc = PLAIN, PLAIN_TRAIN
    batch = {**point_batch(), "label": np.arange(8, dtype=np.int32) % 2}  # classes 0 and 1 only
    step = compiled_step(cfg, tc)
    clean = new_state(cfg, tc)
    moved, metrics = step(clean, batch)
    assert float(metrics["nonfinite"]) == 0.0
    for name in ("generator", "discriminator"):
        assert any(leaves_moved(moved.params[name], clean.params[name])), name

    state = _poison_second_moment(clean, player, table)
    new, metrics = step(state, batch)
    assert float(metrics["nonfinite"]) == 1.0 and int(new.step) == 1
    # only an updated parameter was not finite
    for name in ("d_loss", "g_loss", "d_grad_norm", "g_grad_norm"):
        assert np.isfinite(float(metrics[name])), name
    # both players' updates are dropped, the finite one too; the EMA and optimizer states are kept
    chex.assert_trees_all_equal((new.params, new.opt_state, new.ema_params),
                                (state.params, state.opt_state, state.ema_params))


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


def _files(root):
    paths = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    return {p: os.path.getmtime(p) for p in paths}


def test_gan_digits_experiment_and_sample_cli(tmp_path, device1, capsys):
    from genjax import log
    from genjax import sample as sample_cli
    from experiments import gan_digits

    # The shared train config applies to the GAN: schedule, clipping, weight decay.
    overrides = {"train.steps": 2, "train.batch_size": 16, "train.log_every": 1, "train.eval_every": 2,
                 "train.sample_every": 2, "train.ckpt_every": 1, "train.num_devices": 1,
                 "train.schedule": "cosine", "train.warmup_steps": 1, "train.grad_clip": 1.0,
                 "train.weight_decay": 0.01,
                 "num_quality_samples": 64, "model.widths": "16,8", "model.latent_dim": 8,
                 "model.num_classes": 10, "baselines": "false"}
    cfg = config_lib.override(gan_digits.Config(), {k: str(v) for k, v in overrides.items()})
    workdir = str(tmp_path / "run")
    summary = gan_digits.train_and_evaluate(cfg, workdir)
    assert summary["steps"] == 2 and np.isfinite(summary["frechet"]) and np.isfinite(summary["kid"])
    assert len(summary["class_hist"]) == 10 and 0.0 <= summary["label_accuracy"] <= 1.0
    for name in ("config.json", "metrics.jsonl", "summary.json", "samples/samples_000002.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    rows = log.read_metrics(workdir, "train")
    assert [r["step"] for r in rows] == [1, 2] and all(r["nonfinite"] == 0 for r in rows)
    assert np.isfinite(log.read_metrics(workdir, "eval")[0]["kid"])
    # resuming with another optimizer setting is refused, naming it, before anything is written
    before = _files(workdir)
    with pytest.raises(ConfigError, match="train.lr"):
        gan_digits.train_and_evaluate(config_lib.override(cfg, {"train.lr": "0.1"}), workdir)
    with pytest.raises(ConfigError, match="model.d_lr_scale"):
        gan_digits.train_and_evaluate(config_lib.override(cfg, {"model.d_lr_scale": "1.0"}), workdir)
    assert _files(workdir) == before

    # the sample CLI: EMA weights, labels cycled, the run's generator
    out = tmp_path / "s.npy"
    assert sample_cli.main([workdir, "--num", "5", "--labels", "3", "--out", str(out)]) == 0
    samples = np.load(out)
    assert samples.shape == (5, 8, 8, 1) and samples.min() >= 0 and samples.max() <= 1
    _, model_cfg, params, _ = sample_cli.load_run(workdir)
    key = jax.random.fold_in(jax.random.key(0), 0)  # --seed 0, batch 0
    want = gan.sample(params, key, 5, model_cfg, gan.SampleOptions(labels=(3,)))
    np.testing.assert_allclose(samples, np.asarray(want), atol=1e-6)
    out4 = tmp_path / "s4.npy"
    assert sample_cli.main([workdir, "--num", "5", "--labels", "4", "--out", str(out4)]) == 0
    assert not np.allclose(np.load(out4), samples)
    capsys.readouterr()
    assert sample_cli.main([workdir, "--num", "5", "--labels", "10", "--out", str(out)]) == 2
    assert "out of range" in capsys.readouterr().err
