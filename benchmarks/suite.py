"""The benchmark cases: one train step per family and size, plus sampling speed.

Each case builds exactly what the experiments train (the family's own init/loss/step through
`genjax.train`), at a CPU size and a GPU size, so the numbers describe the real code path.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax import train
from genjax.models import get as family
from benchmarks import harness


@dataclasses.dataclass
class Case:
    family: str
    size: str
    state: train.TrainState
    step: callable
    batch: dict
    examples_per_step: int
    unit: str = "images"
    # XLA's cost analysis counts a loop body once: a case whose step scans over layers names an
    # unrolled twin (same math) whose compiled cost gives the FLOPs.
    flops_twin: tuple | None = None


def _plain(name: str, size: str, cfg, batch: dict, lr=1e-3, ema=0.0, tx=None) -> Case:
    """The family's own init/loss/step under `tx` (default: Adam at `lr`)."""
    fam = family(name)
    tx = tx or optax.adam(lr)
    k1, k2 = jax.random.split(jax.random.key(0))
    state = train.init_state(k2, fam.init(k1, cfg), tx, ema=ema > 0)
    step = train.make_step(functools.partial(fam.loss, cfg=cfg), tx, ema_decay=ema)
    n = len(next(iter(batch.values())))
    return Case(name, size, state, step, batch, n)


def _images(b, shape, classes=10):
    return {"image": harness.numpy_batch((b, *shape)),
            "label": harness.numpy_batch((b,), np.int32, high=max(classes, 1))}


def vae_case(size: str) -> Case:
    vae = family("vae")
    if size == "cpu":
        cfg, b = vae.Config(), 128
    else:
        cfg, b = vae.Config(arch="conv", image_shape=(32, 32, 3), latent_dim=128, channels=(128, 256, 512),
                            likelihood="gaussian"), 256
    return _plain("vae", size, cfg, _images(b, cfg.image_shape))


def diffusion_case(size: str, tx=None) -> Case:
    diffusion = family("diffusion")
    if size == "cpu":
        cfg, b = diffusion.digits(), 64
    else:
        cfg, b = diffusion.cifar10_ddpm(dtype="bfloat16"), 128
    return _plain("diffusion", size, cfg, _images(b, cfg.image_shape), ema=0.999, tx=tx)


def gan_case(size: str) -> Case:
    gan = family("gan")
    if size == "cpu":
        cfg, b = gan.Config(), 64
    else:
        cfg, b = gan.Config(image_shape=(64, 64, 3)), 256
    state = gan.init_state(jax.random.key(0), cfg)
    return Case("gan", size, state, gan.make_step(cfg), _images(b, cfg.image_shape), b)


def transformer_case(size: str) -> Case:
    tf = family("transformer")
    if size == "cpu":
        cfg, b = tf.config_for("nanogpt-cpu", vocab_size=96), 12
    else:
        cfg, b = tf.config_for("gpt2", dtype="bfloat16"), 16
    batch = {"tokens": harness.numpy_batch((b, cfg.block_size + 1), np.int32, high=cfg.vocab_size)}
    case = _plain("transformer", size, cfg, batch, lr=3e-4)
    case.examples_per_step = b * cfg.block_size
    case.unit = "tokens"
    if cfg.scan_layers:
        twin = _plain("transformer", size, dataclasses.replace(cfg, scan_layers=False), batch, lr=3e-4)
        case.flops_twin = (twin.state, twin.step)
    return case


def step_flops(case: Case) -> float | None:
    """FLOPs of one train step from XLA's cost analysis (of the unrolled twin where there is one)."""
    state, step = case.flops_twin or (case.state, case.step)
    batch = jax.tree.map(jnp.asarray, case.batch)
    return harness.lowered_flops(step, state, batch)


CASES = {"vae": vae_case, "gan": gan_case, "diffusion": diffusion_case, "transformer": transformer_case}


def run_train(case: Case, steps: int, peak: float | None) -> dict:
    n_params = sum(x.size for x in jax.tree.leaves(case.state.params))
    batch = jax.tree.map(jnp.asarray, case.batch)
    flops = step_flops(case)  # before timing: the timed step donates the state's buffers
    timing = harness.time_compiled(case.step, (case.state, batch), steps=steps, donate_first=True)
    timing["flops_per_step"] = flops
    return {
        "family": case.family, "size": case.size, "params": int(n_params),
        "batch": len(next(iter(case.batch.values()))), "unit": case.unit,
        **timing,
        "examples_per_s": case.examples_per_step / timing["step_s_median"],
        "mfu": harness.mfu(timing["flops_per_step"], timing["step_s_median"], peak),
    }


# ----------------------------------------------------------------------------- sampling speed


def _time_call(fn, repeats: int) -> float:
    harness.block(fn())  # compile + warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        harness.block(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def diffusion_sampling(size: str, quick: bool) -> list[dict]:
    diffusion = family("diffusion")
    cfg = diffusion.digits() if size == "cpu" else diffusion.cifar10_ddpm(dtype="bfloat16")
    params = diffusion.init(jax.random.key(0), cfg)
    num = 64 if size == "cpu" else 256
    settings = [("dpm++2m", 20), ("ddim", 50)] if quick else [("dpm++2m", 10), ("dpm++2m", 20), ("ddim", 50),
                                                                ("ddpm", 1000)]
    rows = []
    for sampler, steps in settings:
        s = _time_call(lambda: diffusion.sample(params, jax.random.key(1), num, cfg, sampler=sampler, steps=steps),
                       repeats=1 if steps >= 1000 else 3)
        rows.append({"family": "diffusion", "what": f"{sampler} sample", "setting": f"{steps} steps, batch {num}",
                     "call_s": s, "items_per_s": num / s})
    return rows


def transformer_sampling(size: str, quick: bool) -> list[dict]:
    tf = family("transformer")
    cfg = tf.config_for("nanogpt-cpu", vocab_size=96) if size == "cpu" else tf.config_for("gpt2", dtype="bfloat16")
    params = tf.init(jax.random.key(0), cfg)
    rows = []
    new = min(48 if quick else cfg.block_size - 16, cfg.block_size - 16)
    for batch in ((1,) if quick else (1, 8)):
        prompt = jnp.zeros((batch, 8), jnp.int32)
        s = _time_call(lambda: tf.generate(params, jax.random.key(0), prompt, max_new_tokens=new, cfg=cfg),
                       repeats=3)
        rows.append({"family": "transformer", "what": "KV-cache generate", "setting": f"{new} tokens, batch {batch}",
                     "call_s": s, "items_per_s": batch * new / s})
    return rows


SAMPLING = {"diffusion": diffusion_sampling, "transformer": transformer_sampling}
