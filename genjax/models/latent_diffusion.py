"""Latent diffusion (Rombach et al. 2022, the recipe of Stable Diffusion) composed of genjax's own parts:
a frozen KL-regularized autoencoder (`vae` with a spatial latent) and the `diffusion` family's U-Net and
samplers on its latents, scaled to unit spread by `latent_scale` (1 / std of the training latents).

    params = latent_diffusion.init(key, cfg)     # {'autoencoder': vae params, 'diffusion': U-Net params}
    z = latent_diffusion.encode(params["autoencoder"], images, cfg)        # scaled latents (posterior mean)
    loss, metrics = latent_diffusion.latent_loss(params["diffusion"], {"latent": z, "label": y}, key, cfg)
    images = latent_diffusion.sample(params, key, num, cfg, latent_diffusion.SampleOptions(steps=20))
    step = latent_diffusion.make_step(cfg, train_cfg)   # trains params['diffusion'] only, on latent batches

Training is two runs (`experiments/vae_digits.py` with a spatial-latent config, then
`experiments/latent_diffusion.py --autoencoder <vae workdir>`): the second encodes the training images
once and trains the U-Net on the scaled latents with `make_step`, which leaves the autoencoder's params
(carried in the state, so checkpoints and `python -m genjax.sample` see the whole model) bit-identical.
`loss` is the same objective from images (encoding inside, no gradient into the autoencoder).

Sampling runs the diffusion sampler in latent space (no clipping: latents are not bounded like pixels),
divides by `latent_scale` and returns the decoder's mean image. `evaluate` sums the held-out denoising
MSE in latent space and the autoencoder's reconstruction error; a likelihood bound is not computed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax import checkpoint, train
from genjax.config import ConfigError, check_choices
from genjax.models import cycle_labels, diffusion, vae

_D = diffusion.Config()


@dataclasses.dataclass(frozen=True)
class Config:
    image_shape: tuple[int, ...] = (8, 8, 1)
    # the frozen autoencoder: a spatial-latent conv VAE (set from the stage-1 run by the experiment)
    ae_channels: tuple[int, ...] = (64,)
    ae_latent_channels: int = 2
    ae_likelihood: Literal["bernoulli", "gaussian"] = "gaussian"
    ae_dtype: Literal["float32", "bfloat16"] = "float32"
    latent_scale: float = 1.0  # z_diffusion = z * latent_scale (1 / std of the training latents, SD's factor)
    # the diffusion model on the latents (diffusion.Config's fields, image_shape = the latent shape)
    num_classes: int = 0
    timesteps: int = _D.timesteps
    schedule: Literal["linear", "cosine"] = _D.schedule
    prediction: Literal["eps", "x0", "v"] = _D.prediction
    loss_weighting: Literal["none", "min_snr"] = _D.loss_weighting
    min_snr_gamma: float = _D.min_snr_gamma
    cond_drop_prob: float = _D.cond_drop_prob
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (2,)
    dropout: float = 0.0
    num_groups: int = 8
    dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self):
        check_choices(self, "model")
        if not self.latent_scale > 0 or not np.isfinite(self.latent_scale):
            raise ConfigError(f"model.latent_scale={self.latent_scale} must be a positive number")
        if self.ae_latent_channels < 1:
            raise ConfigError(f"model.ae_latent_channels={self.ae_latent_channels} must be >= 1 "
                              "(a spatial latent)")
        autoencoder_config(self).validate()
        diffusion_config(self).validate()

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return autoencoder_config(self).latent_shape


def autoencoder_config(cfg: Config) -> vae.Config:
    """The frozen autoencoder's vae.Config (its training-only fields at their defaults)."""
    return vae.Config(arch="conv", image_shape=tuple(cfg.image_shape), channels=tuple(cfg.ae_channels),
                      latent_channels=cfg.ae_latent_channels, likelihood=cfg.ae_likelihood, prior="standard",
                      dtype=cfg.ae_dtype)


def diffusion_config(cfg: Config) -> diffusion.Config:
    """The latent model's diffusion.Config: image_shape is the latent shape; latents are never clipped."""
    fields = {f.name for f in dataclasses.fields(diffusion.Config)} - {"image_shape", "clip_denoised"}
    return diffusion.Config(image_shape=autoencoder_config(cfg).latent_shape, clip_denoised=False,
                            **{k: getattr(cfg, k) for k in fields})


def with_autoencoder(cfg: Config, ae_cfg: vae.Config) -> Config:
    """`cfg` with the autoencoder fields of a trained vae run's config (which must have a spatial latent)."""
    if not ae_cfg.spatial:
        raise ConfigError("the autoencoder must have a spatial latent (model.arch=conv, "
                          f"model.latent_channels > 0); this one has arch={ae_cfg.arch!r}, "
                          f"latent_channels={ae_cfg.latent_channels}")
    return dataclasses.replace(cfg, image_shape=tuple(ae_cfg.image_shape),
                               ae_channels=tuple(ae_cfg.channels), ae_latent_channels=ae_cfg.latent_channels,
                               ae_likelihood=ae_cfg.likelihood, ae_dtype=ae_cfg.dtype)


SIZES = {
    # 8x8 digits -> 4x4x2 latents; U-Net widths 32/64 on 4x4 and 2x2, attention at 2x2
    "digits": Config(),
    # 28x28 -> 7x7x4 latents (vae.SIZES['mnist-latent']); U-Net levels 8/4 (7x7 padded), attention at 4
    "mnist": Config(image_shape=(28, 28, 1), ae_channels=(32, 64), ae_latent_channels=4, channels=64,
                    attn_resolutions=(4,)),
}


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    sampler: Literal["ddpm", "ddim", "dpm++2m"] = "dpm++2m"
    steps: int = 20  # network calls; at most model.timesteps
    guidance: float = 0.0  # classifier-free guidance w of conditional models (0: none)
    eta: float = 0.0  # DDIM's noise (0: deterministic)
    spacing: Literal["", "time", "logsnr", "karras"] = ""  # time grid ('': the sampler's default)
    labels: tuple[int, ...] = ()  # class per sample, cycled (conditional models)

    def validate(self, cfg: Config):
        self.diffusion_options().validate(diffusion_config(cfg))

    def diffusion_options(self) -> diffusion.SampleOptions:
        return diffusion.SampleOptions(**dataclasses.asdict(self))


# ----------------------------------------------------------------------------- parameters


def init(key: jax.Array, cfg: Config) -> dict:
    """{'autoencoder': fresh vae params, 'diffusion': fresh U-Net params}; a trained run replaces the
    autoencoder's with the stage-1 run's."""
    cfg.validate()
    k_ae, k_diff = jax.random.split(key)
    return {"autoencoder": vae.init(k_ae, autoencoder_config(cfg)),
            "diffusion": diffusion.init(k_diff, diffusion_config(cfg))}


def fingerprint(params, cfg: Config) -> str:
    """SHA-256 of the autoencoder's architecture and every byte of its weights (`params` its params)."""
    arch = {k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith("ae_") or k == "image_shape"}
    return checkpoint.fingerprint(params, arch)


# ----------------------------------------------------------------------------- autoencoder


def encode(ae_params, images, cfg: Config, key=None):
    """Scaled latents (B, *latent_shape): the posterior mean times latent_scale, or with `key` a posterior
    sample. Images in [0, 1]."""
    mean, logvar = vae.encode(ae_params, images, autoencoder_config(cfg))
    z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    return z * cfg.latent_scale


def decode(ae_params, z, cfg: Config):
    """Images in [0, 1] (the decoder's mean) of scaled latents."""
    ae_cfg = autoencoder_config(cfg)
    return vae.mean_image(ae_params, vae.decode(ae_params, z / cfg.latent_scale, ae_cfg), ae_cfg)


# ----------------------------------------------------------------------------- objectives


def latent_loss(params, batch, key, cfg: Config, step=None):
    """The diffusion objective on scaled latents: `params` the U-Net's, batch {'latent': (B, h, w, c),
    'label': (B,)}. diffusion.loss's weighted MSE, without its pixel scaling to [-1, 1]."""
    x0 = batch["latent"].astype(jnp.float32)
    return diffusion.denoising_loss(params, x0, batch.get("label"), key, diffusion_config(cfg))


def loss(params, batch, key, cfg: Config, step=None):
    """latent_loss of the images' scaled posterior means; no gradient reaches the autoencoder."""
    ae = jax.lax.stop_gradient(params["autoencoder"])
    latents = encode(ae, batch["image"], cfg)
    return latent_loss(params["diffusion"], {"latent": latents, "label": batch.get("label")}, key, cfg, step)


def init_state(key, params, tx, ema: bool = False) -> train.TrainState:
    """A TrainState whose optimizer state covers params['diffusion'] only."""
    return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=tx.init(params["diffusion"]), key=key,
                            ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def make_step(cfg: Config, train_cfg: train.TrainConfig, tx: optax.GradientTransformation | None = None):
    """`step(state, batch) -> (state, metrics)` on latent batches ({'latent', 'label'}): the train
    pieces (accumulate, apply, EMA, finite guard) over params['diffusion']; params['autoencoder'] (and its
    EMA copy) pass through untouched. `state` from `init_state`."""
    tx = train.make_optimizer(train_cfg) if tx is None else tx

    def step(state: train.TrainState, batch):
        grad_fn = jax.value_and_grad(functools.partial(latent_loss, cfg=cfg, step=state.step), has_aux=True)
        (loss_value, metrics), grads = train.accumulate_gradients(
            grad_fn, state.params["diffusion"], batch, train.step_key(state), train_cfg.grad_accum)
        new, opt_state, finite = train.apply_gradients(tx, state.params["diffusion"], state.opt_state, grads,
                                                       loss_value)
        ema = state.ema_params
        if ema is not None:
            averaged = train.update_ema(ema["diffusion"], new, train_cfg.ema_decay, state.step,
                                        train_cfg.ema_warmup)
            ema = {**ema, "diffusion": averaged}
        params = {**state.params, "diffusion": new}
        updated = state.replace(params=params, opt_state=opt_state, ema_params=ema)
        return train.finish_step(state, updated, finite,
                                 {**metrics, "loss": loss_value, "grad_norm": optax.tree.norm(grads)})

    return step


# ----------------------------------------------------------------------------- sampling


def sample(params, key, num: int, cfg: Config, options: SampleOptions = SampleOptions()) -> jax.Array:
    """`num` decoded images, float32 (num, H, W, C) in [0, 1], in one compiled call."""
    options.validate(cfg)
    return sample_latents_and_decode(params, key, num, cfg, options)[1]


def sample_latents_and_decode(params, key, num: int, cfg: Config, options: SampleOptions = SampleOptions()):
    """(scaled latents (num, *latent_shape), images (num, H, W, C))."""
    dcfg = diffusion_config(cfg)
    labels = cycle_labels(options.labels, num, dcfg.num_classes)
    guided = bool(options.guidance) and dcfg.num_classes > 0
    return _sample(params, key, labels, jnp.float32(options.guidance), cfg=cfg, num=int(num),
                   sampler=options.sampler, steps=int(options.steps), eta=float(options.eta),
                   spacing=options.spacing or diffusion.default_spacing(options.sampler), guided=guided)


@functools.partial(jax.jit, static_argnames=("cfg", "num", "sampler", "steps", "eta", "spacing", "guided"))
def _sample(params, key, labels, guidance, *, cfg, num, sampler, steps, eta, spacing, guided):
    dcfg = diffusion_config(cfg)
    noise_key, loop_key = jax.random.split(key)
    z_T = jax.random.normal(noise_key, (num, *dcfg.image_shape), jnp.float32)
    net = lambda x, t, lab: diffusion.apply(params["diffusion"], x, t, lab, dcfg)  # noqa: E731
    if guided:
        model_fn = diffusion.guided_model_fn(net, labels, dcfg.num_classes, guidance)
    else:
        model_fn = lambda x, t: net(x, t, labels)  # noqa: E731
    z0 = diffusion.run_sampler(model_fn, z_T, loop_key, dcfg, sampler=sampler, steps=steps, eta=eta,
                               spacing=spacing, clip=None)
    return z0, decode(params["autoencoder"], z0, cfg)


# ----------------------------------------------------------------------------- evaluation


def evaluate(params, batch, key, cfg: Config) -> dict:
    """Sums over a held-out image batch: the denoising MSE on the scaled latents at random noise levels
    ('mse'), the autoencoder's per-pixel squared reconstruction error ('recon_mse'), and 'count'."""
    ae = params["autoencoder"]
    latents = encode(ae, batch["image"], cfg)
    dcfg = diffusion_config(cfg)
    xt, t, _, target = diffusion.noised(latents, *jax.random.split(key), dcfg)
    labels = jnp.asarray(batch["label"], jnp.int32) if dcfg.num_classes else None
    out = diffusion.apply(params["diffusion"], xt, t, labels, dcfg)
    axes = tuple(range(1, latents.ndim))
    recon = decode(ae, latents, cfg)
    recon_mse = jnp.mean(jnp.square(recon - batch["image"]), axis=tuple(range(1, recon.ndim)))
    return {"mse": jnp.sum(jnp.mean(jnp.square(out - target), axis=axes)), "recon_mse": jnp.sum(recon_mse),
            "count": latents.shape[0]}
