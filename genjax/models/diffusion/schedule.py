"""The forward (noising) process: log-SNR schedules, alpha/sigma, posteriors, parameterizations.

Variance preserving, in continuous time t in [0, 1], defined by its log-SNR
lambda(t) = log(alpha^2 / sigma^2), alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda):

    x_t = alpha(t) x_0 + sigma(t) eps,        alpha(0) = 1, sigma(0) = 0

- `linear`: -log alpha^2(t) = b0 t + (b1 - b0) t^2 / 2 with b0 = 0.1, b1 = 20: the continuous limit of
  DDPM's betas linspace(1e-4, 0.02, 1000) (Song et al. 2021's VP SDE).
- `cosine`: alpha^2(t) = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)), s = 0.008 (Nichol &
  Dhariwal 2021), with lambda clipped below at -20 (their beta <= 0.999 clip, in log-SNR form).

Every formula takes `xp` (jnp in traced code, np for float64 tables on the host) so it is written once.
Functions taking `cfg` read only `cfg.schedule`, `cfg.timesteps` and `cfg.prediction`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

LINEAR_BETA = (0.1, 20.0)  # continuous beta(t) = b0 + (b1 - b0) t; beta_i ~ beta(i/T) / T
COSINE_S = 0.008
LOGSNR_MIN = -20.0
T_MIN_CONTINUOUS = 1e-3  # least noisy level of a continuous-time model (lambda ~ 9.1, sigma ~ 0.01)


def log_snr(t, schedule: str, xp=jnp):
    """lambda(t) = log(alpha^2 / sigma^2); +inf at t = 0. `xp=np` evaluates in float64 on the host."""
    if schedule == "linear":
        b0, b1 = LINEAR_BETA
        g = b0 * t + 0.5 * (b1 - b0) * t**2  # -log alpha^2
        lam = -xp.log(xp.expm1(g))
    elif schedule == "cosine":
        s = COSINE_S
        u = (t + s) / (1 + s) * (math.pi / 2)
        u0 = s / (1 + s) * (math.pi / 2)
        # sigma^2 = (cos^2 u0 - cos^2 u) / cos^2 u0 = sin(u - u0) sin(u + u0) / cos^2 u0, no cancellation
        lam = xp.log(xp.square(xp.cos(u))) - xp.log(xp.sin(t / (1 + s) * (math.pi / 2)) * xp.sin(u + u0))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use 'linear' or 'cosine'")
    return xp.maximum(lam, LOGSNR_MIN)


def t_of_log_snr(lam, schedule: str, xp=np):
    """Inverse of `log_snr` (for lambda above the clip)."""
    if schedule == "linear":
        b0, b1 = LINEAR_BETA
        g = xp.logaddexp(0.0, -lam)  # softplus(-lambda) = -log alpha^2
        return (-b0 + xp.sqrt(b0**2 + 2 * (b1 - b0) * g)) / (b1 - b0)
    s = COSINE_S
    u0 = s / (1 + s) * (math.pi / 2)
    alpha = xp.sqrt(1 / (1 + xp.exp(-lam)))
    u = xp.arccos(xp.cos(u0) * alpha)
    return u * 2 * (1 + s) / math.pi - s


def alpha_sigma_from_log_snr(lam, xp=jnp):
    if xp is jnp:
        return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))
    with np.errstate(over="ignore"):
        return np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))


def log_snr_safe(t, schedule, xp=jnp):
    """`log_snr` that is +inf at t = 0 on the host too (numpy), where the time grids end."""
    if xp is np:
        t = np.asarray(t, np.float64)
        with np.errstate(divide="ignore"):
            return np.where(t > 0, log_snr(np.maximum(t, 1e-300), schedule, np), np.inf)
    return log_snr(t, schedule, jnp)


def alpha_sigma(t, cfg, xp=jnp):
    """(alpha(t), sigma(t)) with alpha^2 + sigma^2 = 1."""
    return alpha_sigma_from_log_snr(log_snr_safe(t, cfg.schedule, xp), xp)


def bcast(v, x):
    """(B,) per-example values against (B, ...) arrays (numpy stays numpy)."""
    v = v if hasattr(v, "reshape") else np.asarray(v, np.float32)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def noisy(x0, alpha, sigma, noise):
    """x_t = alpha x0 + sigma noise, with per-example (B,) alpha and sigma."""
    return bcast(alpha, x0) * x0 + bcast(sigma, x0) * noise


def q_sample(x0, t, noise, cfg):
    """x_t at times t (B,) in [0, 1]."""
    alpha, sigma = alpha_sigma(t, cfg)
    return noisy(x0, alpha, sigma, noise)


def posterior_coefficients(lam_t, lam_s, xp=jnp):
    """q(x_s | x_t, x_0) for 0 <= s < t as {c_xt, c_x0, var, sigma2_ts} (Kingma et al. 2021, appendix A).

    With alpha_{t|s} = alpha_t / alpha_s and sigma^2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2:
    mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma^2_{t|s} / sigma_t^2 x_0,
    var = sigma^2_{t|s} sigma_s^2 / sigma_t^2. At discrete t = i/T, s = (i-1)/T this is DDPM's
    posterior (eq. 6-7) with beta_i = sigma^2_{t|s}. lam_s may be +inf (s = 0).
    """
    alpha_t, sigma_t = alpha_sigma_from_log_snr(lam_t, xp)
    alpha_s, sigma_s = alpha_sigma_from_log_snr(lam_s, xp)
    log_sigmoid = jax.nn.log_sigmoid if xp is jnp else (lambda v: -np.logaddexp(0.0, -v))
    # sigma^2_{t|s} = 1 - alpha_t^2 / alpha_s^2, from log alpha^2 = log_sigmoid(lambda): no cancellation
    sigma2_ts = -xp.expm1(log_sigmoid(lam_t) - log_sigmoid(lam_s))
    return {"c_xt": (alpha_t / alpha_s) * sigma_s**2 / sigma_t**2, "c_x0": alpha_s * sigma2_ts / sigma_t**2,
            "var": sigma2_ts * sigma_s**2 / sigma_t**2, "sigma2_ts": sigma2_ts}


def posterior(x0, xt, t, s, cfg):
    """(mean, variance) of q(x_s | x_t, x_0) at times t > s (B,)."""
    c = posterior_coefficients(log_snr(t, cfg.schedule), log_snr(s, cfg.schedule))
    return bcast(c["c_xt"], xt) * xt + bcast(c["c_x0"], x0) * x0, bcast(c["var"], xt)


def discrete_schedule(cfg, timesteps: int | None = None) -> dict[str, np.ndarray]:
    """float64 tables of the discrete process at t_i = i / T, i = 0..T: t, alpha_bar, beta (beta_0 = 0)."""
    T = timesteps or cfg.timesteps or 1000
    t = np.arange(T + 1, dtype=np.float64) / T
    alpha, _ = alpha_sigma(t, cfg, np)
    alpha_bar = alpha**2
    beta = np.concatenate([[0.0], 1.0 - alpha_bar[1:] / alpha_bar[:-1]])
    return {"t": t, "alpha_bar": alpha_bar, "beta": beta}


# ----------------------------------------------------------------------------- parameterizations


def to_x0_eps(out, x, alpha, sigma, prediction: str):
    """The network's output in `prediction` form -> (x0_hat, eps_hat) at x_t = x."""
    alpha, sigma = bcast(alpha, x), bcast(sigma, x)
    if prediction == "eps":
        return (x - sigma * out) / alpha, out
    if prediction == "x0":
        return out, (x - alpha * out) / sigma
    if prediction == "v":  # v = alpha eps - sigma x0
        return alpha * x - sigma * out, sigma * x + alpha * out
    raise ValueError(f"unknown prediction {prediction!r}; use 'eps', 'x0' or 'v'")


def from_x0_eps(x0, eps, alpha, sigma, prediction: str):
    """(x0, eps) -> the quantity a `prediction`-type network outputs (the regression target)."""
    alpha, sigma = bcast(alpha, x0), bcast(sigma, x0)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown prediction {prediction!r}; use 'eps', 'x0' or 'v'")
