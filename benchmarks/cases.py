"""What benchmarks/ trains and samples, per model family and size. A case builds what the experiments
train (the family's init and loss through `genjax.train`, or the GAN's own step), so the numbers
describe the real code path."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from benchmarks import timing
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
    flops_twin: dict | None = None  # XLA counts a loop body once: FLOPs of this unrolled twin (same math)

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * (self.model.block_size if self.text else 1)


_replace = dataclasses.replace
_GAN = train.TrainConfig(lr=2e-4, b1=0.5, ema_decay=0.999, ema_warmup=True)  # gan_digits' optimizer
_EMA, _GPT = train.TrainConfig(lr=1e-3, ema_decay=0.999), train.TrainConfig(lr=3e-4)
CASES = {  # family -> benchmark size ('cpu': the 2-core VM, 'gpu': one large accelerator) -> Case
    "vae": {"cpu": Case("vae", vae.SIZES["digits"], 128), "gpu": Case("vae", vae.SIZES["cifar10"], 256)},
    "gan": {"cpu": Case("gan", gan.SIZES["digits"], 64, _GAN),
            "gpu": Case("gan", _replace(gan.SIZES["digits"], image_shape=(64, 64, 3)), 256, _GAN)},
    "diffusion": {"cpu": Case("diffusion", diffusion.SIZES["digits"], 64, _EMA),
                  "gpu": Case("diffusion", _replace(diffusion.SIZES["cifar10"], dtype="bfloat16"), 128,
                              _EMA)},
    "transformer": {
        "cpu": Case("transformer", _replace(transformer.SIZES["nanogpt-cpu"], vocab_size=96), 12, _GPT, True),
        "gpu": Case("transformer", _replace(transformer.SIZES["gpt2"], dtype="bfloat16"), 16, _GPT, True,
                    flops_twin={"scan_layers": False})},
}


def gpt(**overrides) -> transformer.Config:
    """nanoGPT's CPU config at its shakespeare_char vocabulary (65): bench_gpt's model."""
    return _replace(transformer.SIZES["nanogpt-cpu"], vocab_size=65, **overrides)


def unet(**overrides) -> diffusion.Config:
    """The digits U-Net of experiments/diffusion_digits.py: bench_unet's model."""
    return _replace(diffusion.SIZES["digits"], **overrides)


def init_state(name: str, cfg, tcfg: train.TrainConfig, keys=None) -> train.TrainState:
    """The experiments' initial state; `keys` = (init key, state key), by default split from key 0."""
    init_key, state_key = jax.random.split(jax.random.key(0)) if keys is None else keys
    params = FAMILIES[name].init(init_key, cfg)
    if name == "gan":  # two players, two optimizers
        return gan.init_state(state_key, params, cfg, tcfg)
    return train.init_state(state_key, params, train.make_optimizer(tcfg), ema=tcfg.ema_decay > 0)


def train_step(name: str, cfg, tcfg: train.TrainConfig):  # the GAN has its own two-player step
    return gan.make_step(cfg, tcfg) if name == "gan" else train.step_for(
        functools.partial(FAMILIES[name].loss, cfg=cfg), tcfg)


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


def timed_step(case: Case) -> tuple:
    """(run(k): k train steps, compile seconds, FLOPs per step, initial params on the host, the batch)."""
    flops = timing.flops(*step_flops_args(case))
    state, step, batch = build(case)
    params = jax.device_get(state.params)  # before the timed steps donate them
    return (*timing.stepper(step, state, [jax.device_put(batch)]), flops, params, batch)


def sampling(name: str, size: str, quick: bool) -> list[tuple]:
    """(what, setting, items per call, timed calls, draw) of each sampling benchmark of a family."""
    cfg = CASES[name][size].model
    params = FAMILIES[name].init(jax.random.key(0), cfg)
    draw = lambda num, options: lambda: FAMILIES[name].sample(  # noqa: E731
        params, jax.random.key(1), num, cfg, options)
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
