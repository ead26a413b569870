"""Model families, each a module of pure functions over pytrees that meets one contract (docs/CONTRACT.md):

    Config, SIZES          typed hyperparameters (`validate()`), named configurations
    init(key, cfg)         -> params (plain dict pytree)
    loss(params, batch, key, cfg, step) -> (loss, metrics)        (gan, vae_gan: make_step(cfg, train_cfg))
    SampleOptions          typed sampling options (`validate(cfg)`), the sample CLI's flags
    sample(params, key, num, cfg, options) -> samples
    evaluate(params, batch, key, cfg) -> per-batch sums, with 'count'
"""

from __future__ import annotations

import importlib
from types import ModuleType

import jax.numpy as jnp
import numpy as np

from genjax.config import ConfigError

FAMILIES = ("vae", "gan", "vae_gan", "diffusion", "transformer", "latent_diffusion", "text_to_image")
CONTRACT = ("Config", "SIZES", "init", "SampleOptions", "sample", "evaluate")


def get(family: str) -> ModuleType:
    """The family module by name (imported on demand, so unused families cost nothing at import)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"genjax.models.{family}")


def check_labels(labels: tuple[int, ...], num_classes: int, allow_null: bool = False) -> None:
    """Refuses sample labels a model of `num_classes` classes cannot draw (ConfigError, one line)."""
    if labels and not num_classes:
        raise ConfigError("labels were given but the model is unconditional (model.num_classes=0); "
                          "drop --labels")
    top = num_classes if allow_null else num_classes - 1
    bad = [v for v in labels if not 0 <= v <= top]
    if bad:
        null = f" ({num_classes} = unconditional)" if allow_null else ""
        raise ConfigError(f"labels {bad} are out of range: use 0..{top}{null}")


def cycle_labels(labels: tuple[int, ...], num: int, num_classes: int):
    """int32 (num,) labels: `labels` repeated cyclically, or 0, 1, ..., num_classes - 1, 0, ... when empty;
    None for an unconditional model."""
    if not num_classes:
        return None
    base = np.asarray(labels, np.int32) if labels else np.arange(num_classes, dtype=np.int32)
    return jnp.asarray(np.resize(base, num))
