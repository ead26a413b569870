"""A minimal model family: independent Gaussian pixels. Everything a new family writes, and nothing more.

It meets docs/CONTRACT.md, so the shared trainer, checkpoints, sharding and tests take it as it is:

    from genjax import train
    params = init(jax.random.key(0), cfg)
    step = train.step_for(functools.partial(loss, cfg=cfg), train.TrainConfig(lr=1e-2))
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from genjax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Config:
    image_shape: tuple[int, ...] = (8, 8, 1)
    min_std: float = 0.01  # floor of each pixel's standard deviation

    def validate(self):
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ConfigError(f"model.image_shape={self.image_shape} must be (H, W, C) with positive sizes")
        if not self.min_std > 0:
            raise ConfigError(f"model.min_std={self.min_std} must be > 0")


SIZES = {"digits": Config(), "mnist": Config(image_shape=(28, 28, 1))}


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    temperature: float = 1.0  # scales the standard deviation

    def validate(self, cfg: Config):
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0")


def init(key: jax.Array, cfg: Config) -> dict:
    cfg.validate()
    return {"mean": jnp.full(cfg.image_shape, 0.5), "log_std": jnp.zeros(cfg.image_shape)}


def _nll(params, images, cfg: Config) -> jax.Array:
    """Per-example negative log-likelihood (nats) of images under the pixel Gaussians."""
    std = jnp.exp(params["log_std"]) + cfg.min_std
    z = (images - params["mean"]) / std
    return jnp.sum(0.5 * z**2 + jnp.log(std) + 0.5 * math.log(2 * math.pi), axis=(1, 2, 3))


def loss(params, batch, key, cfg: Config, step=None):
    nll = jnp.mean(_nll(params, batch["image"], cfg))
    return nll, {"nll": nll}


def sample(params, key, num: int, cfg: Config, options: SampleOptions = SampleOptions()) -> jax.Array:
    options.validate(cfg)
    std = (jnp.exp(params["log_std"]) + cfg.min_std) * options.temperature
    return jnp.clip(params["mean"] + std * jax.random.normal(key, (num, *cfg.image_shape)), 0.0, 1.0)


def evaluate(params, batch, key, cfg: Config) -> dict:
    return {"nll": jnp.sum(_nll(params, batch["image"], cfg)), "count": batch["image"].shape[0]}
