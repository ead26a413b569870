"""Every model family meets docs/CONTRACT.md: the same names, signatures and shapes, and one train step
through the shared pieces. The minimal example family of the docs is checked the same way."""

import dataclasses
import functools
import importlib.util
import inspect
import os
import sys
import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import config as config_lib
from genjax import models, train
from genjax.config import ConfigError

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "pixel_gaussian.py")


def _example():
    spec = importlib.util.spec_from_file_location("pixel_gaussian", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pixel_gaussian"] = module  # dataclasses resolve string annotations through it
    spec.loader.exec_module(module)
    return module


def _tiny(name, family):
    """A small config of each family (tests run in seconds) and a matching batch of 4."""
    rng = np.random.default_rng(0)
    images = {"image": rng.random((4, 8, 8, 1), np.float32), "label": np.arange(4, dtype=np.int32) % 3}
    if name == "transformer":
        cfg = dataclasses.replace(family.SIZES["nanogpt-cpu"], vocab_size=11, n_layer=1, d_model=16, n_head=2,
                                  block_size=8)
        return cfg, {"tokens": rng.integers(0, 11, (4, 9)).astype(np.int32)}
    if name == "gan":
        return dataclasses.replace(family.SIZES["digits"], widths=(16, 8), latent_dim=4, num_classes=3), images
    if name == "vae":
        return dataclasses.replace(family.SIZES["digits"], hidden=(16,), latent_dim=2, iwae_samples=2), images
    if name == "vae_gan":  # 8x8x1 -> 4x4x1 latents, a two-width D
        return dataclasses.replace(family.SIZES["digits"], channels=(8,), latent_channels=1, iwae_samples=2,
                                   disc_widths=(8, 4)), images
    if name == "diffusion":
        return dataclasses.replace(family.SIZES["digits"], channels=8, num_groups=4, num_classes=3,
                                   channel_mults=(1,), attn_resolutions=(), timesteps=50), images
    if name == "latent_diffusion":  # 8x8x1 -> 4x4x1 latents
        return dataclasses.replace(family.SIZES["digits"], ae_channels=(8,), ae_latent_channels=1, channels=8,
                                   num_groups=4, num_classes=3, channel_mults=(1,), attn_resolutions=(),
                                   timesteps=50), images
    if name == "text_to_image":  # a one-layer encoder, cross-attention at 8x8 only
        cfg = dataclasses.replace(family.SIZES["digits"], channels=8, num_groups=4, channel_mults=(1,),
                                  attn_resolutions=(), context_resolutions=(8,), context_head_dim=8,
                                  text_width=16, text_heads=2, text_layers=1, timesteps=50)
        return cfg, {**images, "tokens": family.tokenize(["seven", "a thin one", "", "2, thick stroke"], cfg)}
    return family.SIZES["digits"], images


FAMILIES = [(name, lambda name=name: models.get(name)) for name in models.FAMILIES] + [("example", _example)]


@pytest.fixture(params=FAMILIES, ids=[name for name, _ in FAMILIES])
def family(request):
    name, load = request.param
    return name, load()


def test_names_and_configs(family):
    name, fam = family
    for attr in models.CONTRACT:
        assert hasattr(fam, attr), f"{name} lacks {attr}"
    for cls in (fam.Config, fam.SampleOptions):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert fam.SIZES and all(isinstance(c, fam.Config) for c in fam.SIZES.values())
    for cfg in fam.SIZES.values():
        cfg.validate()
    # every field is a type the typed command line parses (configs and the sample CLI's options)
    for cls in (fam.Config, fam.SampleOptions):
        for key, value in config_lib.flatten(cls()).items():
            typ = typing.get_type_hints(cls)[key]
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            assert config_lib._convert(key, typ, text) == value, (name, key)
    assert list(inspect.signature(fam.sample).parameters) == ["params", "key", "num", "cfg", "options"]
    assert list(inspect.signature(fam.evaluate).parameters) == ["params", "batch", "key", "cfg"]
    assert list(inspect.signature(fam.SampleOptions.validate).parameters) == ["self", "cfg"]


def test_bad_config_is_a_config_error(family):
    name, fam = family
    field = {"transformer": "n_layer", "gan": "latent_dim", "vae": "latent_dim", "vae_gan": "d_lr_scale",
             "diffusion": "channels", "latent_diffusion": "channels", "text_to_image": "channels",
             "example": "min_std"}[name]
    with pytest.raises(ConfigError, match=f"model.{field}"):
        dataclasses.replace(fam.SIZES[next(iter(fam.SIZES))], **{field: 0}).validate()


def test_init_sample_evaluate_and_one_train_step(family):
    name, fam = family
    cfg, batch = _tiny(name, fam)
    params = fam.init(jax.random.key(0), cfg)
    leaves = jax.tree.leaves(params)
    assert leaves and all(x.dtype == jnp.float32 for x in leaves)
    chex.assert_trees_all_equal(params, fam.init(jax.random.key(0), cfg))  # a function of the key

    options = fam.SampleOptions(length=5) if name == "transformer" else fam.SampleOptions()
    samples = np.asarray(fam.sample(params, jax.random.key(1), 3, cfg, options))
    if name == "transformer":
        assert samples.dtype == np.int32 and samples.shape == (3, 5)
    else:
        assert samples.dtype == np.float32 and samples.shape == (3, 8, 8, 1)
        assert samples.min() >= 0.0 and samples.max() <= 1.0

    sums = fam.evaluate(params, batch, jax.random.key(2), cfg)
    assert int(sums["count"]) == (4 * 8 if name == "transformer" else 4)
    assert all(np.ndim(v) == 0 and np.isfinite(v) for v in sums.values())

    train_cfg = train.TrainConfig(lr=1e-2, ema_decay=0.9)
    if name in ("gan", "vae_gan"):  # two players: the family's own step
        state = fam.init_state(jax.random.key(3), params, cfg, train_cfg)
        step = fam.make_step(cfg, train_cfg)
    else:
        loss, metrics = fam.loss(params, batch, jax.random.key(3), cfg, step=0)
        assert loss.shape == () and all(np.ndim(v) == 0 for v in metrics.values())
        tx = train.make_optimizer(train_cfg)
        state = train.init_state(jax.random.key(3), params, tx, ema=True)
        step = train.step_for(functools.partial(fam.loss, cfg=cfg), train_cfg, tx)
    new, metrics = jax.jit(step)(state, batch)
    assert int(new.step) == 1 and float(metrics["nonfinite"]) == 0.0
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.params, state.params)
    assert any(jax.tree.leaves(changed))
    assert jax.tree.structure(new.eval_params) == jax.tree.structure(params)  # EMA of every param
