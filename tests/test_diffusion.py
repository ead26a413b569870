"""Diffusion: schedules and posteriors against float64 references, samplers against closed-form optimal
denoisers for Gaussian data (exact moments, no Monte Carlo), the variational bound against analytic
values, the U-Net at every named size, and a train step / sampling / bound through the network."""

import dataclasses
import functools
import math

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import diffusion_digits
from genjax import checkpoint, log, sample as sample_cli
from genjax.config import ConfigError
from genjax.models import cycle_labels, diffusion as dm
from tests.test_workdir import tiny_config, tiny_run

# ----------------------------------------------------------------------------- Gaussian data

D = 3
MU = np.array([0.3, -0.2, 0.1])
_A = np.random.default_rng(0).normal(size=(D, D))
SIGMA = _A @ _A.T * 0.1 + np.diag([0.02, 0.1, 0.3])  # eigenvalues ~0.05, 0.14, 0.62


def ref_alpha_bar(t, schedule):
    """alpha^2(t) in float64, written from the papers' formulas (independent of the module)."""
    t = np.asarray(t, np.float64)
    if schedule == "linear":
        return np.exp(-(0.1 * t + 0.5 * (20.0 - 0.1) * t**2))
    s = 0.008
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    return np.maximum(f(t) / f(0.0), 1.0 / (1.0 + np.exp(20.0)))  # log-SNR clipped at -20


def optimal_model_fn(cfg, mu=MU, sigma=SIGMA, shift=0.0):
    """E[x0 | x_t] for x0 ~ N(mu, sigma), returned in cfg.prediction form. `shift` evaluates the
    denoiser at t + shift: a model whose noise level is off by `shift` (for the off-by-one checks)."""
    w, u = np.linalg.eigh(sigma)
    mu_, u_, w_ = (jnp.asarray(a, jnp.float32) for a in (mu, u, w))

    def fn(x, t):
        a, s = dm.alpha_sigma(jnp.clip(t + shift, 0.0, 1.0), cfg)
        a, s = a[:, None], s[:, None]
        x0 = mu_ + (((x - a * mu_) @ u_) * (a * w_ / (a * a * w_ + s * s))) @ u_.T
        a, s = dm.alpha_sigma(t, cfg)
        eps = (x - a[:, None] * x0) / s[:, None]
        return dm.from_x0_eps(x0, eps, a, s, cfg.prediction)

    return fn


def sampler_moments(cfg, sampler, steps, eta=0.0, shift=0.0, spacing=None):
    """Exact mean and covariance of a sampler's output for the optimal Gaussian denoiser.

    With that denoiser every step is affine in the state and the injected noise, so the output is
    b + A x_T + sum_k B_k z_k: one batch with x_T = 0, the unit vectors, and each unit noise vector
    alone gives b, A and the B_k, hence mean b and covariance A A^T + sum B_k B_k^T.
    """
    stochastic = sampler == "ddpm" or eta > 0
    n = 1 + D + (steps * D if stochastic else 0)
    x_T = np.zeros((n, D), np.float32)
    x_T[1:1 + D] = np.eye(D)
    noises = None
    if stochastic:
        noises = np.zeros((steps, n, D), np.float32)
        rows = 1 + D + np.arange(steps * D)
        noises[np.repeat(np.arange(steps), D), rows, np.tile(np.arange(D), steps)] = 1.0
    run = jax.jit(lambda x, z: dm.run_sampler(optimal_model_fn(cfg, shift=shift), x, jax.random.key(0), cfg,
                                              sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                                              noises=z))
    out = np.asarray(run(jnp.asarray(x_T), None if noises is None else jnp.asarray(noises)), np.float64)
    cols = out[1:] - out[0]
    return out[0], cols.T @ cols


def reference_moments(schedule, T, sampler):
    """float64 moment propagation of DDPM's ancestral chain (Ho et al. eq. 6-7, in beta / alpha_bar
    notation) or DDIM eta=0 (Song et al. eq. 12) over all T levels, with the optimal denoiser."""
    ab = ref_alpha_bar(np.arange(T + 1) / T, schedule)
    beta = 1.0 - ab[1:] / ab[:-1]
    mean, cov = np.zeros(D), np.eye(D)
    for i in range(T, 0, -1):
        a = np.sqrt(ab[i])
        K = a * SIGMA @ np.linalg.inv(ab[i] * SIGMA + (1 - ab[i]) * np.eye(D))  # x0_hat = MU + K (x - a MU)
        if sampler == "ddpm":
            c_x0 = np.sqrt(ab[i - 1]) * beta[i - 1] / (1 - ab[i])
            c_xt = np.sqrt(1 - beta[i - 1]) * (1 - ab[i - 1]) / (1 - ab[i])
            var = (1 - ab[i - 1]) / (1 - ab[i]) * beta[i - 1]
            M, m = c_x0 * K + c_xt * np.eye(D), c_x0 * (MU - a * K @ MU)
        else:  # x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s) (x - a x0_hat) / sqrt(1 - ab_t)
            r = np.sqrt((1 - ab[i - 1]) / (1 - ab[i]))
            c = np.sqrt(ab[i - 1]) - r * a
            M, m, var = c * K + r * np.eye(D), c * (MU - a * K @ MU), 0.0
        mean, cov = M @ mean + m, M @ cov @ M.T + var * np.eye(D)
    return mean, cov


# ----------------------------------------------------------------------------- config and schedule


def test_config_validation_and_named_sizes():
    for cfg in dm.SIZES.values():
        cfg.validate()
    dm.Config(timesteps=0).validate()
    bad = [dict(image_shape=(8, 8)), dict(num_classes=-1), dict(timesteps=1), dict(cond_drop_prob=1.0),
           dict(num_groups=5), dict(attn_resolutions=(3,)), dict(channel_mults=()), dict(dropout=1.0),
           dict(min_snr_gamma=0.0)]
    for overrides in bad:
        with pytest.raises(ConfigError, match="model\\."):
            dataclasses.replace(dm.Config(), **overrides).validate()
    with pytest.raises(ConfigError, match="sides \\(32, 16, 8, 4\\)"):  # 28x28 pads to 32 with 4 levels
        dataclasses.replace(dm.SIZES["mnist"], channel_mults=(1, 2, 2, 2), attn_resolutions=(14,)).validate()
    c = dm.SIZES["cifar10"]
    assert (c.channels, c.channel_mults, c.num_res_blocks, c.attn_resolutions, c.dropout, c.schedule) == (
        128, (1, 2, 2, 2), 2, (16,), 0.1, "linear")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_against_float64_reference(schedule):
    cfg = dm.Config(schedule=schedule)
    t = np.linspace(0.0, 1.0, 1001)
    alpha, sigma = dm.alpha_sigma(jnp.asarray(t, jnp.float32), cfg)
    ab = ref_alpha_bar(t, schedule)
    np.testing.assert_allclose(np.asarray(alpha) ** 2, ab, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(sigma) ** 2, 1 - ab, rtol=2e-4, atol=1e-7)
    assert float(alpha[0]) == 1.0 and float(sigma[0]) == 0.0
    # host float64 tables
    tab = dm.discrete_schedule(cfg, 1000)
    np.testing.assert_allclose(tab["alpha_bar"], ab, rtol=1e-12)
    np.testing.assert_allclose(tab["beta"][1:], 1 - ab[1:] / ab[:-1], rtol=1e-9)
    if schedule == "linear":  # the continuous limit of DDPM's betas linspace(1e-4, 0.02, 1000)
        ddpm = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
        np.testing.assert_allclose(tab["alpha_bar"][1:], ddpm, rtol=0.1)
    # log-SNR inverse
    lam = dm.log_snr(np.linspace(0.01, 0.99, 50), schedule, np)
    np.testing.assert_allclose(dm.t_of_log_snr(lam, schedule), np.linspace(0.01, 0.99, 50), atol=1e-9)


def test_q_sample_moments_match_schedule():
    cfg = dm.Config(schedule="linear")
    x0 = jnp.array([0.7, -0.4])
    n = 200_000
    draw = jax.jit(lambda t, key: dm.q_sample(jnp.broadcast_to(x0, (n, 2)), jnp.full((n,), t), jax.random.normal(
        key, (n, 2)), cfg))
    for t in (0.05, 0.5, 0.95):
        xt = np.asarray(draw(t, jax.random.fold_in(jax.random.key(0), int(t * 100))), np.float64)
        ab = ref_alpha_bar(t, "linear")
        se = np.sqrt((1 - ab) / n)
        np.testing.assert_allclose(xt.mean(0), np.sqrt(ab) * np.asarray(x0), atol=5 * se)
        np.testing.assert_allclose(xt.var(0), 1 - ab, rtol=5 * np.sqrt(2 / n))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_against_ddpm_float64(schedule):
    T = 1000
    cfg = dm.Config(schedule=schedule, timesteps=T)
    i = np.array([1, 2, 3, 10, 100, 500, 999, 1000])
    ab = ref_alpha_bar(np.arange(T + 1) / T, schedule)
    beta = 1 - ab[i] / ab[i - 1]
    x0, xt = np.linspace(-1, 1, len(i)), np.linspace(0.5, -2, len(i))
    mean_ref = (np.sqrt(ab[i - 1]) * beta / (1 - ab[i])) * x0 + (np.sqrt(1 - beta) * (1 - ab[i - 1]) / (1 - ab[i])) * xt
    var_ref = (1 - ab[i - 1]) / (1 - ab[i]) * beta
    mean, var = dm.posterior(jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32),
                             jnp.asarray(i / T, jnp.float32), jnp.asarray((i - 1) / T, jnp.float32), cfg)
    np.testing.assert_allclose(mean, mean_ref, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(var, var_ref, rtol=2e-3, atol=1e-12)
    assert float(var[0]) == 0.0 and np.allclose(mean[0], x0[0])  # s = 0: the data itself


def test_parameterizations_and_min_snr_weights():
    x0, eps = np.random.default_rng(0).normal(size=(2, 4, 5))
    t = np.linspace(0.05, 0.95, 4)
    for schedule in ("linear", "cosine"):
        alpha, sigma = dm.alpha_sigma(t, dm.Config(schedule=schedule), np)
        xt = alpha[:, None] * x0 + sigma[:, None] * eps
        for pred in ("eps", "x0", "v"):
            out = dm.from_x0_eps(x0, eps, alpha, sigma, pred)
            x0_hat, eps_hat = dm.to_x0_eps(out, xt, alpha, sigma, pred)
            np.testing.assert_allclose(x0_hat, x0, atol=1e-5)
            np.testing.assert_allclose(eps_hat, eps, atol=1e-5)
    # min-SNR: the implied weight on ||x0 - x0_hat||^2 is min(SNR, gamma) for every parameterization
    lam = np.linspace(-6.0, 6.0, 13)
    alpha, sigma = dm.alpha_sigma_from_log_snr(lam, np)
    # a unit error in x0_hat is an output error of alpha/sigma (eps), 1 (x0), 1/sigma (v)
    out_err = {"eps": alpha / sigma, "x0": np.ones_like(lam), "v": 1.0 / sigma}
    for pred, err in out_err.items():
        cfg = dm.Config(prediction=pred, loss_weighting="min_snr", min_snr_gamma=5.0)
        np.testing.assert_allclose(dm.loss_weight(lam, cfg) * err**2, np.minimum(np.exp(lam), 5.0), rtol=1e-5)
        np.testing.assert_allclose(dm.loss_weight(lam, dataclasses.replace(cfg, loss_weighting="none")), 1.0)


def test_time_grid():
    cfg = dm.Config(timesteps=1000)
    full = dm.time_grid(cfg, 1000, "time")
    np.testing.assert_allclose(full, np.arange(1000, -1, -1) / 1000, atol=1e-15)
    for spacing in dm.SPACINGS:
        ts = dm.time_grid(cfg, 20, spacing)
        assert ts[0] == 1.0 and ts[-2] == 1e-3 and ts[-1] == 0.0 and len(ts) == 21
        assert np.all(np.diff(ts) < 0)
    assert np.all(np.round(dm.time_grid(cfg, 37, "time") * 1000) == dm.time_grid(cfg, 37, "time") * 1000)
    with pytest.raises(ValueError, match="exceeds"):
        dm.time_grid(dm.Config(timesteps=10), 11)
    with pytest.raises(ValueError, match="spacing"):
        dm.time_grid(cfg, 5, "quadratic")


# ----------------------------------------------------------------------------- samplers, exact moments


@pytest.mark.parametrize("schedule,sampler", [("cosine", "ddpm"), ("linear", "ddim")])
def test_full_chain_samplers_match_float64_reference(schedule, sampler):
    """steps = T: DDPM's ancestral chain and DDIM (eta=0) against float64 moment propagation written
    in the papers' notation. A denoiser one level off (t + 1/T) misses by far more than the tolerance."""
    cfg = dm.Config(schedule=schedule, timesteps=1000, prediction="x0")
    ref_mean, ref_cov = reference_moments(schedule, 1000, sampler)
    mean, cov = sampler_moments(cfg, sampler, 1000)
    np.testing.assert_allclose(mean, ref_mean, atol=2e-5)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-4)
    # and both reproduce the data up to DDPM/DDIM's own O(1/T) error
    np.testing.assert_allclose(mean, MU, atol=1e-3)
    np.testing.assert_allclose(cov, SIGMA, atol=1e-2)
    _, off_cov = sampler_moments(cfg, sampler, 1000, shift=1e-3)
    assert np.abs(off_cov - ref_cov).max() > 30 * 1e-4


def test_dpm_solver_reproduces_data_and_catches_off_by_one():
    cfg = dm.Config(schedule="cosine", timesteps=1000, prediction="eps")
    mean, cov = sampler_moments(cfg, "dpm++2m", 1000, spacing="time")  # second order: tiny error
    np.testing.assert_allclose(mean, MU, atol=1e-4)
    np.testing.assert_allclose(cov, SIGMA, atol=3e-4)
    _, off_cov = sampler_moments(cfg, "dpm++2m", 1000, spacing="time", shift=1e-3)
    assert np.abs(off_cov - SIGMA).max() > 10 * 3e-4


def test_ddim_eta1_is_ddpm_and_eta0_is_deterministic():
    cfg = dm.Config(schedule="linear", timesteps=1000, prediction="v")
    m1, c1 = sampler_moments(cfg, "ddpm", 50)
    m2, c2 = sampler_moments(cfg, "ddim", 50, eta=1.0)
    np.testing.assert_allclose(m1, m2, atol=1e-5)
    np.testing.assert_allclose(c1, c2, atol=1e-5)
    fn = optimal_model_fn(cfg)
    x_T = jax.random.normal(jax.random.key(0), (64, D))
    run = jax.jit(lambda k, eta: dm.run_sampler(fn, x_T, k, cfg, sampler="ddim", steps=20, eta=eta),
                  static_argnums=1)
    a, b = run(jax.random.key(1), 0.0), run(jax.random.key(2), 0.0)
    np.testing.assert_array_equal(a, b)
    c, d = run(jax.random.key(1), 1.0), run(jax.random.key(2), 1.0)
    assert float(jnp.abs(c - d).max()) > 0.1


def test_dpm_solver_20_steps_close_to_ddim_1000_on_the_same_noise():
    cfg = dm.Config(schedule="linear", timesteps=1000, prediction="eps")
    fn = optimal_model_fn(cfg)
    x_T = jax.random.normal(jax.random.key(0), (512, D))
    run = lambda sampler, steps: np.asarray(jax.jit(  # noqa: E731
        lambda x: dm.run_sampler(fn, x, jax.random.key(1), cfg, sampler=sampler, steps=steps))(x_T))
    ref = run("ddim", 1000)
    scale = np.sqrt(np.diag(SIGMA))
    err_dpm = np.sqrt(np.mean((run("dpm++2m", 20) - ref) ** 2, 0)) / scale
    err_ddim = np.sqrt(np.mean((run("ddim", 20) - ref) ** 2, 0)) / scale
    assert err_dpm.max() < 0.03, err_dpm  # ~1.5% of the data's scale per sample
    assert err_dpm.max() < err_ddim.min() / 3, (err_dpm, err_ddim)


def test_parameterizations_give_the_same_samples():
    x_T = jax.random.normal(jax.random.key(0), (16, D))
    outs = []
    for pred in ("eps", "x0", "v"):
        cfg = dm.Config(schedule="cosine", prediction=pred)
        outs.append(jax.jit(lambda x: dm.run_sampler(optimal_model_fn(cfg), x, jax.random.key(1), cfg,
                                                     steps=10))(x_T))
    np.testing.assert_allclose(outs[0], outs[1], atol=2e-4)
    np.testing.assert_allclose(outs[0], outs[2], atol=2e-4)


def test_guidance_combination():
    model = lambda x, t, labels: x * (labels[:, None] + 1.0)  # noqa: E731  "conditional" output
    x, t, labels = jnp.ones((4, 2)), jnp.ones((4,)), jnp.array([0, 1, 2, 3])
    null = 10
    cond, uncond = model(x, t, labels), model(x, t, jnp.full((4,), null))
    np.testing.assert_allclose(dm.guided_model_fn(model, labels, null, 0.0)(x, t), cond)  # w=0: no guidance
    np.testing.assert_allclose(dm.guided_model_fn(model, labels, null, -1.0)(x, t), uncond)  # w=-1: unconditional
    np.testing.assert_allclose(dm.guided_model_fn(model, labels, null, 2.0)(x, t), cond + 2 * (cond - uncond))


# ----------------------------------------------------------------------------- likelihood


def test_discretized_gaussian_is_normalized():
    grid = jnp.arange(256) / 255.0 * 2 - 1
    loglik = jax.jit(dm.discretized_gaussian_log_likelihood)
    for mean, scale in ((0.0, 0.01), (0.3, 0.2), (-0.999, 0.004), (0.9, 3.0)):
        np.testing.assert_allclose(np.exp(np.asarray(loglik(grid, mean, scale), np.float64)).sum(), 1.0, rtol=1e-4)
    # a bin far in the tail stays finite (no log(0))
    assert np.all(np.isfinite(np.asarray(loglik(grid, 0.0, 0.001))))


def _gaussian_data(n):
    mu, sigma = MU * 0.5, SIGMA * 0.05  # well inside [-1, 1]
    x = np.random.default_rng(1).multivariate_normal(mu, sigma, size=n)
    return mu, sigma, jnp.asarray(np.clip(np.round((x + 1) / 2 * 255) / 255 * 2 - 1, -1, 1), jnp.float32)


def test_bound_for_gaussian_data_with_the_optimal_denoiser():
    """Discrete bound: its diffusion term equals the analytic sum over levels of
    (SNR(s) - SNR(t)) / 2 E||x0 - x0_hat||^2; continuous bound: close to the true NLL (it is tight for
    the optimal denoiser), and never below it."""
    n = 50_000
    mu, sigma, x0 = _gaussian_data(n)
    w = np.linalg.eigvalsh(sigma)
    x0_fn = lambda cfg: (lambda x, t: dm.to_x0_eps(optimal_model_fn(cfg, mu, sigma)(x, t), x,  # noqa: E731
                                                   *dm.alpha_sigma(t, cfg), cfg.prediction)[0])
    to_bits = 1 / (D * math.log(2))
    # discrete, T = 100 (linear)
    cfg = dm.Config(schedule="linear", timesteps=100, prediction="x0")
    terms = jax.jit(lambda x, k: dm.vlb_terms(x0_fn(cfg), x, k, cfg))(x0, jax.random.key(0))
    snr = np.exp(dm.log_snr_safe(np.arange(101) / 100, "linear", np))
    expected = sum(0.5 * (snr[i - 1] - snr[i]) * np.sum(w / (1 + snr[i] * w)) for i in range(2, 101))
    diff = np.asarray(terms["diffusion"], np.float64)
    assert abs(diff.mean() - expected) < 4 * diff.std() / np.sqrt(n) + 1e-3 * expected, (diff.mean(), expected)
    # continuous: total vs the true NLL of the 8-bit data, -log N(x; mu, sigma) - D log(2/255)
    cfg = dm.Config(schedule="cosine", timesteps=0, prediction="x0")
    terms = jax.jit(lambda x, k: dm.vlb_terms(x0_fn(cfg), x, k, cfg))(x0, jax.random.key(1))
    total = np.asarray(sum(terms.values()), np.float64)
    nll = 0.5 * (D * np.log(2 * np.pi * np.e) + np.log(np.linalg.det(sigma))) + D * np.log(255 / 2)
    se = total.std() / np.sqrt(n)
    assert -4 * se < total.mean() - nll < 4 * se + 0.02 * D, (total.mean() * to_bits, nll * to_bits)


# ----------------------------------------------------------------------------- the U-Net


def _n_params(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,shape", [("digits", (8, 8, 1)), ("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_unet_shapes_for_named_sizes(name, shape):
    cfg = dataclasses.replace(dm.SIZES[name], num_classes=10)
    params = jax.eval_shape(functools.partial(dm.init, cfg=cfg), jax.random.key(0))
    out = jax.eval_shape(lambda p, x, t, l: dm.apply(p, x, t, l, cfg), params,
                         jax.ShapeDtypeStruct((2, *shape), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.float32),
                         jax.ShapeDtypeStruct((2,), jnp.int32))
    chex.assert_shape(out, (2, *shape))
    assert out.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    if name == "cifar10":  # DDPM's CIFAR-10 model: 35.7M parameters, plus here an 11 x 512 class embedding
        n = _n_params(params) - 11 * 512
        assert abs(n - 35.7e6) < 0.1e6, n


def test_unet_pads_odd_sizes_and_computes_in_bfloat16():
    cfg = dataclasses.replace(dm.SIZES["mnist"], channel_mults=(1, 2, 2, 2), attn_resolutions=(16,),
                              dtype="bfloat16", channels=32)
    cfg.validate()
    params = jax.eval_shape(functools.partial(dm.init, cfg=cfg), jax.random.key(0))
    out = jax.eval_shape(lambda p, x: dm.apply(p, x, jnp.ones((3,)), None, cfg), params,
                         jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32))
    chex.assert_shape(out, (3, 28, 28, 1))
    assert out.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- sampling arguments


def test_sample_argument_errors_before_tracing():
    """Options a model cannot use are refused before anything runs (params=None is never touched)."""
    cfg, key = dm.Config(num_classes=10), jax.random.key(0)
    for options, match in ((dm.SampleOptions(sampler="euler"), "sampler"),
                           (dm.SampleOptions(labels=(11,)), "labels \\[11\\] are out of range: use 0..10"),
                           (dm.SampleOptions(labels=(-1,)), "out of range"),
                           (dm.SampleOptions(steps=2000), "exceeds"), (dm.SampleOptions(steps=0), "steps=0"),
                           (dm.SampleOptions(spacing="cubic"), "spacing"), (dm.SampleOptions(eta=1.5), "eta")):
        with pytest.raises(ValueError, match=match):
            dm.sample(None, key, 2, cfg, options)
    uncond = dm.Config()
    with pytest.raises(ConfigError, match="guidance"):
        dm.sample(None, key, 2, uncond, dm.SampleOptions(guidance=1.0))
    with pytest.raises(ConfigError, match="unconditional"):
        dm.sample(None, key, 2, uncond, dm.SampleOptions(labels=(1,)))
    np.testing.assert_array_equal(cycle_labels((3, 4), 5, 10), [3, 4, 3, 4, 3])
    np.testing.assert_array_equal(cycle_labels((), 12, 10), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    assert cycle_labels((1,), 3, 0) is None  # unconditional: no labels


# ----------------------------------------------------------------------------- the experiment


def test_experiment_one_step_on_8_devices_and_the_sample_cli(tmp_path, tmp_path_factory, devices8, capsys):
    """The whole experiment, conditional, on 8 simulated devices: train steps through make_step with EMA,
    the bound, guided and unguided samples, grids, the sample CLI, and guidance through the network.
    (The run is tests/test_workdir.py's shared tiny diffusion run, which test_sample_cli reads too.)"""
    workdir, summary = tiny_run("diffusion", tmp_path_factory)
    cfg = tiny_config("diffusion", tmp_path_factory)
    assert summary["steps"] == 2 and summary["devices"] == 8
    for key in ("test_bits_per_dim", "test_bits_per_dim_cond", "frechet", "frechet_gmm_baseline", "label_accuracy"):
        assert np.isfinite(summary[key]), key
    assert 0 < summary["test_bits_per_dim"] < 100
    for name in ("config.json", "metrics.jsonl", "summary.json", "samples/samples_000002.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    rows = log.read_metrics(workdir, "train")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and 0 < r["loss"] < 10 and r["nonfinite"] == 0 for r in rows)
    assert log.read_metrics(workdir, "eval")[0]["bits_per_dim"] > 0
    # make_step's EMA, read back from the step-1 and step-2 checkpoints: ema_2 = d ema_1 + (1 - d) params_2
    d = cfg.train.ema_decay
    (_, one), (_, two) = (checkpoint.restore_raw(os.path.join(workdir, "checkpoints"), s) for s in (1, 2))
    ema1, ema2, p2 = jax.device_get((one["ema_params"], two["ema_params"], two["params"]))
    chex.assert_trees_all_close(ema2, jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema1, p2), atol=1e-6)
    # python -m genjax.sample WORKDIR reads the run back, with the diffusion options passed through
    out = str(tmp_path / "s.npy")
    assert sample_cli.main([workdir, "--num", "5", "--out", out, "--sampler", "ddim", "--steps", "3",
                            "--guidance", "-1", "--labels", "1,2"]) == 0, capsys.readouterr().err
    samples = np.load(out)
    assert samples.shape == (5, 8, 8, 1) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 1
    # guidance w = -1 is exactly the unconditional model: the null label without guidance
    _, model_cfg, params, _ = sample_cli.load_run(workdir)
    key = jax.random.fold_in(jax.random.key(0), 0)  # the CLI's --seed 0, its first (only) chunk
    null = dm.sample(params, key, 5, model_cfg, dm.SampleOptions(sampler="ddim", steps=3,
                                                                 labels=(model_cfg.num_classes,)))
    np.testing.assert_allclose(samples, null, atol=1e-5)
    with pytest.raises(ConfigError, match="model.num_classes=3"):
        diffusion_digits.train_and_evaluate(tiny_config("diffusion", tmp_path_factory, **{"model.num_classes": "3"}),
                                            str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
