"""Samplers of the reverse process: DDPM (ancestral), DDIM and DPM-Solver++(2M), over any denoiser.

Samplers run a time grid 1 = t_0 > ... > t_{N-1} = t_min > t_N = 0 (t_min = 1/T, the least noisy
trained level), one network call per grid point but the last; the final step to t = 0 returns the
denoised x_0. `ddpm` is ancestral sampling from the posteriors q(x_s | x_t, x0 = x0_hat) (with
steps = T exactly DDPM's chain), `ddim` is DDIM with `eta` (eta = 1 samples the same distribution as
`ddpm`), and `dpm++2m` is DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction). Grids
(`spacing`): uniform in t snapped to the trained levels (default for ddpm/ddim), uniform in log-SNR
(default for dpm++2m, as DPM-Solver recommends for low resolutions), or Karras et al.'s. All step
coefficients are computed in float64 on the host before tracing; each sampler is one `lax.scan`.

They take any denoiser `model_fn(x, t) -> output` (t: (B,) float32) in the config's parameterization
(`prediction`: eps, x0 or v), so tests plug in closed-form optimal denoisers. Classifier-free guidance
(Ho & Salimans 2021): out = out_c + w (out_c - out_u), w = 0 the plain conditional model, w = -1 the
unconditional one, w > 0 guides.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genjax.config import ConfigError
from genjax.models.diffusion.schedule import (T_MIN_CONTINUOUS, alpha_sigma_from_log_snr, log_snr, log_snr_safe,
                                              posterior_coefficients, t_of_log_snr, to_x0_eps)

SAMPLERS = ("ddpm", "ddim", "dpm++2m")
SPACINGS = ("time", "logsnr", "karras")


def default_spacing(sampler: str) -> str:
    """logsnr for DPM-Solver++ (its steps are uniform in log-SNR), time for DDPM/DDIM (steps = T then
    visits every trained level)."""
    return "logsnr" if sampler == "dpm++2m" else "time"


def time_grid(cfg, steps: int, spacing: str = "time") -> np.ndarray:
    """float64 times 1 = t_0 > ... > t_{steps-1} = t_min > t_steps = 0 (one network call per t_k, k < steps).

    time: uniform in t, snapped to the trained levels i / T; logsnr: uniform in lambda; karras:
    uniform in (sigma / alpha)^(1/7) (Karras et al. 2022).
    """
    if steps < 1:
        raise ConfigError(f"steps={steps} must be >= 1")
    T = cfg.timesteps
    if T and steps > T:
        raise ConfigError(f"steps={steps} exceeds the model's {T} trained noise levels")
    t_min = 1.0 / T if T else T_MIN_CONTINUOUS
    if spacing == "time":
        ts = np.linspace(1.0, t_min, steps)
        if T:
            ts = np.round(ts * T) / T
    elif spacing == "logsnr":
        lo, hi = log_snr(np.float64(1.0), cfg.schedule, np), log_snr(np.float64(t_min), cfg.schedule, np)
        ts = np.clip(t_of_log_snr(np.linspace(lo, hi, steps), cfg.schedule), t_min, 1.0)
        ts[0], ts[-1] = 1.0, t_min
    elif spacing == "karras":
        # Karras et al. 2022: uniform in kappa^(1/7), kappa = sigma / alpha (the EDM noise level)
        lo, hi = log_snr(np.float64(1.0), cfg.schedule, np), log_snr(np.float64(t_min), cfg.schedule, np)
        k_max, k_min = np.exp(-0.5 * lo) ** (1 / 7), np.exp(-0.5 * hi) ** (1 / 7)
        kappa = (k_max + np.linspace(0.0, 1.0, steps) * (k_min - k_max)) ** 7
        ts = np.clip(t_of_log_snr(-2.0 * np.log(kappa), cfg.schedule), t_min, 1.0)
        ts[0], ts[-1] = 1.0, t_min
    else:
        raise ConfigError(f"unknown spacing {spacing!r}; use one of {SPACINGS}")
    ts = np.concatenate([ts, [0.0]])
    if np.any(np.diff(ts) >= 0):
        raise ConfigError(f"steps={steps} gives repeated noise levels on the {T}-level grid; use fewer steps")
    return ts


def _tables(cfg, sampler: str, steps: int, eta: float, spacing: str) -> dict[str, np.ndarray]:
    """Per-step float64 coefficients of step k: t_k -> t_{k+1} (cast to float32 at the end)."""
    ts = time_grid(cfg, steps, spacing)
    lam = log_snr_safe(ts, cfg.schedule, np)
    alpha, sigma = alpha_sigma_from_log_snr(lam, np)
    a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    tab = {"t": ts[:-1], "alpha": a_t, "sigma": s_t}
    with np.errstate(over="ignore"):  # lambda(0) = inf
        post = posterior_coefficients(lam[:-1], lam[1:], np)
    if sampler == "ddpm":
        tab["c_xt"], tab["c_x0"], tab["std"] = post["c_xt"], post["c_x0"], np.sqrt(post["var"])
    elif sampler == "ddim":
        std = eta * np.sqrt(post["var"])
        tab["c_x0"] = a_s
        tab["c_eps"] = np.sqrt(np.maximum(s_s**2 - std**2, 0.0))
        tab["std"] = std
    elif sampler == "dpm++2m":
        # DPM-Solver's lambda is the half log-SNR log(alpha / sigma)
        h = 0.5 * (lam[1:] - lam[:-1])  # +inf on the last step (lambda(0) = inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            tab["c_x"] = np.where(np.isfinite(h), s_s / s_t, 0.0)
            tab["c_d"] = -a_s * np.expm1(-h)
            h_prev = np.concatenate([[0.0], h[:-1]])
            second = (h_prev > 0) & (h > 0) & np.isfinite(h)
            r = np.where(second, h_prev / np.where(second, h, 1.0), 1.0)
        tab["w_cur"] = np.where(second, 1.0 + 0.5 / r, 1.0)
        tab["w_prev"] = np.where(second, -0.5 / r, 0.0)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
    return {k: np.asarray(v, np.float32) for k, v in tab.items()}


def run_sampler(model_fn: Callable, x_T, key, cfg, *, sampler: str = "dpm++2m", steps: int = 20,
                eta: float = 0.0, spacing: str | None = None, clip: float | None = None, noises=None):
    """Integrates the reverse process from x_T (noise at t = 1) to x_0 with `model_fn(x, t) -> output`.

    `model_fn` gives the denoiser's output in `cfg.prediction` form for t (B,) float32; `clip` bounds
    x0_hat (1.0 for data in [-1, 1]; None: no clipping). `key` feeds the ancestral noise (ddpm, ddim
    with eta > 0), unless `noises` (steps, *x_T.shape) gives it. `spacing` (see `time_grid`) defaults
    to 'logsnr' for dpm++2m and 'time' otherwise. Traceable: under jit the whole trajectory is one
    `lax.scan`.
    """
    if sampler == "ddpm":
        eta = 1.0
    spacing = spacing or default_spacing(sampler)
    tab = jax.tree.map(jnp.asarray, _tables(cfg, sampler, steps, float(eta), spacing))
    B = x_T.shape[0]

    def denoise(x, c):
        out = model_fn(x, jnp.full((B,), c["t"], jnp.float32))
        x0, eps = to_x0_eps(out, x, c["alpha"], c["sigma"], cfg.prediction)
        if clip is not None:
            x0 = jnp.clip(x0, -clip, clip)
            eps = (x - c["alpha"] * x0) / c["sigma"]
        return x0, eps

    def body(carry, inp):
        x, d_prev = carry
        c, k = inp
        x0, eps = denoise(x, c)
        if sampler == "ddpm" or (sampler == "ddim" and eta > 0):
            noise = jax.random.normal(k, x.shape, x.dtype) if noises is None else k
        if sampler == "ddpm":
            x = c["c_xt"] * x + c["c_x0"] * x0 + c["std"] * noise
        elif sampler == "ddim":
            x = c["c_x0"] * x0 + c["c_eps"] * eps + (c["std"] * noise if eta > 0 else 0.0)
        else:
            d = c["w_cur"] * x0 + c["w_prev"] * d_prev
            x = c["c_x"] * x + c["c_d"] * d
        return (x, x0), None

    per_step = jax.random.split(key, steps) if noises is None else noises
    (x, _), _ = jax.lax.scan(body, (x_T, jnp.zeros_like(x_T)), (tab, per_step))
    return x


def guided_model_fn(model_fn: Callable, labels, null_label: int, guidance) -> Callable:
    """Classifier-free guidance: out_c + w (out_c - out_u), both from one doubled batch."""
    return guided_fn(model_fn, labels, jnp.full_like(labels, null_label), guidance)


def guided_fn(model_fn: Callable, cond, uncond, guidance) -> Callable:
    """Classifier-free guidance over any condition: `model_fn(x, t, c)` with `cond` and `uncond` pytrees
    of (B, ...) arrays (labels, or text states and their mask), out_c + w (out_c - out_u) from one
    doubled batch."""

    def fn(x, t):
        both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
        out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
        c, u = jnp.split(out, 2)
        return c + guidance * (c - u)

    return fn
