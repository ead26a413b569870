"""The VAE trained against a discriminator (the VQGAN / Stable Diffusion autoencoder recipe), composed of
the `vae` and `gan` families' public functions: the autoencoder's loss is `vae.loss` plus a weighted
`gan.g_loss_term` of the GAN family's discriminator on its reconstructions, and D learns real images
against those reconstructions with `gan.d_objective`.

    params = vae_gan.init(key, cfg)     # {'autoencoder': vae params, 'discriminator': {'params', ...}}
    state = vae_gan.init_state(key, params, cfg, train_cfg)
    step = vae_gan.make_step(cfg, train_cfg)                     # two players, genjax.train's pieces
    images = vae_gan.sample(params, key, num, cfg)               # the VAE's (params['autoencoder'])

`Config` is `vae.Config` plus the adversarial fields, so every `vae` function takes it as it is. The
reconstruction D sees is the decoder's mean image (`vae.mean_image`) at the posterior sample `vae.loss`
drew. Its weight is `adv_weight`, or with `adv_adaptive` VQGAN's adaptive weight: adv_weight *
||grad L_vae|| / (||grad L_adv|| + 1e-4), both gradients at the decoder's last kernel (`last_layer`),
clipped to [0, 1e4], no gradient through it. Before step `adv_start` the adversarial term is 0 and D
keeps its weights (the step still computes D's update and drops it: jnp.where, not lax.cond, whose conv
gradients XLA:CPU runs slowly), so the autoencoder trains exactly as the VAE does.

The step: one D update (hinge or non-saturating loss, spectral norm, learning rate train.lr *
d_lr_scale), then one autoencoder update against the updated D, on the same batch; the autoencoder's
randomness is the plain VAE step's (`train.step_key`). An autoencoder of this family serves latent
diffusion like a VAE's (`experiments/latent_diffusion.py --autoencoder`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from genjax import train
from genjax.config import ConfigError, check_at_least
from genjax.models import gan, vae
from genjax.train import TrainState


@dataclasses.dataclass(frozen=True)
class Config(vae.Config):
    adv_weight: float = 0.5  # lambda: the adversarial term's weight (the adaptive weight's scale)
    adv_adaptive: bool = True  # VQGAN's: lambda * ||grad L_vae|| / ||grad L_adv|| at the last layer
    adv_start: int = 0  # steps of plain VAE training before D and the adversarial term switch on
    adv_loss: Literal["hinge", "nonsat"] = "hinge"
    disc_widths: tuple[int, ...] = (64, 32)  # the GAN family's dcgan D (low resolution -> high)
    disc_spectral_norm: bool = True
    d_lr_scale: float = 1.0  # D's learning rate = train.lr * d_lr_scale

    def validate(self):
        super().validate()
        if not self.adv_weight >= 0:
            raise ConfigError(f"model.adv_weight={self.adv_weight} must be >= 0 (0: the plain VAE)")
        check_at_least(self, "model", ("adv_start",), 0, hint=" (0: adversarial from the first step)")
        if not self.disc_widths or any(w < 1 for w in self.disc_widths):
            raise ConfigError(f"model.disc_widths={self.disc_widths} must be a non-empty list of positive "
                              "ints")
        if not self.d_lr_scale > 0:
            raise ConfigError(f"model.d_lr_scale={self.d_lr_scale} must be > 0")
        scale = 2 ** (len(self.disc_widths) - 1)
        if self.image_shape[0] % scale or self.image_shape[1] % scale:
            raise ConfigError(f"model.disc_widths={self.disc_widths}: D halves the resolution "
                              f"{len(self.disc_widths) - 1} times, so H and W of {self.image_shape} must "
                              f"divide by {scale}; use fewer widths")
        gan_config(self).validate()


def with_adversary(ae: vae.Config, **adversary) -> Config:
    """A vae.Config's autoencoder with the adversarial fields (`adversary`, else their defaults)."""
    return Config(**{f.name: getattr(ae, f.name) for f in dataclasses.fields(vae.Config)}, **adversary)


def vae_config(cfg: Config) -> vae.Config:
    """The autoencoder's own vae.Config (the adversarial fields dropped): what a plain VAE run records."""
    return vae.Config(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(vae.Config)})


def gan_config(cfg: Config) -> gan.Config:
    """The discriminator's gan.Config (unconditional dcgan D on cfg.image_shape)."""
    return gan.Config(arch="dcgan", image_shape=tuple(cfg.image_shape), widths=tuple(cfg.disc_widths),
                      loss=cfg.adv_loss, spectral_norm=cfg.disc_spectral_norm, d_lr_scale=cfg.d_lr_scale,
                      dtype=cfg.dtype)


SIZES = {
    # vae.SIZES' latent-diffusion autoencoders: 8x8x1 -> 4x4x2 and 28x28x1 -> 7x7x4, each with a small D
    "digits": with_adversary(vae.SIZES["digits-latent"]),
    "mnist": with_adversary(vae.SIZES["mnist-latent"], disc_widths=(64, 32, 16)),
}

SampleOptions = vae.SampleOptions


# ----------------------------------------------------------------------------- params and state


def init(key: jax.Array, cfg: Config) -> dict:
    """{'autoencoder': vae params, 'discriminator': {'params': D params[, 'spectral': u vectors]}}."""
    cfg.validate()
    k_ae, k_d, k_u = jax.random.split(key, 3)
    return {"autoencoder": vae.init(k_ae, cfg),
            "discriminator": gan.init_discriminator(k_d, k_u, gan_config(cfg))}


def optimizers(cfg: Config, train_cfg: train.TrainConfig) -> dict[str, optax.GradientTransformation]:
    """The GAN family's two optimizers, the generator's serving the autoencoder."""
    txs = gan.optimizers(gan_config(cfg), train_cfg)
    return {"autoencoder": txs["generator"], "discriminator": txs["discriminator"]}


def init_state(key: jax.Array, params: dict, cfg: Config, train_cfg: train.TrainConfig) -> TrainState:
    """A fresh two-player state (opt_state keyed by player); `key` must be a typed key."""
    txs = optimizers(cfg, train_cfg)
    trained = {"autoencoder": params["autoencoder"], "discriminator": params["discriminator"]["params"]}
    state = train.init_state(key, params, optax.identity(), ema=train_cfg.ema_decay > 0)
    return state.replace(opt_state={name: txs[name].init(p) for name, p in trained.items()})


# ----------------------------------------------------------------------------- the two losses


def last_layer(cfg: Config) -> tuple[str, ...]:
    """Path of the decoder's last kernel in the autoencoder's params, where the adaptive weight compares
    the gradients of the two losses."""
    return ("decoder", "out" if cfg.arch == "conv" else f"dense{len(cfg.hidden)}", "kernel")


def _get(tree, path):
    return tree if not path else _get(tree[path[0]], path[1:])


def _replace(tree, path, value):
    return value if not path else {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def _model_space(images):
    return images * 2.0 - 1.0  # the GAN family's D sees images in [-1, 1]


def adaptive_weight(vae_grad, adv_grad, scale):
    """VQGAN's adaptive weight: scale * ||vae_grad|| / (||adv_grad|| + 1e-4), clipped to [0, 1e4], a
    constant (no gradient)."""
    ratio = optax.tree.norm(vae_grad) / (optax.tree.norm(adv_grad) + 1e-4)
    return jax.lax.stop_gradient(scale * jnp.clip(ratio, 0.0, 1e4))


def autoencoder_loss(ae_params, batch, key, *, d_weights, active, step, cfg: Config):
    """`vae.loss` + weight * `gan.g_loss_term` of D (fixed `d_weights`) on the reconstructions; the weight
    is 0 where `active` is False. Metrics: vae's, 'vae_loss', 'adv' (the adversarial term), 'adv_weight'."""
    gcfg = gan_config(cfg)

    def losses(kernel):  # both losses as functions of the decoder's last kernel
        p = _replace(ae_params, last_layer(cfg), kernel)
        objective, metrics, out = vae.loss_and_output(p, batch, key, cfg, step)
        fake_logits = gan.d_apply(d_weights, _model_space(vae.mean_image(p, out, cfg)), None, gcfg)
        return (objective, gan.g_loss_term(fake_logits, gcfg)), {**metrics, "g_fake": jnp.mean(fake_logits)}

    kernel = _get(ae_params, last_layer(cfg))
    if cfg.adv_adaptive:
        (objective, adv), grads_of, metrics = jax.vjp(losses, kernel, has_aux=True)
        one, zero = jnp.ones_like(objective), jnp.zeros_like(objective)
        weight = adaptive_weight(grads_of((one, zero)), grads_of((zero, one)), cfg.adv_weight)
    else:
        (objective, adv), metrics = losses(kernel)
        weight = jnp.asarray(cfg.adv_weight, jnp.float32)
    weight = jnp.where(active, weight, 0.0)
    loss = objective + weight * adv
    return loss, {**metrics, "vae_loss": objective, "adv": adv, "adv_weight": weight, "ae_loss": loss}


def discriminator_loss(d_params, batch, key, spectral_u, *, d_iter, cfg: Config):
    """D's loss on {'real', 'fake'} (model-space images): `gan.d_objective` with the refreshed u vectors."""
    gcfg = gan_config(cfg)
    weights, _ = gan.d_weights({"params": d_params, "spectral": spectral_u}, gcfg)
    return gan.d_objective(weights, batch["real"], batch["fake"], None, key, d_iter, gcfg)


# ----------------------------------------------------------------------------- the two-player step


def make_step(cfg: Config, train_cfg: train.TrainConfig):
    """The pure, jit-able two-player step `step(state, batch) -> (state, metrics)`."""
    cfg.validate()
    gcfg, txs, accum = gan_config(cfg), optimizers(cfg, train_cfg), train_cfg.grad_accum

    def step(state: TrainState, batch) -> tuple[TrainState, dict]:
        key = train.step_key(state)  # the autoencoder's, as the plain VAE step draws it
        active = state.step >= cfg.adv_start
        params, opt_state = state.params, state.opt_state
        # D: the real images against the current autoencoder's reconstructions
        _, _, out = vae.loss_and_output(params["autoencoder"], batch, key, cfg, state.step)
        fake = jax.lax.stop_gradient(vae.mean_image(params["autoencoder"], out, cfg))
        d_batch = {"real": _model_space(batch["image"]), "fake": _model_space(fake)}
        d_fn = functools.partial(discriminator_loss, d_iter=state.step, cfg=cfg)
        disc, d_opt, d_ok, d_metrics = gan.discriminator_update(
            txs["discriminator"], params["discriminator"], opt_state["discriminator"], d_fn, d_batch,
            jax.random.fold_in(key, 1), accum, gcfg)
        disc, d_opt = train.guarded_update(active, (disc, d_opt),
                                           (params["discriminator"], opt_state["discriminator"]))
        # the autoencoder against the updated D
        d_fixed = jax.lax.stop_gradient(gan.d_weights(disc, gcfg)[0])
        ae_fn = functools.partial(autoencoder_loss, d_weights=d_fixed, active=active, step=state.step,
                                  cfg=cfg)
        ae, ae_opt, ae_ok, ae_metrics = train.update_player(
            txs["autoencoder"], params["autoencoder"], opt_state["autoencoder"], ae_fn, batch, key, accum)
        params = {"autoencoder": ae, "discriminator": disc}
        ema = train.update_ema(state.ema_params, params, train_cfg.ema_decay, state.step,
                               train_cfg.ema_warmup)
        new = state.replace(params=params, opt_state={"autoencoder": ae_opt, "discriminator": d_opt},
                            ema_params=ema)
        metrics = {**d_metrics, **ae_metrics, "loss": ae_metrics["ae_loss"]}
        return train.finish_step(state, new, ae_ok & (d_ok | ~active), metrics)

    return step


# ----------------------------------------------------------------------------- evaluation and sampling


def evaluate(params, batch, key, cfg: Config) -> dict:
    """`vae.evaluate`'s sums plus D's logits on the real images and their reconstructions (posterior
    mean) and how many of each D classifies right (logit sign)."""
    gcfg = gan_config(cfg)
    weights = gan.d_weights(params["discriminator"], gcfg)[0]
    recon = vae.reconstruct(params["autoencoder"], batch["image"], cfg)
    real_logits = gan.d_apply(weights, _model_space(batch["image"]), None, gcfg)
    fake_logits = gan.d_apply(weights, _model_space(recon), None, gcfg)
    return {**vae.evaluate(params["autoencoder"], batch, key, cfg), "d_real": jnp.sum(real_logits),
            "d_fake": jnp.sum(fake_logits), "d_correct": jnp.sum(real_logits > 0) + jnp.sum(fake_logits < 0)}


def sample(params, key, num: int, cfg: Config, options: SampleOptions = SampleOptions()) -> jax.Array:
    """The autoencoder's decoded prior samples (`vae.sample`), float32 (num, H, W, C) in [0, 1]."""
    return vae.sample(params["autoencoder"], key, num, cfg, options)


def reconstruct(params, images, cfg: Config) -> jax.Array:
    """`vae.reconstruct` of the autoencoder: the decoder's mean at the posterior mean."""
    return vae.reconstruct(params["autoencoder"], images, cfg)


def interpolate(params, image_a, image_b, num: int, cfg: Config, method: str = "slerp") -> jax.Array:
    """`vae.interpolate` of the autoencoder."""
    return vae.interpolate(params["autoencoder"], image_a, image_b, num, cfg, method)
