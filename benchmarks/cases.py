"""Every use of the model families' API in benchmarks/, declared per family and size: when a family's
API changes, this file follows it. A case builds what the experiments train (the family's init and loss
through `genjax.train`, or the GAN's own step), so the numbers describe the real code path."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from genjax import train
from genjax.models import diffusion, gan, transformer, vae

FAMILIES = {"vae": vae, "gan": gan, "diffusion": diffusion, "transformer": transformer}


@dataclasses.dataclass(frozen=True)
class Case:
    """One train step to time: a family's model config, batch size and optimizer."""

    family: str
    model: Any  # the family's Config
    batch_size: int
    train: train.TrainConfig = train.TrainConfig(lr=1e-3)
    text: bool = False  # token batches of model.block_size + 1 (else images of model.image_shape)
    tensor_parallel: bool = False  # the family has MODEL_RULES: scaling also tries a `model` axis
    flops_twin: dict | None = None  # XLA counts a loop body once: FLOPs of this unrolled twin (same math)

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * (self.model.block_size if self.text else 1)


_replace = dataclasses.replace
_GAN = train.TrainConfig(lr=2e-4, b1=0.5, ema_decay=0.999, ema_warmup=True)  # gan_digits' optimizer
_EMA = train.TrainConfig(lr=1e-3, ema_decay=0.999)
_GPT = dict(train=train.TrainConfig(lr=3e-4), text=True, tensor_parallel=True)
CASES = {  # family -> benchmark size ('cpu': the 2-core VM, 'gpu': one large accelerator) -> Case
    "vae": {"cpu": Case("vae", vae.SIZES["digits"], 128), "gpu": Case("vae", vae.SIZES["cifar10"], 256)},
    "gan": {"cpu": Case("gan", gan.SIZES["digits"], 64, _GAN),
            "gpu": Case("gan", _replace(gan.SIZES["digits"], image_shape=(64, 64, 3)), 256, _GAN)},
    "diffusion": {"cpu": Case("diffusion", diffusion.SIZES["digits"], 64, _EMA),
                  "gpu": Case("diffusion", _replace(diffusion.SIZES["cifar10"], dtype="bfloat16"), 128,
                              _EMA)},
    "transformer": {"cpu": Case("transformer", _replace(transformer.SIZES["nanogpt-cpu"], vocab_size=96), 12,
                                **_GPT),
                    "gpu": Case("transformer", _replace(transformer.SIZES["gpt2"], dtype="bfloat16"), 16,
                                **_GPT, flops_twin={"scan_layers": False})},
}
SAMPLER_FAMILIES = ("diffusion",)  # sampler_quality gives these a row per sampler and step count


def init(name: str, cfg, seed: int = 0):
    return FAMILIES[name].init(jax.random.key(seed), cfg)


def init_state(name: str, cfg, tcfg: train.TrainConfig, keys=None) -> train.TrainState:
    """The experiments' initial state; `keys` = (init key, state key), by default split from key 0."""
    init_key, state_key = jax.random.split(jax.random.key(0)) if keys is None else keys
    params = FAMILIES[name].init(init_key, cfg)
    if name == "gan":  # two players, two optimizers
        return gan.init_state(state_key, params, cfg, tcfg)
    return train.init_state(state_key, params, train.make_optimizer(tcfg), ema=tcfg.ema_decay > 0)


def train_step(name: str, cfg, tcfg: train.TrainConfig):
    if name == "gan":
        return gan.make_step(cfg, tcfg)
    return train.step_for(functools.partial(FAMILIES[name].loss, cfg=cfg), tcfg)


def build(case: Case, seed: int = 0) -> tuple[train.TrainState, Any, dict]:
    """(initial state, train step, a batch of random data) of a case."""
    rng, b, m = np.random.default_rng(seed), case.batch_size, case.model
    if case.text:
        batch = {"tokens": rng.integers(0, m.vocab_size, (b, m.block_size + 1), dtype=np.int32)}
    else:
        batch = {"image": rng.uniform(size=(b, *m.image_shape)).astype(np.float32),
                 "label": rng.integers(0, 10, b, dtype=np.int32)}
    return init_state(case.family, m, case.train), train_step(case.family, m, case.train), batch


def step_flops_args(case: Case) -> tuple:
    """(step, abstract state, batch): what XLA lowers to count a step's FLOPs (of the unrolled twin)."""
    if case.flops_twin:
        case = _replace(case, model=_replace(case.model, **case.flops_twin))
    state = jax.eval_shape(lambda: init_state(case.family, case.model, case.train))
    return train_step(case.family, case.model, case.train), state, build(case)[2]


def model_rules(name: str) -> dict:
    return FAMILIES[name].MODEL_RULES


def sampling(name: str, size: str, quick: bool) -> list[tuple]:
    """(what, setting, items per call, timed calls, draw) of each sampling benchmark of a family."""
    cfg = CASES[name][size].model
    params = init(name, cfg)
    draw = lambda num, options: lambda: FAMILIES[name].sample(params, jax.random.key(1), num, cfg, options)  # noqa
    if name == "diffusion":
        num = 64 if size == "cpu" else 256
        settings = ((("dpm++2m", 20), ("ddim", 50)) if quick else
                    (("dpm++2m", 10), ("dpm++2m", 20), ("ddim", 50), ("ddpm", 1000)))
        return [(f"{s} sample", f"{n} steps, batch {num}", num, 1 if n >= 1000 else 3,
                 draw(num, diffusion.SampleOptions(sampler=s, steps=n))) for s, n in settings]
    if name == "transformer":
        new = min(48 if quick else cfg.block_size - 16, cfg.block_size - 16)
        options = transformer.SampleOptions(prompt=(0,) * 8, length=new)
        return [("KV-cache generate", f"{new} tokens, batch {b}", b * new, 3, draw(b, options))
                for b in ((1,) if quick else (1, 8))]
    return []


def image_sampler(name: str, params, cfg, sampler: str, steps: int, labels: tuple[int, ...]):
    """sampler_quality's `draw(key, num)` for an image run: the sampler setting (diffusion), and `labels` for
    conditional models."""
    options = {"vae": lambda: vae.SampleOptions(),
               "gan": lambda: gan.SampleOptions(labels=labels if cfg.num_classes else ()),
               "diffusion": lambda: diffusion.SampleOptions(sampler=sampler, steps=steps,
                                                            labels=labels if cfg.num_classes else ())}
    if name not in options:
        raise SystemExit(f"sampler_quality scores image runs ({', '.join(options)}), not a {name} run")
    return lambda key, num: np.asarray(FAMILIES[name].sample(params, key, num, cfg, options[name]()))


# ----------------------------------------------------------------------------- the side-by-side benchmarks


def gpt(**overrides) -> transformer.Config:
    """nanoGPT's CPU config at its shakespeare_char vocabulary (65): bench_gpt's model."""
    return _replace(transformer.SIZES["nanogpt-cpu"], vocab_size=65, **overrides)


gpt_flops_per_token, num_params = transformer.flops_per_token, transformer.num_params


def gpt_generate(params, key, prompt: np.ndarray, new_tokens: int, cfg) -> jax.Array:
    return transformer.generate(params, key, prompt, None, new_tokens, cfg)[0]


def gpt_logits(params, tokens, cfg) -> jax.Array:
    return transformer.forward(params, tokens, cfg)


def gpt_nll_sum(params, tokens, cfg) -> jax.Array:
    return transformer.evaluate(params, {"tokens": tokens}, None, cfg)["nll"]


def unet(**overrides) -> diffusion.Config:
    """The digits U-Net of experiments/diffusion_digits.py: bench_unet's model."""
    return _replace(diffusion.SIZES["digits"], **overrides)


def unet_apply(params, x, t, labels, cfg) -> jax.Array:
    return diffusion.apply(params, x, t, labels, cfg)


def param_shapes(name: str, cfg):
    return jax.eval_shape(functools.partial(FAMILIES[name].init, cfg=cfg), jax.random.key(0))
