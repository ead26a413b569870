"""Denoising diffusion (DDPM / DDIM / DPM-Solver++ / VDM-style bounds) over a U-Net, as pure functions.

    params = diffusion.init(key, cfg)
    loss, metrics = diffusion.loss(params, batch, key, cfg, step)   # weighted denoising MSE
    images = diffusion.sample(params, key, num, cfg, diffusion.SampleOptions(sampler="dpm++2m", steps=20))
    sums = diffusion.evaluate(params, batch, key, cfg)              # variational bound, bits/dim (sums)

The package, by topic: `schedule` (the forward process: log-SNR schedules, posteriors,
parameterizations), `samplers` (DDPM, DDIM, DPM-Solver++ over any denoiser, classifier-free guidance),
`likelihood` (the variational bound). This module is the family's contract (docs/CONTRACT.md).

A discrete model (`timesteps = T > 0`) trains on the levels t_i = i / T, i = 1..T; `timesteps = 0` trains
on continuous t ~ U(T_MIN_CONTINUOUS, 1) (VDM). The network always sees t in [0, 1] (embedded as
t * 1000, DDPM's integer steps at T = 1000). Conditional models (num_classes > 0) train with labels dropped
to the null label `num_classes` with probability `cond_drop_prob`, so one network gives p(x | y) and
p(x), mixed at sampling by classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from genjax.config import ConfigError, check_choices
from genjax.models import check_labels, cycle_labels
from genjax.models.diffusion.likelihood import (  # noqa: F401
    discretized_gaussian_log_likelihood, level_probs, quantize, vlb_terms)
from genjax.models.diffusion.samplers import (  # noqa: F401
    SAMPLERS, SPACINGS, default_spacing, guided_model_fn, run_sampler, time_grid)
from genjax.models.diffusion.schedule import (  # noqa: F401
    T_MIN_CONTINUOUS, alpha_sigma, alpha_sigma_from_log_snr, discrete_schedule, from_x0_eps, log_snr,
    log_snr_safe, noisy, posterior, q_sample, t_of_log_snr, to_x0_eps)
from genjax.nn import fast_key, init_params
from genjax.nn.unet import UNet, level_resolutions


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
        check_choices(self, "model")
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


SIZES = {
    # 8x8 digits: widths 16/32, attention at 4x4, 0.18M parameters
    "digits": Config(),
    # 28x28x1 (MNIST, Fashion-MNIST): 3 levels 28/14/7, attention at 14, ~6.5M parameters
    "mnist": Config(image_shape=(28, 28, 1), channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                    attn_resolutions=(14,), dropout=0.1, num_groups=32),
    # 28x28x1 on a CPU: 3 levels 28/14/7, no attention, width 16 (experiments/configs/diffusion_mnist.json)
    "mnist-cpu": Config(image_shape=(28, 28, 1), channels=16, channel_mults=(1, 2, 2), attn_resolutions=(),
                        num_groups=8),
    # The DDPM CIFAR-10 model (Ho et al. 2020): linear schedule, eps, 35.7M parameters
    "cifar10": Config(image_shape=(32, 32, 3), timesteps=1000, schedule="linear", prediction="eps", channels=128,
                      channel_mults=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                      num_groups=32),
}


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    sampler: Literal["ddpm", "ddim", "dpm++2m"] = "dpm++2m"
    steps: int = 20  # network calls (grid points); at most model.timesteps
    guidance: float = 0.0  # classifier-free guidance w of conditional models (0: none)
    eta: float = 0.0  # DDIM's noise (0: deterministic, 1: DDPM's distribution)
    spacing: Literal["", "time", "logsnr", "karras"] = ""  # time grid ('': the sampler's default)
    labels: tuple[int, ...] = ()  # class per sample, cycled (default 0, 1, 2, ...; num_classes: unconditional)

    def validate(self, cfg: Config):
        if self.guidance and not cfg.num_classes:
            raise ConfigError(f"guidance={self.guidance} needs a class-conditional model (model.num_classes > 0); "
                              "drop --guidance")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta={self.eta} must be in [0, 1]")
        check_labels(self.labels, cfg.num_classes, allow_null=True)
        time_grid(cfg, self.steps, self.spacing or default_spacing(self.sampler))  # steps within the grid


# ----------------------------------------------------------------------------- network


def _net(cfg: Config) -> UNet:
    return UNet(out_channels=cfg.image_shape[-1], channels=cfg.channels, channel_mults=cfg.channel_mults,
                num_res_blocks=cfg.num_res_blocks, attn_resolutions=cfg.attn_resolutions,
                dropout=cfg.dropout, num_groups=cfg.num_groups, num_classes=cfg.num_classes,
                dtype=jnp.dtype(cfg.dtype))


def init(key: jax.Array, cfg: Config) -> dict:
    """Fresh parameters, a deterministic function of `key` (one compiled call)."""
    cfg.validate()
    labels = jnp.zeros((1,), jnp.int32) if cfg.num_classes else None
    return init_params(_net(cfg), key, jnp.zeros((1, *cfg.image_shape), jnp.float32), jnp.zeros((1,)), labels)


def apply(params, x, t, labels, cfg: Config, *, train: bool = False, key=None):
    """The network's raw output (in `cfg.prediction` form); `key` feeds dropout when training."""
    rngs = {"dropout": fast_key(key)} if (train and cfg.dropout > 0) else None
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


def loss(params, batch, key, cfg: Config, step=None):
    """Weighted MSE between the network output and its target at a random noise level per example.

    batch: {'image': (B, H, W, C) in [0, 1], 'label': (B,)}; images are scaled to [-1, 1] here.
    """
    return denoising_loss(params, _scale(batch["image"]), batch.get("label"), key, cfg)


def denoising_loss(params, x0, labels, key, cfg: Config):
    """`loss` on data already in the model's space (`x0` (B, ...), e.g. scaled latents), labels (B,) or
    None: the objective any model built on this family (latent diffusion) trains."""

    def denoise(xt, t, k_drop, k_dropout):
        lab = drop_labels(jnp.asarray(labels, jnp.int32), k_drop, cfg) if cfg.num_classes else None
        return apply(params, xt, t, lab, cfg, train=True, key=k_dropout)

    return denoiser_loss(denoise, x0, key, cfg)


def denoiser_loss(denoise: Callable, x0, key, cfg: Config):
    """The weighted denoising MSE of any conditional network `denoise(x_t, t, k_drop, k_dropout) -> output`
    (in `cfg.prediction` form; `k_drop` for its condition dropout, `k_dropout` for dropout layers), at a
    random noise level per example: what text-to-image trains with its text condition inside `denoise`."""
    k_t, k_noise, k_drop, k_dropout = jax.random.split(key, 4)
    xt, t, lam, target = noised(x0, k_t, k_noise, cfg)
    out = denoise(xt, t, k_drop, k_dropout)
    per_example = jnp.mean(jnp.square(out - target), axis=tuple(range(1, x0.ndim)))
    weighted = jnp.mean(loss_weight(lam, cfg) * per_example)
    return weighted, {"mse": jnp.mean(per_example)}


def noised(x0, k_t, k_noise, cfg: Config):
    """(x_t, t, log-SNR, the network's target in cfg.prediction form) for x0 (B, ...) at a random noise
    level per example (`k_t`) and noise (`k_noise`): the input every denoising loss and evaluation uses."""
    t = sample_time(k_t, x0.shape[0], cfg)
    lam = log_snr(t, cfg.schedule)
    alpha, sigma = alpha_sigma_from_log_snr(lam)
    noise = jax.random.normal(k_noise, x0.shape)
    return noisy(x0, alpha, sigma, noise), t, lam, from_x0_eps(x0, noise, alpha, sigma, cfg.prediction)


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


# ----------------------------------------------------------------------------- sampling


def sample(params, key, num: int, cfg: Config, options: SampleOptions = SampleOptions()) -> jax.Array:
    """`num` images, float32 (num, H, W, C) in [0, 1], in one compiled call."""
    options.validate(cfg)
    labels = cycle_labels(options.labels, num, cfg.num_classes)
    guided = bool(options.guidance) and cfg.num_classes > 0
    return _sample(params, key, labels, jnp.float32(options.guidance), cfg=cfg, num=int(num),
                   sampler=options.sampler, steps=int(options.steps), eta=float(options.eta),
                   spacing=options.spacing or default_spacing(options.sampler), guided=guided)


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


def model_x0_fn(params, cfg: Config, labels=None) -> Callable:
    """x0_hat(x_t, t) of the network (clipped to [-1, 1] when cfg.clip_denoised)."""

    def fn(x, t):
        alpha, sigma = alpha_sigma(t, cfg)
        x0, _ = to_x0_eps(apply(params, x, t, labels, cfg), x, alpha, sigma, cfg.prediction)
        return jnp.clip(x0, -1.0, 1.0) if cfg.clip_denoised else x0

    return fn


def nll_bound(params, batch, key, cfg: Config, timesteps: int | None = None) -> jax.Array:
    """Per-example variational bound on -log p(x) in nats (B,), on the 8-bit grid (see `likelihood`).

    Unbiased but noisy (one diffusion level per example): average it over many examples. A
    conditional model is scored with the batch's labels, i.e. this bounds -log p(x | label); give
    label = num_classes for the unconditional p(x).
    """
    x0 = quantize(batch["image"])
    labels = jnp.tile(jnp.asarray(batch["label"], jnp.int32), 2) if cfg.num_classes else None
    terms = vlb_terms(model_x0_fn(params, cfg, labels), x0, key, cfg, timesteps)
    return terms["prior"] + terms["diffusion"] + terms["decoder"]


def evaluate(params, batch, key, cfg: Config) -> dict:
    """Sums over a held-out batch: the bound in bits/dim per example ('bits_per_dim'), and 'count'."""
    bits = nll_bound(params, batch, key, cfg) / (math.prod(cfg.image_shape) * math.log(2.0))
    return {"bits_per_dim": jnp.sum(bits), "count": bits.shape[0]}
