"""Variational autoencoder: q(z|x) = N(mean, diag(exp(logvar))), p(z) = N(0, I) or a learned mixture of
Gaussians, p(x|z) from a decoder.

Pure functions over a params pytree (the family contract, docs/CONTRACT.md):

    params = vae.init(key, cfg)
    loss, metrics = vae.loss(params, batch, key, cfg, step)     # -ELBO per example, beta and KL warm-up
    sums = vae.evaluate(params, batch, key, cfg)                # held-out ELBO and IWAE NLL (sums)
    images = vae.sample(params, key, num, cfg, vae.SampleOptions(temperature=1.0))  # in [0, 1]
    recon = vae.reconstruct(params, images, cfg)
    path = vae.interpolate(params, a, b, num, cfg, method="slerp")

Likelihoods: `bernoulli` on binarized pixels (dynamically binarized in training, a fixed seeded
binarization in evaluation, the standard protocol for likelihoods of MNIST-like data) or `gaussian`
with a learned global scale on the raw [0, 1] pixels.

Priors: `standard` N(0, I) (the KL in closed form), or `mog`, a mixture of `prior_components` diagonal
Gaussians learned with the model (params['prior']; the KL is then the one-sample Monte Carlo estimate
log q(z|x) - log p(z)). A learned prior can follow the aggregate posterior, so prior samples land where the
decoder was trained instead of in the holes between the classes that N(0, I) leaves.

Latents: a vector of `latent_dim`, or with `latent_channels` > 0 (arch `conv`) a spatial map
(H / 2^stages, W / 2^stages, latent_channels), `cfg.latent_shape`, the KL-regularized autoencoder of
latent diffusion (Stable Diffusion's KL-f8 at a small `beta`): 8x8x1 digits with channels (64,) -> 4x4xC,
28x28x1 with channels (32, 64) -> 7x7xC. `encode` returns maps of that shape and `decode` takes them (or
the same numbers flattened); the densities treat the map as one vector of prod(latent_shape) numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.config import ConfigError, check_choices
from genjax.nn.convnet import ConvDecoder, ConvEncoder, downsampled
from genjax.nn import init_params
from genjax.nn.mlp import MLP

LOG_2PI = math.log(2 * math.pi)


@dataclasses.dataclass(frozen=True)
class Config:
    arch: Literal["mlp", "conv"] = "mlp"
    image_shape: tuple[int, ...] = (8, 8, 1)
    latent_dim: int = 16
    latent_channels: int = 0  # > 0: a spatial latent (H / 2^stages, W / 2^stages, C), arch conv
    hidden: tuple[int, ...] = (256, 256)  # MLP widths (mirrored in the decoder)
    channels: tuple[int, ...] = (32, 64)  # conv channels per stride-2 stage
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    prior: Literal["standard", "mog"] = "standard"
    prior_components: int = 10  # mixture components of the `mog` prior
    beta: float = 1.0  # weight of the KL term (beta-VAE)
    kl_warmup_steps: int = 0  # linearly ramp the KL weight from 0 to beta over this many steps
    iwae_samples: int = 256  # importance samples of the held-out NLL estimate (evaluate)
    dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self):
        check_choices(self, "model")
        if len(self.image_shape) != 3:
            raise ConfigError(f"model.image_shape={self.image_shape} must be (H, W, C)")
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim={self.latent_dim} must be >= 1")
        if self.beta < 0:
            raise ConfigError(f"model.beta={self.beta} must be >= 0")
        if self.prior_components < 1:
            raise ConfigError(f"model.prior_components={self.prior_components} must be >= 1")
        if self.iwae_samples < 1 or self.kl_warmup_steps < 0:
            raise ConfigError("model.iwae_samples must be >= 1 and model.kl_warmup_steps >= 0")
        if self.latent_channels < 0:
            raise ConfigError(f"model.latent_channels={self.latent_channels} must be >= 0 (0: a flat latent)")
        if self.latent_channels and (self.arch != "conv" or self.prior != "standard"):
            raise ConfigError(f"model.latent_channels={self.latent_channels} (a spatial latent) needs "
                              "model.arch=conv and model.prior=standard")
        if self.arch == "conv" and not self.channels or self.arch == "mlp" and not self.hidden:
            raise ConfigError(f"model.arch={self.arch!r} needs at least one width "
                              f"(model.{'channels' if self.arch == 'conv' else 'hidden'})")

    @property
    def spatial(self) -> bool:
        return self.latent_channels > 0

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(latent_dim,), or (H / 2^stages, W / 2^stages, latent_channels) for a spatial latent."""
        if not self.spatial:
            return (self.latent_dim,)
        stages = len(self.channels)
        h, w, _ = self.image_shape
        return (downsampled(h, stages), downsampled(w, stages), self.latent_channels)

    @property
    def latent_size(self) -> int:
        return math.prod(self.latent_shape)


SIZES = {
    "digits": Config(prior="mog"),  # 8x8x1, MLP encoder and decoder, a learned 10-component prior
    "mnist": Config(arch="conv", image_shape=(28, 28, 1), latent_dim=32, channels=(32, 64)),
    "cifar10": Config(arch="conv", image_shape=(32, 32, 3), latent_dim=128, channels=(128, 256, 512),
                      likelihood="gaussian"),
    # autoencoders for latent diffusion: spatial latents, Gaussian decoders, a light KL (Stable Diffusion's
    # KL-f8 recipe at these sizes); 8x8x1 -> 4x4x2 and 28x28x1 -> 7x7x4
    "digits-latent": Config(arch="conv", channels=(64,), latent_channels=2, likelihood="gaussian", beta=0.1),
    "mnist-latent": Config(arch="conv", image_shape=(28, 28, 1), channels=(32, 64), latent_channels=4,
                           likelihood="gaussian", beta=0.1),
}


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    temperature: float = 1.0  # scales the prior's spread; below 1 trades diversity for fidelity

    def validate(self, cfg: Config):
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0 (1 samples the prior)")


class VAE(nn.Module):
    cfg: Config

    def setup(self):
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        pixels = math.prod(cfg.image_shape)
        if cfg.arch == "mlp":
            self.encoder = MLP((*cfg.hidden, 2 * cfg.latent_dim), dtype=dtype)
            self.decoder = MLP((*reversed(cfg.hidden), pixels), dtype=dtype)
        else:
            width = cfg.latent_shape[-1]
            self.encoder = ConvEncoder(cfg.channels, 2 * width, dtype=dtype, spatial=cfg.spatial)
            self.decoder = ConvDecoder(cfg.channels, cfg.image_shape, dtype=dtype, spatial=cfg.spatial)
        if cfg.likelihood == "gaussian":
            self.log_scale = self.param("log_scale", nn.initializers.constant(-1.0), ())
        if cfg.prior == "mog":  # components start spread like N(0, I) samples, unit variance, equal weights
            k, d = cfg.prior_components, cfg.latent_dim
            self.prior = {"logits": self.param("prior_logits", nn.initializers.zeros, (k,)),
                          "mean": self.param("prior_mean", nn.initializers.normal(1.0), (k, d)),
                          "logvar": self.param("prior_logvar", nn.initializers.zeros, (k, d))}

    def encode(self, x):
        if self.cfg.arch == "mlp":
            x = x.reshape(x.shape[0], -1)
        h = self.encoder(x).astype(jnp.float32)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, logvar

    def decode(self, z):
        if self.cfg.spatial:
            z = z.reshape(z.shape[0], *self.cfg.latent_shape)
        out = self.decoder(z).astype(jnp.float32)
        return out.reshape(z.shape[0], *self.cfg.image_shape)

    def scale(self):
        return self.log_scale if self.cfg.likelihood == "gaussian" else jnp.zeros(())

    def prior_params(self):
        return self.prior if self.cfg.prior == "mog" else {}

    def __call__(self, x, z):  # touches every submodule, for init
        return self.encode(x), self.decode(z), self.scale(), self.prior_params()


def _module(cfg: Config) -> VAE:
    return VAE(cfg)


def init(key: jax.Array, cfg: Config) -> dict:
    cfg.validate()
    return init_params(_module(cfg), key, jnp.zeros((1, *cfg.image_shape)), jnp.zeros((1, *cfg.latent_shape)))


def encode(params, x, cfg):
    """(mean, logvar) of q(z|x), each (B, *cfg.latent_shape)."""
    return _module(cfg).apply({"params": params}, x, method=VAE.encode)


def decode(params, z, cfg):
    """Decoder outputs (logits or means) (B, H, W, C) for z (B, *cfg.latent_shape) or (B, latent_size)."""
    return _module(cfg).apply({"params": params}, z, method=VAE.decode)


def _flat(x):
    return x.reshape(x.shape[0], -1)


def encode_flat(params, x, cfg):
    """(mean, logvar) of q(z|x) as vectors (B, cfg.latent_size): what the densities work on."""
    mean, logvar = encode(params, x, cfg)
    return _flat(mean), _flat(logvar)


# ----------------------------------------------------------------------------- densities


def kl_normal(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def log_normal(z, mean, logvar):
    return -0.5 * jnp.sum(LOG_2PI + logvar + (z - mean) ** 2 * jnp.exp(-logvar), axis=-1)


def log_prior(params, z, cfg):
    """log p(z), summed over the last axis: N(0, I), or the learned mixture (log-sum-exp over components)."""
    if cfg.prior == "standard":
        return log_normal(z, 0.0, jnp.zeros(()))
    p = _module(cfg).apply({"params": params}, method=VAE.prior_params)
    log_w = jax.nn.log_softmax(p["logits"])
    per_component = log_normal(z[..., None, :], p["mean"], p["logvar"])  # (..., K)
    return jax.nn.logsumexp(log_w + per_component, axis=-1)


def kl_term(params, z, mean, logvar, cfg):
    """KL(q(z|x) || p(z)): closed form for N(0, I), else the one-sample estimate at the drawn z."""
    if cfg.prior == "standard":
        return kl_normal(mean, logvar)
    return log_normal(z, mean, logvar) - log_prior(params, z, cfg)


def prior_sample(params, key, num: int, cfg, temperature=1.0):
    """z ~ p(z) with every component's spread scaled by `temperature`."""
    if cfg.prior == "standard":
        return temperature * jax.random.normal(key, (num, cfg.latent_size))
    p = _module(cfg).apply({"params": params}, method=VAE.prior_params)
    k_pick, k_noise = jax.random.split(key)
    pick = jax.random.categorical(k_pick, p["logits"], shape=(num,))
    eps = jax.random.normal(k_noise, (num, cfg.latent_dim))
    return p["mean"][pick] + temperature * jnp.exp(0.5 * p["logvar"][pick]) * eps


def log_likelihood(params, x, out, cfg):
    """log p(x | z) per example, from the decoder output `out` (logits or means)."""
    axes = tuple(range(1, x.ndim))
    if cfg.likelihood == "bernoulli":
        return jnp.sum(x * jax.nn.log_sigmoid(out) + (1 - x) * jax.nn.log_sigmoid(-out), axis=axes)
    log_scale = _module(cfg).apply({"params": params}, method=VAE.scale)
    return jnp.sum(-0.5 * LOG_2PI - log_scale - 0.5 * ((x - out) * jnp.exp(-log_scale)) ** 2, axis=axes)


def binarize(x, key):
    """Pixels as Bernoulli draws with the pixel intensity as probability (dynamic binarization)."""
    return jax.random.bernoulli(key, x).astype(jnp.float32)


def targets(x, key, cfg):
    """What the likelihood scores: binarized pixels for `bernoulli`, the raw pixels for `gaussian`."""
    return binarize(x, key) if cfg.likelihood == "bernoulli" else x


# ----------------------------------------------------------------------------- objectives


def elbo(params, x, key, cfg):
    """Per-example ELBO terms (log p(x|z) at one reparameterized z, KL) for already-binarized x."""
    recon, kl, _ = _elbo_and_output(params, x, key, cfg)
    return recon, kl


def _elbo_and_output(params, x, key, cfg):
    mean, logvar = encode_flat(params, x, cfg)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    out = decode(params, z, cfg)
    return log_likelihood(params, x, out, cfg), kl_term(params, z, mean, logvar, cfg), out


def loss(params, batch, key, cfg: Config, step=None):
    """Negative ELBO (nats per example), with the KL weighted by beta and ramped over kl_warmup_steps."""
    objective, metrics, _ = loss_and_output(params, batch, key, cfg, step)
    return objective, metrics


def loss_and_output(params, batch, key, cfg: Config, step=None):
    """`loss` and the decoder output (logits or means) at the posterior sample it drew: vae_gan shows
    its mean image (`mean_image`) to a discriminator."""
    data_key, z_key = jax.random.split(key)
    x = targets(batch["image"], data_key, cfg)
    recon, kl, out = _elbo_and_output(params, x, z_key, cfg)
    weight = cfg.beta
    if cfg.kl_warmup_steps and step is not None:
        weight = cfg.beta * jnp.minimum(1.0, step / cfg.kl_warmup_steps)
    objective = -jnp.mean(recon - weight * kl)
    return objective, {"elbo": jnp.mean(recon - kl), "recon": jnp.mean(recon), "kl": jnp.mean(kl)}, out


def iwae_bound(params, x, key, cfg, k: int = 64):
    """log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q: a lower bound on log p(x), tighter as k grows.

    Its negative is the usual IWAE estimate of the NLL; at k=1 it is the ELBO in expectation.
    """
    mean, logvar = encode_flat(params, x, cfg)
    eps = jax.random.normal(key, (k, *mean.shape))
    z = mean + jnp.exp(0.5 * logvar) * eps  # (k, B, D)

    def log_weight(z_i):
        out = decode(params, z_i, cfg)
        log_joint = log_likelihood(params, x, out, cfg) + log_prior(params, z_i, cfg)
        return log_joint - log_normal(z_i, mean, logvar)

    log_w = jax.lax.map(log_weight, z)  # (k, B), one decoder pass per importance sample
    return jax.nn.logsumexp(log_w, axis=0) - math.log(k)


def evaluate(params, batch, key, cfg: Config) -> dict:
    """Sums over a held-out batch (nats): ELBO, IWAE NLL (`cfg.iwae_samples` samples) and KL, on a fixed
    binarization drawn from `key`; divide by 'count' for per-example values."""
    bin_key, elbo_key, iwae_key = jax.random.split(key, 3)
    x = targets(batch["image"], bin_key, cfg)
    recon, kl = elbo(params, x, elbo_key, cfg)
    nll = -iwae_bound(params, x, iwae_key, cfg, cfg.iwae_samples)
    return {"elbo": jnp.sum(recon - kl), "nll_iwae": jnp.sum(nll), "kl": jnp.sum(kl), "count": x.shape[0]}


# ----------------------------------------------------------------------------- generation


def mean_image(params, out, cfg):
    return jax.nn.sigmoid(out) if cfg.likelihood == "bernoulli" else jnp.clip(out, 0.0, 1.0)


def sample(params, key, num: int, cfg: Config, options: SampleOptions = SampleOptions()) -> jax.Array:
    """Decoded prior samples: the decoder's mean image for z ~ p(z) (spread scaled by the temperature),
    float32 (num, H, W, C) in [0, 1]."""
    options.validate(cfg)
    return _sample(params, key, options.temperature, num=num, cfg=cfg)


@functools.partial(jax.jit, static_argnames=("num", "cfg"))
def _sample(params, key, temperature, *, num: int, cfg: Config):
    z = prior_sample(params, key, num, cfg, temperature)
    return mean_image(params, decode(params, z, cfg), cfg)


def reconstruct(params, images, cfg) -> jax.Array:
    """Decoder mean at the posterior mean."""
    mean, _ = encode(params, images, cfg)
    return mean_image(params, decode(params, mean, cfg), cfg)


def slerp(a, b, t):
    """Spherical interpolation, the natural path between two Gaussian latents (keeps their norm)."""
    a_n = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b_n = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    omega = jnp.arccos(jnp.clip(jnp.sum(a_n * b_n, axis=-1, keepdims=True), -1.0, 1.0))
    so = jnp.sin(omega)
    safe = so > 1e-6
    wa = jnp.where(safe, jnp.sin((1 - t) * omega) / jnp.where(safe, so, 1.0), 1 - t)
    wb = jnp.where(safe, jnp.sin(t * omega) / jnp.where(safe, so, 1.0), t)
    return wa * a + wb * b


def interpolate(params, image_a, image_b, num: int, cfg: Config, method: str = "slerp") -> jax.Array:
    """`num` images decoded along the latent path between the posterior means of two images."""
    za, _ = encode_flat(params, image_a[None], cfg)
    zb, _ = encode_flat(params, image_b[None], cfg)
    t = jnp.linspace(0.0, 1.0, num)[:, None]
    z = slerp(za, zb, t) if method == "slerp" else (1 - t) * za + t * zb
    return mean_image(params, decode(params, z, cfg), cfg)
