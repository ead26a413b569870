"""GANs: DCGAN / MLP generator and discriminator, three losses, a pure two-player train step.

State layout (one `genjax.train.TrainState`, checkpointed whole):

    params    = {'generator': G params,
                 'discriminator': {'params': D params,             # trained
                                   'spectral': power-iteration u}} # only with spectral_norm; never trained
    opt_state = {'generator': adam state of G params, 'discriminator': adam state of D['params']}
    ema_params = EMA of the generator's params (None when ema_decay == 0)

`make_step(cfg)` gives `step(state, batch) -> (state, metrics)`: `n_disc` discriminator updates (unrolled),
each on its own slice of the batch (so `batch_size` must divide by `n_disc`), then one generator
update on a batch of the same slice size; the discriminator's spectral-norm vectors advance once per D update.
Losses: 'nonsat' (non-saturating logistic), 'hinge', 'wgan_gp' (critic + gradient penalty). An R1 penalty
(r1_weight/2 * E||grad_x D(x_real)||^2) can be added to any of them, lazily every `r1_every` D updates with its
weight scaled by `r1_every` (StyleGAN2; the `r1` metric averages in the zeros of updates without it). The
generator's EMA warms up (decay min(ema_decay, (1+t)/(10+t))). A step whose losses or gradients are not finite
changes nothing but the step counter and reports `nonfinite=1`. Optimization settings live in this Config
(TTUR: lr_g, lr_d); `check_train_config` refuses the TrainConfig fields the step would ignore.

XLA:CPU notes (jax 0.10.2, measured): a conv's weight gradient inside a lax.scan/while/cond body runs up to
~80x slower than outside one, hence the unrolled D updates and no lax.cond when r1_every == 1; R1 and the
WGAN gradient penalty (double backprop through convs) cost ~6x a plain D gradient on CPU.

Batches: dcgan `{'image': float32 (B, H, W, C) in [0, 1], 'label': int32 (B,)}` (images are fed to D in
[-1, 1]); mlp `{'x': float32 (B, data_dim), 'label': ...}`. Labels are read only when num_classes > 0; fakes
of a conditional model take the labels of the real slice they are contrasted with.

`sample(params, key, num, cfg, labels=None)` takes the generator's params (normally `state.ema_params`, which
is what `python -m genjax.sample` passes; a full two-player params dict, as with --no-ema, also works) and
returns images (num, H, W, C) in [0, 1], or points (num, data_dim).

The toy problem -- a ring of 8 Gaussians -- lives here too: `ring_data`, `ring_batches`, `ring_score` and
`RING` (the model config the ring experiment and test use).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterator, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax import parallel
from genjax.config import ConfigError
from genjax.nn import dcgan, spectral
from genjax.train import TrainState, all_finite, guarded_update, step_key


@dataclasses.dataclass(frozen=True)
class Config:
    arch: Literal["dcgan", "mlp"] = "dcgan"
    image_shape: tuple[int, ...] = (8, 8, 1)  # dcgan: (H, W, C)
    data_dim: int = 2  # mlp: size of a data point
    latent_dim: int = 32
    widths: tuple[int, ...] = (128, 64)  # dcgan: channels from low to high resolution; mlp: hidden layers
    num_classes: int = 0  # 0: unconditional; else class-conditional G and projection D
    loss: Literal["nonsat", "hinge", "wgan_gp"] = "nonsat"
    gp_weight: float = 10.0  # wgan_gp only
    r1_weight: float = 0.0  # 0 turns R1 off
    r1_every: int = 1  # lazy R1: every this many D updates, weight scaled up by it
    spectral_norm: bool = True  # on every D weight matrix
    sn_iters: int = 1  # power iterations per D update
    n_disc: int = 1  # D updates per G update; each takes batch_size / n_disc real examples
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    b1: float = 0.5
    b2: float = 0.999
    ema_decay: float = 0.999  # generator EMA (with warmup min(decay, (1+t)/(10+t))); 0 turns it off
    norm: Literal["none", "layer", "group", "pixel"] = "group"  # generator normalization (dcgan)
    upsample: Literal["transposed", "nearest"] = "transposed"
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params, samples and logits stay float32

    def validate(self):
        def choice(name, options):
            if getattr(self, name) not in options:
                raise ConfigError(f"model.{name}={getattr(self, name)!r} is not one of {list(options)}")

        choice("arch", ("dcgan", "mlp"))
        choice("loss", ("nonsat", "hinge", "wgan_gp"))
        choice("norm", dcgan.NORMS)
        choice("upsample", ("transposed", "nearest"))
        choice("dtype", ("float32", "bfloat16"))
        if not self.widths or any(w < 1 for w in self.widths):
            raise ConfigError(f"model.widths={self.widths} must be a non-empty list of positive ints")
        for name in ("latent_dim", "data_dim", "r1_every", "sn_iters", "n_disc"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.num_classes < 0:
            raise ConfigError(f"model.num_classes={self.num_classes} must be >= 0 (0 = unconditional)")
        if self.num_classes == 1:
            raise ConfigError("model.num_classes=1 makes no sense; use 0 for an unconditional model")
        for name in ("gp_weight", "r1_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 0")
        if self.loss == "wgan_gp" and self.gp_weight == 0:
            raise ConfigError("model.loss='wgan_gp' needs model.gp_weight > 0 (10 is usual), or use loss='hinge'")
        for name in ("lr_g", "lr_d"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be > 0")
        for name in ("b1", "b2", "ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be in [0, 1)")
        if self.arch == "dcgan":
            if len(self.image_shape) != 3 or any(s < 1 for s in self.image_shape):
                raise ConfigError(f"model.image_shape={self.image_shape} must be H,W,C (three positive ints)")
            scale = 2 ** (len(self.widths) - 1)
            h, w, _ = self.image_shape
            if h % scale or w % scale:
                raise ConfigError(
                    f"model.image_shape={self.image_shape}: with {len(self.widths)} widths the generator doubles "
                    f"the resolution {len(self.widths) - 1} times, so H and W must divide by {scale}; "
                    f"use {int(math.log2(math.gcd(h, w) & -math.gcd(h, w))) + 1} widths or fewer"
                )


def data_shape(cfg: Config) -> tuple[int, ...]:
    return tuple(cfg.image_shape) if cfg.arch == "dcgan" else (cfg.data_dim,)


def _dtype(cfg: Config):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else None  # None: the inputs' (float64 in tests)


def generator(cfg: Config):
    if cfg.arch == "mlp":
        return dcgan.MLPGenerator(cfg.data_dim, tuple(cfg.widths), cfg.num_classes, _dtype(cfg))
    return dcgan.Generator(tuple(cfg.image_shape), tuple(cfg.widths), cfg.num_classes, cfg.norm, cfg.upsample,
                           _dtype(cfg))


def discriminator(cfg: Config):
    if cfg.arch == "mlp":
        return dcgan.MLPDiscriminator(tuple(cfg.widths), cfg.num_classes, _dtype(cfg))
    return dcgan.Discriminator(tuple(cfg.widths), cfg.num_classes, _dtype(cfg))


def optimizers(cfg: Config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(generator's, discriminator's) Adam; different learning rates give the two-timescale rule (TTUR)."""
    return optax.adam(cfg.lr_g, cfg.b1, cfg.b2), optax.adam(cfg.lr_d, cfg.b1, cfg.b2)


# TrainConfig fields the two-player step does not read (the model config holds the GAN's optimization).
UNUSED_TRAIN_FIELDS = {"lr": "model.lr_g / model.lr_d", "b1": "model.b1", "b2": "model.b2",
                       "schedule": None, "warmup_steps": None, "weight_decay": None, "grad_clip": None,
                       "grad_accum": "model.n_disc or a smaller batch", "ema_decay": "model.ema_decay"}


def check_train_config(train_cfg) -> None:
    """Refuses a `genjax.train.TrainConfig` that sets a field the GAN step would silently ignore."""
    default = type(train_cfg)()
    for name, instead in UNUSED_TRAIN_FIELDS.items():
        if getattr(train_cfg, name) != getattr(default, name):
            raise ConfigError(f"train.{name} does not apply to the GAN's two-player step"
                              + (f"; use {instead}" if instead else ""))


# ----------------------------------------------------------------------------- params and state


def init(key: jax.Array, cfg: Config) -> dict:
    """{'generator': G params, 'discriminator': {'params': D params[, 'spectral': u vectors]}}."""
    k_g, k_d, k_u = jax.random.split(key, 3)
    z = jnp.zeros((1, cfg.latent_dim), jnp.float32)
    x = jnp.zeros((1, *data_shape(cfg)), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if cfg.num_classes else None
    g = generator(cfg).init(k_g, z, labels)["params"]
    d = discriminator(cfg).init(k_d, x, labels)["params"]
    disc = {"params": d}
    if cfg.spectral_norm:
        disc["spectral"] = spectral.init(d, k_u)
    return {"generator": g, "discriminator": disc}


def init_state(key: jax.Array, cfg: Config) -> TrainState:
    """A fresh two-player state (one compiled call). `key` must be a typed key (`jax.random.key(seed)`)."""
    cfg.validate()
    return _init_state(key, cfg)


# Init runs once: a quick compile matters more than fast code (halves XLA:CPU's compile time here).
@functools.partial(jax.jit, static_argnums=1, compiler_options={"xla_backend_optimization_level": 0})
def _init_state(key: jax.Array, cfg: Config) -> TrainState:
    k_params, k_state = jax.random.split(key)
    params = init(k_params, cfg)
    g_tx, d_tx = optimizers(cfg)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={
            "generator": g_tx.init(params["generator"]),
            "discriminator": d_tx.init(params["discriminator"]["params"]),
        },
        key=k_state,
        ema_params=jax.tree.map(jnp.copy, params["generator"]) if cfg.ema_decay > 0 else None,
    )


# ----------------------------------------------------------------------------- the two networks


def generate(g_params, z, labels, cfg: Config):
    """Generator output in model space: images in [-1, 1] (dcgan) or raw points (mlp).

    Pinned to the batch sharding inside a sharded step: left to XLA's propagation, the discriminator's
    gradient on these images came out wrong on a 2 x 4 (data x fsdp) mesh (tests/test_scaling.py).
    """
    out = generator(cfg).apply({"params": g_params}, z, labels if cfg.num_classes else None)
    return parallel.constrain_to_batch(out)


def d_weights(disc: dict, cfg: Config, update: bool = False) -> tuple[Any, Any]:
    """(D params ready to apply -- spectrally normalized when cfg.spectral_norm --, refreshed u vectors)."""
    if not cfg.spectral_norm:
        return disc["params"], None
    return spectral.normalize(disc["params"], disc["spectral"], cfg.sn_iters, update)


def d_apply(weights, x, labels, cfg: Config) -> jax.Array:
    """Logits (B,) of D with already-normalized weights, on model-space inputs."""
    return discriminator(cfg).apply({"params": weights}, x, labels if cfg.num_classes else None)


def discriminator_logits(disc: dict, x, labels, cfg: Config) -> jax.Array:
    """D's logits on model-space inputs, without advancing the power iteration."""
    return d_apply(d_weights(disc, cfg)[0], x, labels, cfg)


def _input_grad_sq(weights, x, labels, cfg):
    g = jax.grad(lambda x_: jnp.sum(d_apply(weights, x_, labels, cfg)))(x)
    return jnp.sum(jnp.square(g).reshape(x.shape[0], -1), axis=-1)


def r1_penalty(disc: dict, x, labels, cfg: Config, weights=None) -> jax.Array:
    """E_x ||grad_x D(x)||^2 over the (real, model-space) batch x, unweighted (the loss adds r1_weight / 2)."""
    weights = d_weights(disc, cfg)[0] if weights is None else weights
    return jnp.mean(_input_grad_sq(weights, x, labels, cfg))


def gradient_penalty(weights, real, fake, labels, key, cfg: Config) -> jax.Array:
    """WGAN-GP: E (||grad D(x_hat)|| - 1)^2 at random interpolates of real and fake."""
    # drawn 1-D then reshaped: rank >= 3 random draws compile slowly on XLA:CPU (see dcgan.flat_init)
    eps = jax.random.uniform(key, (real.shape[0],), real.dtype).reshape((-1,) + (1,) * (real.ndim - 1))
    x_hat = eps * real + (1.0 - eps) * fake
    norm = jnp.sqrt(_input_grad_sq(weights, x_hat, labels, cfg) + 1e-12)
    return jnp.mean(jnp.square(norm - 1.0))


def d_loss_terms(real_logits, fake_logits, cfg: Config) -> jax.Array:
    if cfg.loss == "nonsat":
        return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    if cfg.loss == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    return jnp.mean(fake_logits) - jnp.mean(real_logits)


def g_loss_term(fake_logits, cfg: Config) -> jax.Array:
    if cfg.loss == "nonsat":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    return -jnp.mean(fake_logits)


def _to_model(batch, cfg):
    if cfg.arch == "dcgan":
        return batch["image"].astype(jnp.float32) * 2.0 - 1.0
    return batch["x"].astype(jnp.float32)


# ----------------------------------------------------------------------------- the two updates


def d_step(state: TrainState, real, labels, key, d_iter, cfg: Config) -> tuple[TrainState, dict]:
    """One discriminator update on model-space reals; touches only params/opt_state['discriminator']."""
    _, d_tx = optimizers(cfg)
    disc = state.params["discriminator"]
    k_z, k_gp = jax.random.split(key)
    z = jax.random.normal(k_z, (real.shape[0], cfg.latent_dim), jnp.float32)
    fake = jax.lax.stop_gradient(generate(state.params["generator"], z, labels, cfg))

    def loss_fn(d_params):
        weights, u = d_weights({**disc, "params": d_params}, cfg, update=True)
        real_logits = d_apply(weights, real, labels, cfg)
        fake_logits = d_apply(weights, fake, labels, cfg)
        loss = d_loss_terms(real_logits, fake_logits, cfg)
        metrics = {"d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits)}
        if cfg.loss == "wgan_gp":
            gp = gradient_penalty(weights, real, fake, labels, k_gp, cfg)
            loss = loss + cfg.gp_weight * gp
            metrics["gp"] = gp
        if cfg.r1_weight > 0:
            if cfg.r1_every == 1:  # no lax.cond: on XLA:CPU conv gradients inside one run ~5x slower
                r1 = r1_penalty(None, real, labels, cfg, weights=weights)
            else:
                r1 = jax.lax.cond(
                    d_iter % cfg.r1_every == 0,
                    lambda: r1_penalty(None, real, labels, cfg, weights=weights),
                    lambda: jnp.zeros((), jnp.float32),
                )
            loss = loss + 0.5 * cfg.r1_weight * cfg.r1_every * r1
            metrics["r1"] = r1
        return loss, (metrics, u)

    (loss, (metrics, u)), grads = jax.value_and_grad(loss_fn, has_aux=True)(disc["params"])
    updates, opt_state = d_tx.update(grads, state.opt_state["discriminator"], disc["params"])
    new_disc = {"params": optax.apply_updates(disc["params"], updates)}
    if cfg.spectral_norm:
        new_disc["spectral"] = u
    metrics = {**metrics, "d_loss": loss, "d_grad_norm": optax.tree.norm(grads),
               "finite": (jnp.isfinite(loss) & all_finite(grads)).astype(jnp.float32)}
    state = state.replace(
        params={**state.params, "discriminator": new_disc},
        opt_state={**state.opt_state, "discriminator": opt_state},
    )
    return state, metrics


def g_step(state: TrainState, labels, key, batch_size: int, cfg: Config) -> tuple[TrainState, dict]:
    """One generator update; D (and its u vectors) is read, never written."""
    g_tx, _ = optimizers(cfg)
    g_params = state.params["generator"]
    weights = jax.lax.stop_gradient(d_weights(state.params["discriminator"], cfg)[0])
    z = jax.random.normal(key, (batch_size, cfg.latent_dim), jnp.float32)

    def loss_fn(p):
        fake_logits = d_apply(weights, generate(p, z, labels, cfg), labels, cfg)
        return g_loss_term(fake_logits, cfg), {"g_fake": jnp.mean(fake_logits)}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_params)
    updates, opt_state = g_tx.update(grads, state.opt_state["generator"], g_params)
    metrics = {**metrics, "g_loss": loss, "g_grad_norm": optax.tree.norm(grads),
               "finite": (jnp.isfinite(loss) & all_finite(grads)).astype(jnp.float32)}
    state = state.replace(
        params={**state.params, "generator": optax.apply_updates(g_params, updates)},
        opt_state={**state.opt_state, "generator": opt_state},
    )
    return state, metrics


def ema_decay_at(step, cfg: Config):
    """The EMA decay used after update `step` (0-based): warms up so short runs are not dominated by init."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(cfg.ema_decay, (1.0 + t) / (10.0 + t))


def make_step(cfg: Config):
    """The pure, jit-able two-player step `step(state, batch) -> (state, metrics)`."""
    cfg.validate()

    def step(state: TrainState, batch) -> tuple[TrainState, dict]:
        k_d, k_g = jax.random.split(step_key(state))
        real = _to_model(batch, cfg)
        labels = batch["label"].astype(jnp.int32) if cfg.num_classes else None
        size = real.shape[0]
        if size % cfg.n_disc:
            raise ConfigError(
                f"batch size {size} does not divide by model.n_disc={cfg.n_disc}: each D update takes "
                f"batch_size / n_disc examples; use a batch size that is a multiple of {cfg.n_disc}"
            )
        m = size // cfg.n_disc
        chunks = real.reshape(cfg.n_disc, m, *real.shape[1:])
        label_chunks = None if labels is None else labels.reshape(cfg.n_disc, m)
        d_iters = state.step * cfg.n_disc + jnp.arange(cfg.n_disc, dtype=jnp.int32)

        # A Python loop, not lax.scan: on XLA:CPU a conv's weight gradient inside a loop body runs ~80x
        # slower than outside one (measured with jax 0.10.2). n_disc is small, so unrolling costs little.
        s, rows = state, []
        for i, k in enumerate(jax.random.split(k_d, cfg.n_disc)):
            s, row = d_step(s, chunks[i], None if labels is None else label_chunks[i], k, d_iters[i], cfg)
            rows.append(row)
        d_metrics = jax.tree.map(lambda *v: jnp.stack(v), *rows)
        s, g_metrics = g_step(s, None if labels is None else label_chunks[0], k_g, m, cfg)

        finite = (jnp.min(d_metrics.pop("finite")) > 0) & (g_metrics.pop("finite") > 0)
        ema = s.ema_params
        if ema is not None:
            ema = optax.incremental_update(s.params["generator"], ema, 1.0 - ema_decay_at(state.step, cfg))
        params, opt_state, ema = guarded_update(
            finite, (s.params, s.opt_state, ema), (state.params, state.opt_state, state.ema_params)
        )
        metrics = {
            **{k: jnp.mean(v) for k, v in d_metrics.items()},
            **g_metrics,
            "loss": g_metrics["g_loss"] + jnp.mean(d_metrics["d_loss"]),
            "nonfinite": 1.0 - finite.astype(jnp.float32),
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

    return step


def loss(params, batch, key, cfg: Config) -> tuple[jax.Array, dict]:
    """Evaluation only: (D's loss, {d_loss, g_loss, d_real, d_fake}) on a batch, without any update."""
    real = _to_model(batch, cfg)
    labels = batch["label"].astype(jnp.int32) if cfg.num_classes else None
    z = jax.random.normal(key, (real.shape[0], cfg.latent_dim), jnp.float32)
    fake = generate(params["generator"], z, labels, cfg)
    weights = d_weights(params["discriminator"], cfg)[0]
    real_logits, fake_logits = d_apply(weights, real, labels, cfg), d_apply(weights, fake, labels, cfg)
    d_loss = d_loss_terms(real_logits, fake_logits, cfg)
    return d_loss, {"d_loss": d_loss, "g_loss": g_loss_term(fake_logits, cfg),
                    "d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits)}


# ----------------------------------------------------------------------------- sampling


@functools.partial(jax.jit, static_argnames=("num", "cfg"))
def _sample(g_params, key, labels, num: int, cfg: Config):
    z = jax.random.normal(key, (num, cfg.latent_dim), jnp.float32)
    x = generate(g_params, z, labels, cfg)
    return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0) if cfg.arch == "dcgan" else x


def sample(params, key, num: int, cfg: Config, labels=None) -> jax.Array:
    """`num` samples, one compiled call: images (num, H, W, C) in [0, 1] or points (num, data_dim).

    `params` are the generator's (usually the EMA ones); a two-player params dict is accepted too.
    Conditional models draw `labels` (int (num,)), by default 0, 1, ..., num_classes - 1, 0, 1, ...
    """
    if isinstance(params, dict) and "generator" in params:
        params = params["generator"]
    if not cfg.num_classes:
        labels = None
    elif labels is None:
        labels = jnp.arange(num, dtype=jnp.int32) % cfg.num_classes
    else:
        labels = jnp.asarray(labels, jnp.int32)
    return _sample(params, key, labels, num=num, cfg=cfg)


# ----------------------------------------------------------------------------- toy: a ring of Gaussians

RING_MODES, RING_RADIUS, RING_STD = 8, 2.0, 0.02

# The ring experiment's defaults (and the ring test's): a small MLP GAN with lazy R1 and a generator EMA,
# RING_STEPS updates at batch RING_BATCH; its EMA samples cover 8/8 modes, 80-90% of them high quality.
RING = Config(arch="mlp", data_dim=2, latent_dim=16, widths=(128, 128), loss="nonsat", spectral_norm=False,
              r1_weight=0.1, r1_every=4, lr_g=3e-3, lr_d=3e-3, b1=0.5, b2=0.999, ema_decay=0.995)
RING_STEPS, RING_BATCH = 4000, 256


def ring_centers(modes: int = RING_MODES, radius: float = RING_RADIUS) -> np.ndarray:
    angles = 2 * np.pi * np.arange(modes) / modes
    return (radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)).astype(np.float32)


def ring_data(rng: np.random.Generator | int, num: int, modes: int = RING_MODES, radius: float = RING_RADIUS,
              std: float = RING_STD) -> tuple[np.ndarray, np.ndarray]:
    """(points float32 (num, 2), mode index int32 (num,)) from an equal mixture of Gaussians on a circle."""
    rng = np.random.default_rng(rng)
    labels = rng.integers(0, modes, num).astype(np.int32)
    x = ring_centers(modes, radius)[labels] + std * rng.standard_normal((num, 2)).astype(np.float32)
    return x.astype(np.float32), labels


def ring_batches(batch_size: int, seed: int = 0, start_step: int = 0, **ring) -> Iterator[dict]:
    """Endless {'x', 'label'} batches from the ring; batch `s` is a function of (seed, s) only, so a
    resumed run sees the same data. Each host keeps its rows of the global batch."""
    from genjax.data.batching import host_rows

    rows = host_rows(batch_size)
    step = start_step
    while True:
        x, y = ring_data(np.random.default_rng([seed, step]), batch_size, **ring)
        yield {"x": x[rows], "label": y[rows]}
        step += 1


def ring_score(samples, modes: int = RING_MODES, radius: float = RING_RADIUS, std: float = RING_STD,
               min_share: float = 0.008) -> dict:
    """Mode coverage and quality of 2-D samples.

    A sample is high quality when it lies within 3 std of its nearest mode; a mode is covered when it gets
    at least `min_share` of all samples as high-quality ones (PacGAN's 20 per 2500).
    """
    x = np.asarray(samples, np.float64)
    dist = np.linalg.norm(x[:, None, :] - ring_centers(modes, radius)[None].astype(np.float64), axis=-1)
    nearest, closest = dist.argmin(-1), dist.min(-1)
    hq = closest <= 3 * std
    counts = np.bincount(nearest[hq], minlength=modes)
    return {
        "modes": int(np.sum(counts >= max(1, math.ceil(min_share * len(x))))),
        "hq": float(hq.mean()),
        "per_mode": counts.tolist(),
    }
