"""Denoising diffusion (DDPM / DDIM / DPM-Solver++ / VDM-style bounds) over a U-Net, as pure functions.

    params = diffusion.init(key, cfg)
    loss, metrics = diffusion.loss(params, batch, key, cfg)          # weighted denoising MSE
    images = diffusion.sample(params, key, num, cfg, sampler="dpm++2m", steps=20, guidance=0.0,
                              labels=None, eta=0.0)                 # float32 (num, H, W, C) in [0, 1]
    bpd = diffusion.bits_per_dim(params, batch, key, cfg)           # variational bound, bits/dim

The forward process (variance preserving) is defined in continuous time t in [0, 1] by its log-SNR
lambda(t) = log(alpha^2 / sigma^2), with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda):

    x_t = alpha(t) x_0 + sigma(t) eps,        alpha(0) = 1, sigma(0) = 0

- `linear`: -log alpha^2(t) = b0 t + (b1 - b0) t^2 / 2 with b0 = 0.1, b1 = 20: the continuous limit of
  DDPM's betas linspace(1e-4, 0.02, 1000) (Song et al. 2021's VP SDE).
- `cosine`: alpha^2(t) = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)), s = 0.008 (Nichol &
  Dhariwal 2021), with lambda clipped below at -20 (their beta <= 0.999 clip, in log-SNR form).

A discrete model (`timesteps = T > 0`) is this process seen at t_i = i / T, i = 0..T: alpha_bar_i =
alpha^2(i / T), beta_i = 1 - alpha_bar_i / alpha_bar_{i-1} (`discrete_schedule`). It trains on those T
noise levels; `timesteps = 0` trains on continuous t ~ U(T_MIN_CONTINUOUS, 1) (VDM). The network always sees t
in [0, 1] (embedded as t * 1000, DDPM's integer steps at T = 1000).

Samplers run a time grid 1 = t_0 > ... > t_{N-1} = t_min > t_N = 0 (t_min = 1/T, the least noisy
trained level), one network call per grid point but the last; the final step to t = 0 returns the
denoised x_0. `ddpm` is ancestral sampling from the posteriors q(x_s | x_t, x_0 = x0_hat) (with
steps = T exactly DDPM's chain), `ddim` is DDIM with `eta` (eta = 1 samples the same distribution as
`ddpm`), and `dpm++2m` is DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction). Grids
(`spacing`): uniform in t snapped to the trained levels (default for ddpm/ddim), uniform in log-SNR
(default for dpm++2m, as DPM-Solver recommends for low resolutions), or Karras et al.'s. All step
coefficients are computed in float64 on the host before tracing; each sampler is one `lax.scan`
inside one compiled call.

They take any denoiser `model_fn(x, t) -> output` (t: (B,) float32) in the config's parameterization
(`prediction`: eps, x0 or v), so tests plug in closed-form optimal denoisers. Classifier-free guidance
(Ho & Salimans 2021) trains with labels dropped to the null label `num_classes` with probability
`cond_drop_prob` and samples with out = out_c + w (out_c - out_u): w = 0 is the plain conditional
model, w = -1 the unconditional one, w > 0 guides.

Likelihood (`bits_per_dim`, on 8-bit data): for a discrete model, DDPM's discrete-time variational
bound (Ho et al. 2020, eq. 5) over its T levels: the prior KL at t = 1, the KL terms between the true
posteriors and the model's q(x_s | x_t, x0_hat), each (SNR(s) - SNR(t)) / 2 ||x_0 - x0_hat||^2
(Kingma et al. 2021), and a discretized-Gaussian decoder p(x_0 | x_{1/T}) with mean x0_hat and scale
sigma/alpha at t = 1/T. For a continuous-time model (T = 0), VDM's continuous-time bound, whose
diffusion term is 1/2 int e^lambda ||x_0 - x0_hat||^2 dlambda, down to t = T_MIN_CONTINUOUS. The
diffusion term is an unbiased one-level-per-example estimate, importance-sampled in log-SNR. Note the
discrete bound is loose at the low-noise end (t = i/T makes SNR fall by half from level 1 to 2 at any
T): for the narrow Gaussian data of tests/test_diffusion.py and its optimal denoiser it exceeds the
NLL by ~0.5 bit/dim at T = 1000, while the continuous bound is tight.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from genjax.config import ConfigError
from genjax.nn.unet import UNet, level_resolutions

LINEAR_BETA = (0.1, 20.0)  # continuous beta(t) = b0 + (b1 - b0) t; beta_i ~ beta(i/T) / T
COSINE_S = 0.008
LOGSNR_MIN = -20.0
T_MIN_CONTINUOUS = 1e-3  # least noisy level of a continuous-time model (lambda ~ 9.1, sigma ~ 0.01)
SAMPLERS = ("ddpm", "ddim", "dpm++2m")
SPACINGS = ("time", "logsnr", "karras")


@dataclasses.dataclass(frozen=True)
class Config:
    image_shape: tuple[int, ...] = (8, 8, 1)
    num_classes: int = 0  # 0: unconditional; else labels 0..num_classes-1, num_classes = null label
    timesteps: int = 1000  # T discrete noise levels; 0 = continuous time
    schedule: Literal["linear", "cosine"] = "cosine"
    prediction: Literal["eps", "x0", "v"] = "eps"
    loss_weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: float = 5.0  # min-SNR-gamma weighting (Hang et al. 2023)
    cond_drop_prob: float = 0.1  # label dropout for classifier-free guidance (conditional models)
    clip_denoised: bool = True  # clip x0_hat to [-1, 1] while sampling and in the bound
    # U-Net
    channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (4,)
    dropout: float = 0.0
    num_groups: int = 8
    dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self):
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ConfigError(f"model.image_shape={self.image_shape} must be (H, W, C) with positive sizes")
        if self.num_classes < 0:
            raise ConfigError(f"model.num_classes={self.num_classes} must be >= 0 (0 = unconditional)")
        if self.timesteps == 1 or self.timesteps < 0:
            raise ConfigError(f"model.timesteps={self.timesteps} must be >= 2 (or 0 for continuous time)")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ConfigError(f"model.cond_drop_prob={self.cond_drop_prob} must be in [0, 1)")
        if self.min_snr_gamma <= 0:
            raise ConfigError(f"model.min_snr_gamma={self.min_snr_gamma} must be > 0")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ConfigError(f"model.channel_mults={self.channel_mults} must be positive ints, e.g. 1,2,2")
        if self.channels < 1 or self.num_res_blocks < 1:
            raise ConfigError("model.channels and model.num_res_blocks must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.num_groups < 1 or any((self.channels * m) % self.num_groups for m in self.channel_mults):
            raise ConfigError(
                f"model.num_groups={self.num_groups} must divide every level's width "
                f"{[self.channels * m for m in self.channel_mults]}; pick a divisor of model.channels"
            )
        sides = level_resolutions(self.image_shape[0], len(self.channel_mults))
        bad = [r for r in self.attn_resolutions if r not in sides]
        if bad:
            raise ConfigError(
                f"model.attn_resolutions={self.attn_resolutions}: {bad} is not a feature-map side of this "
                f"U-Net; its levels have sides {sides} (use some of those, or none)"
            )


# ----------------------------------------------------------------------------- named sizes


def digits(**overrides) -> Config:
    """8x8 digits (the defaults): widths 16/32, attention at 4x4, 0.18M parameters; ~0.1 s per step of
    64 on 2 CPU cores."""
    return dataclasses.replace(Config(), **overrides)


def mnist(**overrides) -> Config:
    """28x28x1 (MNIST, Fashion-MNIST): 3 levels 28/14/7, attention at 14, ~6.5M parameters."""
    base = Config(image_shape=(28, 28, 1), num_classes=0, schedule="cosine", channels=64,
                  channel_mults=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,), dropout=0.1,
                  num_groups=32)
    return dataclasses.replace(base, **overrides)


def cifar10_ddpm(**overrides) -> Config:
    """The DDPM CIFAR-10 model (Ho et al. 2020): linear schedule, eps, 35.7M parameters; a train step of
    128 takes 36 ms on one H200 (measured, float32 or bfloat16)."""
    base = Config(image_shape=(32, 32, 3), timesteps=1000, schedule="linear", prediction="eps",
                  channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                  dropout=0.1, num_groups=32)
    return dataclasses.replace(base, **overrides)


SIZES = {"digits": digits, "mnist": mnist, "cifar10": cifar10_ddpm}


# ----------------------------------------------------------------------------- forward process


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


def alpha_sigma(t, cfg: Config, xp=jnp):
    """(alpha(t), sigma(t)) with alpha^2 + sigma^2 = 1."""
    return alpha_sigma_from_log_snr(_log_snr_safe(t, cfg.schedule, xp), xp)


def _log_snr_safe(t, schedule, xp):
    if xp is np:
        t = np.asarray(t, np.float64)
        with np.errstate(divide="ignore"):
            return np.where(t > 0, log_snr(np.maximum(t, 1e-300), schedule, np), np.inf)
    return log_snr(t, schedule, jnp)


def q_sample(x0, t, noise, cfg: Config):
    """x_t = alpha(t) x0 + sigma(t) noise; t (B,) in [0, 1]."""
    alpha, sigma = alpha_sigma(t, cfg)
    return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * noise


def posterior(x0, xt, t, s, cfg: Config):
    """Mean and variance of q(x_s | x_t, x_0) for 0 <= s < t (Kingma et al. 2021, appendix A).

    With alpha_{t|s} = alpha_t / alpha_s and sigma^2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2:
    mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma^2_{t|s} / sigma_t^2 x_0,
    var = sigma^2_{t|s} sigma_s^2 / sigma_t^2. At discrete t = i/T, s = (i-1)/T this is DDPM's
    posterior (eq. 6-7) with beta_i = sigma^2_{t|s}.
    """
    lam_t, lam_s = log_snr(t, cfg.schedule), log_snr(s, cfg.schedule)
    alpha_t, sigma_t = alpha_sigma_from_log_snr(lam_t)
    alpha_s, sigma_s = alpha_sigma_from_log_snr(lam_s)
    # sigma^2_{t|s} = 1 - alpha_t^2 / alpha_s^2, from log alpha^2 = log_sigmoid(lambda): no cancellation
    sigma2_ts = -jnp.expm1(jax.nn.log_sigmoid(lam_t) - jax.nn.log_sigmoid(lam_s))
    c_xt = (alpha_t / alpha_s) * sigma_s**2 / sigma_t**2
    c_x0 = alpha_s * sigma2_ts / sigma_t**2
    var = sigma2_ts * sigma_s**2 / sigma_t**2
    return _bcast(c_xt, xt) * xt + _bcast(c_x0, x0) * x0, _bcast(var, xt)


def discrete_schedule(cfg: Config, timesteps: int | None = None) -> dict[str, np.ndarray]:
    """float64 tables of the discrete process at t_i = i / T, i = 0..T: t, alpha_bar, beta (beta_0 = 0)."""
    T = timesteps or cfg.timesteps or 1000
    t = np.arange(T + 1, dtype=np.float64) / T
    alpha, _ = alpha_sigma(t, cfg, np)
    alpha_bar = alpha**2
    beta = np.concatenate([[0.0], 1.0 - alpha_bar[1:] / alpha_bar[:-1]])
    return {"t": t, "alpha_bar": alpha_bar, "beta": beta}


def _bcast(v, x):
    """(B,) per-example values against (B, ...) arrays (numpy stays numpy)."""
    v = v if hasattr(v, "reshape") else np.asarray(v, np.float32)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


# ----------------------------------------------------------------------------- parameterizations


def to_x0_eps(out, x, alpha, sigma, prediction: str):
    """The network's output in `prediction` form -> (x0_hat, eps_hat) at x_t = x."""
    alpha, sigma = _bcast(alpha, x), _bcast(sigma, x)
    if prediction == "eps":
        return (x - sigma * out) / alpha, out
    if prediction == "x0":
        return out, (x - alpha * out) / sigma
    if prediction == "v":  # v = alpha eps - sigma x0
        return alpha * x - sigma * out, sigma * x + alpha * out
    raise ValueError(f"unknown prediction {prediction!r}; use 'eps', 'x0' or 'v'")


def from_x0_eps(x0, eps, alpha, sigma, prediction: str):
    """(x0, eps) -> the quantity a `prediction`-type network outputs (the regression target)."""
    alpha, sigma = _bcast(alpha, x0), _bcast(sigma, x0)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown prediction {prediction!r}; use 'eps', 'x0' or 'v'")


def loss_weight(lam, cfg: Config):
    """Per-example weight of the MSE in the prediction's own space.

    min_snr: the implied x0-space weight becomes min(SNR, gamma) (Hang et al. 2023): that is
    min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0 and min(SNR, gamma) / (SNR + 1) for v.
    """
    if cfg.loss_weighting == "none":
        return jnp.ones_like(lam)
    snr = jnp.exp(lam)
    clipped = jnp.minimum(snr, cfg.min_snr_gamma)
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[cfg.prediction]


# ----------------------------------------------------------------------------- network


def _net(cfg: Config) -> UNet:
    return UNet(out_channels=cfg.image_shape[-1], channels=cfg.channels, channel_mults=cfg.channel_mults,
                num_res_blocks=cfg.num_res_blocks, attn_resolutions=cfg.attn_resolutions,
                dropout=cfg.dropout, num_groups=cfg.num_groups, num_classes=cfg.num_classes,
                dtype=jnp.dtype(cfg.dtype))


@functools.partial(jax.jit, static_argnames="cfg")
def init(key: jax.Array, cfg: Config) -> dict:
    """Fresh parameters, a deterministic function of `key` (one compiled call).

    The initializers draw from an 'rbg' key derived from `key`: XLA compiles one RngBitGenerator per
    tensor where threefry unrolls 20 rounds per tensor (the U-Net's init compiles in seconds instead of
    ~half a minute on a CPU). The values are reproducible per key on a given backend, not bit-equal
    across CPU and GPU.
    """
    rbg = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    x = jnp.zeros((1, *cfg.image_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if cfg.num_classes else None
    return dict(_net(cfg).init({"params": rbg}, x, jnp.zeros((1,)), labels)["params"])


def apply(params, x, t, labels, cfg: Config, *, train: bool = False, key=None):
    """The network's raw output (in `cfg.prediction` form); `key` feeds dropout when training."""
    rngs = {"dropout": key} if (train and cfg.dropout > 0) else None
    labels = labels if cfg.num_classes else None
    return _net(cfg).apply({"params": params}, x, jnp.broadcast_to(t, x.shape[:1]), labels,
                           train=train, rngs=rngs)


def _scale(images):
    return images.astype(jnp.float32) * 2.0 - 1.0


def sample_time(key, batch: int, cfg: Config):
    """Training noise levels: i / T with i ~ U{1..T}, or t ~ U(T_MIN_CONTINUOUS, 1) for T = 0."""
    if cfg.timesteps:
        return jax.random.randint(key, (batch,), 1, cfg.timesteps + 1).astype(jnp.float32) / cfg.timesteps
    return T_MIN_CONTINUOUS + (1.0 - T_MIN_CONTINUOUS) * jax.random.uniform(key, (batch,))


def drop_labels(labels, key, cfg: Config):
    """Classifier-free guidance training: each label becomes the null label with prob cond_drop_prob."""
    drop = jax.random.bernoulli(key, cfg.cond_drop_prob, labels.shape)
    return jnp.where(drop, cfg.num_classes, labels).astype(jnp.int32)


def loss(params, batch, key, cfg: Config):
    """Weighted MSE between the network output and its target at a random noise level per example.

    batch: {'image': (B, H, W, C) in [0, 1], 'label': (B,)}; images are scaled to [-1, 1] here.
    """
    x0 = _scale(batch["image"])
    B = x0.shape[0]
    k_t, k_noise, k_drop, k_dropout = jax.random.split(key, 4)
    t = sample_time(k_t, B, cfg)
    lam = log_snr(t, cfg.schedule)
    alpha, sigma = alpha_sigma_from_log_snr(lam)
    noise = jax.random.normal(k_noise, x0.shape)
    xt = _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * noise
    labels = None
    if cfg.num_classes:
        labels = drop_labels(jnp.asarray(batch["label"], jnp.int32), k_drop, cfg)
    out = apply(params, xt, t, labels, cfg, train=True, key=k_dropout)
    target = from_x0_eps(x0, noise, alpha, sigma, cfg.prediction)
    per_example = jnp.mean(jnp.square(out - target), axis=tuple(range(1, x0.ndim)))
    weighted = jnp.mean(loss_weight(lam, cfg) * per_example)
    return weighted, {"mse": jnp.mean(per_example)}


# ----------------------------------------------------------------------------- samplers


def default_spacing(sampler: str) -> str:
    """logsnr for DPM-Solver++ (its steps are uniform in log-SNR), time for DDPM/DDIM (steps = T then
    visits every trained level)."""
    return "logsnr" if sampler == "dpm++2m" else "time"


def time_grid(cfg: Config, steps: int, spacing: str = "time") -> np.ndarray:
    """float64 times 1 = t_0 > ... > t_{steps-1} = t_min > t_steps = 0 (one network call per t_k, k < steps).

    time: uniform in t, snapped to the trained levels i / T; logsnr: uniform in lambda; karras:
    uniform in (sigma / alpha)^(1/7) (Karras et al. 2022).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    T = cfg.timesteps
    if T and steps > T:
        raise ValueError(f"steps={steps} exceeds the model's {T} trained noise levels")
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
        raise ValueError(f"unknown spacing {spacing!r}; use one of {SPACINGS}")
    ts = np.concatenate([ts, [0.0]])
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"steps={steps} gives repeated noise levels on the {T}-level grid; use fewer steps")
    return ts


def _tables(cfg: Config, sampler: str, steps: int, eta: float, spacing: str) -> dict[str, np.ndarray]:
    """Per-step float64 coefficients of step k: t_k -> t_{k+1} (cast to float32 at the end)."""
    ts = time_grid(cfg, steps, spacing)
    lam = _log_snr_safe(ts, cfg.schedule, np)
    alpha, sigma = alpha_sigma_from_log_snr(lam, np)
    a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    tab = {"t": ts[:-1], "alpha": a_t, "sigma": s_t}
    with np.errstate(over="ignore"):  # lambda(0) = inf
        # sigma^2_{t|s} = 1 - alpha_t^2 / alpha_s^2 in log space
        log_a2 = -np.logaddexp(0.0, -lam)
        sigma2_ts = -np.expm1(log_a2[:-1] - log_a2[1:])
    post_var = sigma2_ts * s_s**2 / s_t**2
    if sampler == "ddpm":
        tab["c_xt"] = (a_t / a_s) * s_s**2 / s_t**2
        tab["c_x0"] = a_s * sigma2_ts / s_t**2
        tab["std"] = np.sqrt(post_var)
    elif sampler == "ddim":
        std = eta * np.sqrt(post_var)
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


def run_sampler(model_fn: Callable, x_T, key, cfg: Config, *, sampler: str = "dpm++2m", steps: int = 20,
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

    def fn(x, t):
        out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                       jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
        cond, uncond = jnp.split(out, 2)
        return cond + guidance * (cond - uncond)

    return fn


def _labels(labels, num: int, cfg: Config):
    if not cfg.num_classes:
        if labels is not None:
            raise ValueError("labels were given but the model is unconditional (model.num_classes=0)")
        return None
    if labels is None:
        return jnp.arange(num, dtype=jnp.int32) % cfg.num_classes
    if isinstance(labels, str):
        labels = [int(v) for v in labels.replace(" ", "").split(",") if v]
    labels = np.asarray(labels, np.int32).reshape(-1)
    if labels.size == 0 or labels.min() < 0 or labels.max() > cfg.num_classes:
        raise ValueError(f"labels must be in [0, {cfg.num_classes}] ({cfg.num_classes} = unconditional)")
    return jnp.asarray(np.resize(labels, num))


def sample(params, key, num: int, cfg: Config, sampler: str = "dpm++2m", steps: int = 20,
           guidance: float = 0.0, labels=None, eta: float = 0.0, spacing: str | None = None) -> jax.Array:
    """`num` images, float32 (num, H, W, C) in [0, 1], in one compiled call.

    sampler: 'ddpm' (ancestral), 'ddim' (with `eta`), 'dpm++2m'; `steps` network calls. For a
    conditional model, `labels` (ints, repeated cyclically to `num`; default 0, 1, 2, ...; the value
    num_classes samples unconditionally) and `guidance` w (0: none; > 0 classifier-free guidance).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
    guidance = float(guidance)
    if guidance and not cfg.num_classes:
        raise ValueError("guidance needs a class-conditional model (model.num_classes > 0)")
    lab = _labels(labels, num, cfg)
    spacing = spacing or default_spacing(sampler)
    time_grid(cfg, int(steps), spacing)  # argument errors here, not inside the trace
    return _sample(params, key, lab, jnp.float32(guidance), cfg=cfg, num=int(num), sampler=sampler,
                   steps=int(steps), eta=float(eta), spacing=spacing, guided=guidance != 0.0)


@functools.partial(jax.jit, static_argnames=("cfg", "num", "sampler", "steps", "eta", "spacing", "guided"))
def _sample(params, key, labels, guidance, *, cfg, num, sampler, steps, eta, spacing, guided):
    noise_key, loop_key = jax.random.split(key)
    x_T = jax.random.normal(noise_key, (num, *cfg.image_shape), jnp.float32)
    net = lambda x, t, lab: apply(params, x, t, lab, cfg)  # noqa: E731
    if guided:
        model_fn = guided_model_fn(net, labels, cfg.num_classes, guidance)
    else:
        model_fn = lambda x, t: net(x, t, labels)  # noqa: E731
    clip = 1.0 if cfg.clip_denoised else None
    x0 = run_sampler(model_fn, x_T, loop_key, cfg, sampler=sampler, steps=steps, eta=eta,
                     spacing=spacing, clip=clip)
    return jnp.clip((x0 + 1.0) / 2.0, 0.0, 1.0).astype(jnp.float32)


# ----------------------------------------------------------------------------- likelihood


def discretized_gaussian_log_likelihood(x, mean, scale):
    """log P(x) for x on the 256-level grid of [-1, 1] under N(mean, scale^2) integrated over x's bin
    (edge bins extended to +-inf), as in DDPM / PixelCNN++; computed stably in the tails."""
    half = 1.0 / 255.0
    upper = (x - mean + half) / scale
    lower = (x - mean - half) / scale
    # log(Phi(upper) - Phi(lower)); above the mean use the mirrored tail to keep precision
    flip = lower > 0
    a = jnp.where(flip, log_ndtr(-lower), log_ndtr(upper))
    b = jnp.where(flip, log_ndtr(-upper), log_ndtr(lower))
    mid = a + jnp.log1p(-jnp.exp(jnp.minimum(b - a, -1e-12)))
    return jnp.where(x < -1.0 + half, log_ndtr(upper), jnp.where(x > 1.0 - half, log_ndtr(-lower), mid))


def quantize(images):
    """[0, 1] images -> the 256-level grid of [-1, 1] the bound is computed on."""
    return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0) / 255.0 * 2.0 - 1.0


def level_probs(cfg: Config, timesteps: int) -> np.ndarray:
    """Importance distribution of the bound's levels i = 2..T: p_i proportional to lambda(s) - lambda(t).

    The KL term of level i is (SNR(s) - SNR(t)) / 2 ||x0 - x0_hat||^2 and ||x0 - x0_hat||^2 shrinks
    like 1 / SNR, so this makes every draw's contribution about equally large (a low-variance,
    unbiased estimate where uniform draws are dominated by the rare low-noise levels).
    """
    lam = _log_snr_safe(np.arange(1, timesteps + 1) / timesteps, cfg.schedule, np)
    w = np.maximum(lam[:-1] - lam[1:], 1e-12)
    return w / w.sum()


def vlb_terms(x0_fn: Callable, x0, key, cfg: Config, timesteps: int | None = None) -> dict:
    """Per-example terms (nats) of the variational bound -log p(x0) <= prior + diffusion + decoder.

    x0: (B, ...) on the 8-bit grid of [-1, 1]; x0_fn(x_t, t) -> x0_hat, called once on a batch of 2B
    (B noisy inputs for the diffusion term, then B for the decoder). timesteps (default
    cfg.timesteps): T > 0 gives the discrete-time (DDPM) bound over the levels i / T, 0 the
    continuous-time (VDM) bound down to t = T_MIN_CONTINUOUS. `diffusion` is a one-sample unbiased
    estimate: a level i ~ `level_probs` (discrete) or lambda ~ U[lambda(1), lambda(t_min)]
    (continuous), weighted by the inverse of its probability.
    """
    T = cfg.timesteps if timesteps is None else timesteps
    B, axes = x0.shape[0], tuple(range(1, x0.ndim))
    k_i, k_n1, k_n2 = jax.random.split(key, 3)
    # prior: KL(q(x_1 | x0) || N(0, I))
    a1, s1 = alpha_sigma(jnp.ones(()), cfg)
    prior = 0.5 * jnp.sum(a1**2 * x0**2 + s1**2 - 1.0 - jnp.log(s1**2), axis=axes)
    if T:
        # KL(q(x_s | x_t, x0) || q(x_s | x_t, x0_hat)) = (SNR(s) - SNR(t)) / 2 ||x0 - x0_hat||^2
        probs = level_probs(cfg, T)
        i = 2 + jax.random.choice(k_i, T - 1, (B,), p=jnp.asarray(probs, jnp.float32))
        t, s = i / T, (i - 1) / T
        lam_t, lam_s = log_snr(t, cfg.schedule), log_snr(s, cfg.schedule)
        weight = 0.5 * -jnp.exp(lam_s) * jnp.expm1(lam_t - lam_s) / jnp.asarray(probs, jnp.float32)[i - 2]
        t_min = 1.0 / T
    else:
        # -1/2 int_{t_min}^1 SNR'(t) ||x0 - x0_hat||^2 dt = 1/2 int e^lambda ||x0 - x0_hat||^2 dlambda
        t_min = T_MIN_CONTINUOUS
        lo = float(log_snr(np.float64(1.0), cfg.schedule, np))
        hi = float(log_snr(np.float64(t_min), cfg.schedule, np))
        lam_t = jax.random.uniform(k_i, (B,), minval=lo, maxval=hi)
        t = jnp.clip(t_of_log_snr(lam_t, cfg.schedule, jnp), t_min, 1.0)
        weight = 0.5 * (hi - lo) * jnp.exp(lam_t)
    alpha, sigma = alpha_sigma_from_log_snr(lam_t)
    xt = _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * jax.random.normal(k_n1, x0.shape)
    # decoder: discretized Gaussian around x0_hat(x_{t_min}) with scale sigma/alpha at t_min
    t1 = jnp.full((B,), t_min, jnp.float32)
    a, s_ = alpha_sigma(t1, cfg)
    x1 = q_sample(x0, t1, jax.random.normal(k_n2, x0.shape), cfg)
    # one denoiser call for both terms (one network in the compiled graph)
    x0_t, x0_1 = jnp.split(x0_fn(jnp.concatenate([xt, x1]), jnp.concatenate([t.astype(jnp.float32), t1])), 2)
    diffusion = weight * jnp.sum(jnp.square(x0 - x0_t), axis=axes)
    decoder = -jnp.sum(discretized_gaussian_log_likelihood(x0, x0_1, _bcast(s_ / a, x0)), axis=axes)
    return {"prior": prior, "diffusion": diffusion, "decoder": decoder}


def model_x0_fn(params, cfg: Config, labels=None) -> Callable:
    """x0_hat(x_t, t) of the network (clipped to [-1, 1] when cfg.clip_denoised)."""

    def fn(x, t):
        alpha, sigma = alpha_sigma(t, cfg)
        x0, _ = to_x0_eps(apply(params, x, t, labels, cfg), x, alpha, sigma, cfg.prediction)
        return jnp.clip(x0, -1.0, 1.0) if cfg.clip_denoised else x0

    return fn


def bits_per_dim(params, batch, key, cfg: Config, timesteps: int | None = None) -> jax.Array:
    """The variational bound in bits per dimension, averaged over the batch (see the module docstring).

    Unbiased but noisy (one diffusion level per example): average it over many examples. A
    conditional model is scored with the batch's labels, i.e. this bounds -log p(x | label).
    """
    x0 = quantize(batch["image"])
    labels = jnp.tile(jnp.asarray(batch["label"], jnp.int32), 2) if cfg.num_classes else None
    terms = vlb_terms(model_x0_fn(params, cfg, labels), x0, key, cfg, timesteps)
    nats = terms["prior"] + terms["diffusion"] + terms["decoder"]
    return jnp.mean(nats) / (math.prod(cfg.image_shape) * math.log(2.0))
