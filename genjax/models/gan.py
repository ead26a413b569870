"""GANs: DCGAN / MLP generator and discriminator, three losses, a two-player step built from genjax.train.

State layout (one `genjax.train.TrainState`, checkpointed whole):

    params    = {'generator': G params,
                 'discriminator': {'params': D params,             # trained
                                   'spectral': power-iteration u}} # only with spectral_norm; never trained
    opt_state = {'generator': optimizer state of G, 'discriminator': optimizer state of D['params']}
    ema_params = EMA of params (train.ema_decay > 0); sampling reads its 'generator'

`make_step(cfg, train_cfg)` gives `step(state, batch) -> (state, metrics)`: `n_disc` discriminator updates
(unrolled), each on its own slice of the batch (so `batch_size` must divide by `n_disc`), then one
generator update on a batch of the same slice size. Every update is `genjax.train`'s: gradients
accumulated over `train.grad_accum` microbatches, the optimizer of `train.make_optimizer` (schedule,
clipping, weight decay alike; the discriminator's learning rate is `train.lr * d_lr_scale`, the
two-timescale rule), the finite guard over both players and the EMA.
Losses: 'nonsat' (non-saturating logistic), 'hinge', 'wgan_gp' (critic + gradient penalty). An R1 penalty
(r1_weight/2 * E||grad_x D(x_real)||^2) can be added to any of them, lazily every `r1_every` D updates with its
weight scaled by `r1_every` (StyleGAN2; the `r1` metric averages in the zeros of updates without it).

XLA:CPU notes (jax 0.10.2, measured): a conv's weight gradient inside a lax.scan/while/cond body runs up to
~80x slower than outside one, hence the unrolled D updates and no lax.cond when r1_every == 1; R1 and the
WGAN gradient penalty (double backprop through convs) cost ~6x a plain D gradient on CPU.

Batches: dcgan `{'image': float32 (B, H, W, C) in [0, 1], 'label': int32 (B,)}` (images are fed to D in
[-1, 1]); mlp `{'x': float32 (B, data_dim), 'label': ...}`. Labels are read only when num_classes > 0; fakes
of a conditional model take the labels of the real slice they are contrasted with.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from genjax import parallel, train
from genjax.config import ConfigError, check_at_least, check_choices
from genjax.models import check_labels, cycle_labels
from genjax.nn import dcgan, init_params, spectral
from genjax.train import TrainState


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
    n_disc: int = 1  # D updates per G update; each takes batch_size / n_disc examples
    d_lr_scale: float = 1.0  # D's learning rate = train.lr * d_lr_scale (two-timescale update rule)
    norm: Literal["none", "layer", "group", "pixel"] = "group"  # generator normalization (dcgan)
    upsample: Literal["transposed", "nearest"] = "transposed"
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params, samples and logits stay float32

    def validate(self):
        check_choices(self, "model")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ConfigError(f"model.widths={self.widths} must be a non-empty list of positive ints")
        check_at_least(self, "model", ("latent_dim", "data_dim", "r1_every", "sn_iters", "n_disc"))
        if self.num_classes < 0 or self.num_classes == 1:
            raise ConfigError(f"model.num_classes={self.num_classes}: use 0 (unconditional) or >= 2 classes")
        for name in ("gp_weight", "r1_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 0")
        if self.d_lr_scale <= 0:
            raise ConfigError(f"model.d_lr_scale={self.d_lr_scale} must be > 0")
        if self.loss == "wgan_gp" and self.gp_weight == 0:
            raise ConfigError("model.loss='wgan_gp' needs model.gp_weight > 0 (10 is usual), or use loss='hinge'")
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


SIZES = {
    "digits": Config(),  # 8x8x1: 4x4 -> 8x8, 0.6M parameters with spectral norm
    "mnist": Config(image_shape=(28, 28, 1), latent_dim=128, widths=(256, 128, 64)),  # 7x7 -> 28x28
    "cifar10": Config(image_shape=(32, 32, 3), latent_dim=128, widths=(512, 256, 128, 64), loss="hinge",
                      d_lr_scale=4.0, n_disc=2),  # 4x4 -> 32x32; with train.lr 1e-4, b1 0, b2 0.9
    "ring": Config(arch="mlp", data_dim=2, latent_dim=16, widths=(128, 128), spectral_norm=False,
                   r1_weight=0.1, r1_every=4),  # the 2-D ring of 8 Gaussians (experiments/gan_ring.py)
}


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    labels: tuple[int, ...] = ()  # conditional models: class of each sample, cycled (default 0, 1, 2, ...)
    # The truncation trick (BigGAN): latents drawn from N(0, I) with every coordinate beyond this many
    # standard deviations redrawn. Lower trades diversity (recall) for fidelity (precision); 0: off.
    truncation: float = 0.0

    def validate(self, cfg: Config):
        check_labels(self.labels, cfg.num_classes)
        if not 0.0 <= self.truncation < math.inf:
            raise ConfigError(f"truncation={self.truncation} must be >= 0 (0: no truncation)")


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


# ----------------------------------------------------------------------------- params and state


def init(key: jax.Array, cfg: Config) -> dict:
    """{'generator': G params, 'discriminator': {'params': D params[, 'spectral': u vectors]}}."""
    cfg.validate()
    k_g, k_d, k_u = jax.random.split(key, 3)
    labels = jnp.zeros((1,), jnp.int32) if cfg.num_classes else None
    g = init_params(generator(cfg), k_g, jnp.zeros((1, cfg.latent_dim), jnp.float32), labels)
    return {"generator": g, "discriminator": init_discriminator(k_d, k_u, cfg)}


def init_discriminator(key: jax.Array, spectral_key: jax.Array, cfg: Config) -> dict:
    """D alone: {'params': D params[, 'spectral': u vectors drawn from `spectral_key`]} (vae_gan's)."""
    labels = jnp.zeros((1,), jnp.int32) if cfg.num_classes else None
    d = init_params(discriminator(cfg), key, jnp.zeros((1, *data_shape(cfg)), jnp.float32), labels)
    return {"params": d, **({"spectral": spectral.init(d, spectral_key)} if cfg.spectral_norm else {})}


def optimizers(cfg: Config, train_cfg: train.TrainConfig) -> dict[str, optax.GradientTransformation]:
    """One `train.make_optimizer` per player; D's learning rate is scaled by `d_lr_scale` (TTUR)."""
    return {"generator": train.make_optimizer(train_cfg),
            "discriminator": train.make_optimizer(train_cfg, lr=train_cfg.lr * cfg.d_lr_scale)}


def init_state(key: jax.Array, params: dict, cfg: Config, train_cfg: train.TrainConfig) -> TrainState:
    """A fresh two-player state; `key` must be a typed key (`jax.random.key(seed)`)."""
    txs = optimizers(cfg, train_cfg)
    state = train.init_state(key, params, optax.identity(), ema=train_cfg.ema_decay > 0)
    return state.replace(opt_state={
        "generator": txs["generator"].init(params["generator"]),
        "discriminator": txs["discriminator"].init(params["discriminator"]["params"]),
    })


# ----------------------------------------------------------------------------- the two networks


def generator_output(g_params, z, labels, cfg: Config):
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


def _input_grad_sq(weights, x, labels, cfg):
    g = jax.grad(lambda x_: jnp.sum(d_apply(weights, x_, labels, cfg)))(x)
    return jnp.sum(jnp.square(g).reshape(x.shape[0], -1), axis=-1)


def r1_penalty(weights, x, labels, cfg: Config) -> jax.Array:
    """E_x ||grad_x D(x)||^2 over the (real, model-space) batch x, unweighted (the loss adds r1_weight / 2)."""
    return jnp.mean(_input_grad_sq(weights, x, labels, cfg))


def gradient_penalty(weights, real, fake, labels, key, cfg: Config) -> jax.Array:
    """WGAN-GP: E (||grad D(x_hat)|| - 1)^2 at random interpolates of real and fake."""
    # drawn 1-D then reshaped: rank >= 3 threefry draws compile slowly on XLA:CPU (see genjax.nn.fast_key)
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


# ----------------------------------------------------------------------------- the two losses


def d_loss(d_params, batch, key, *, params, spectral_u, d_iter, cfg: Config):
    """The discriminator's loss on {'real', 'label'} against fakes of the (fixed) generator."""
    real, labels = batch["real"], batch["label"]
    k_z, k_gp = jax.random.split(key)
    z = jax.random.normal(k_z, (real.shape[0], cfg.latent_dim), jnp.float32)
    fake = jax.lax.stop_gradient(generator_output(params["generator"], z, labels, cfg))
    # The power iteration already ran (u is refreshed once per D update, outside the microbatches).
    weights, _ = d_weights({"params": d_params, "spectral": spectral_u}, cfg)
    return d_objective(weights, real, fake, labels, k_gp, d_iter, cfg)


def d_objective(weights, real, fake, labels, key, d_iter, cfg: Config):
    """(loss, metrics) of D (`weights` from `d_weights`) on model-space real and fake batches: the loss's
    terms plus the gradient penalty (wgan_gp, drawn from `key`) and R1 (on D update `d_iter`) it asks for."""
    real_logits, fake_logits = d_apply(weights, real, labels, cfg), d_apply(weights, fake, labels, cfg)
    loss = d_loss_terms(real_logits, fake_logits, cfg)
    metrics = {"d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits)}
    if cfg.loss == "wgan_gp":
        metrics["gp"] = gradient_penalty(weights, real, fake, labels, key, cfg)
        loss = loss + cfg.gp_weight * metrics["gp"]
    if cfg.r1_weight > 0:
        if cfg.r1_every == 1:  # no lax.cond: on XLA:CPU conv gradients inside one run ~5x slower
            r1 = r1_penalty(weights, real, labels, cfg)
        else:
            r1 = jax.lax.cond(d_iter % cfg.r1_every == 0, lambda: r1_penalty(weights, real, labels, cfg),
                              lambda: jnp.zeros((), jnp.float32))
        loss = loss + 0.5 * cfg.r1_weight * cfg.r1_every * r1
        metrics["r1"] = r1
    return loss, {**metrics, "d_loss": loss}


def g_loss(g_params, batch, key, *, d_weights_fixed, cfg: Config):
    """The generator's loss on {'z', 'label'} against the (fixed) discriminator."""
    fake_logits = d_apply(d_weights_fixed, generator_output(g_params, batch["z"], batch["label"], cfg),
                          batch["label"], cfg)
    loss = g_loss_term(fake_logits, cfg)
    return loss, {"g_fake": jnp.mean(fake_logits), "g_loss": loss}


# ----------------------------------------------------------------------------- the two-player step


def discriminator_update(tx, disc: dict, opt_state, loss_fn, batch, key, microbatches: int, cfg: Config):
    """One D update (`train.update_player`): the power iteration refreshes the spectral vectors u once,
    outside the microbatches, then `loss_fn(d_params, batch, key, u)` is minimized. Returns (the new
    {'params'[, 'spectral']} dict, opt_state, finite, metrics with 'd_grad_norm')."""
    _, u = d_weights(disc, cfg, update=True)
    d_params, d_opt, finite, metrics = train.update_player(
        tx, disc["params"], opt_state, lambda p, b, k: loss_fn(p, b, k, u), batch, key, microbatches, "d_")
    return {"params": d_params, **({"spectral": u} if cfg.spectral_norm else {})}, d_opt, finite, metrics


def make_step(cfg: Config, train_cfg: train.TrainConfig):
    """The pure, jit-able two-player step `step(state, batch) -> (state, metrics)`."""
    cfg.validate()
    txs = optimizers(cfg, train_cfg)
    accum = train_cfg.grad_accum

    def step(state: TrainState, batch) -> tuple[TrainState, dict]:
        k_d, k_g = jax.random.split(train.step_key(state))
        real = _to_model(batch, cfg)
        labels = batch["label"].astype(jnp.int32) if cfg.num_classes else None
        if real.shape[0] % (cfg.n_disc * accum):
            raise ConfigError(f"batch size {real.shape[0]} does not divide by model.n_disc * train.grad_accum = "
                              f"{cfg.n_disc * accum}; use a multiple of it")
        m = real.shape[0] // cfg.n_disc
        params, opt_state, finite, rows = state.params, state.opt_state, jnp.array(True), []
        # A Python loop, not lax.scan: on XLA:CPU a conv's weight gradient inside a loop body runs ~80x
        # slower than outside one (measured with jax 0.10.2). n_disc is small, so unrolling costs little.
        for i, k in enumerate(jax.random.split(k_d, cfg.n_disc)):
            chunk = {"real": real[i * m:(i + 1) * m], "label": None if labels is None else labels[i * m:(i + 1) * m]}
            loss_fn = lambda p, b, key, u, i=i: d_loss(  # noqa: E731
                p, b, key, params=params, spectral_u=u, d_iter=state.step * cfg.n_disc + i, cfg=cfg)
            new_disc, d_opt, ok, row = discriminator_update(
                txs["discriminator"], params["discriminator"], opt_state["discriminator"], loss_fn, chunk, k,
                accum, cfg)
            params = {**params, "discriminator": new_disc}
            opt_state = {**opt_state, "discriminator": d_opt}
            finite, rows = finite & ok, rows + [row]

        d_fixed = jax.lax.stop_gradient(d_weights(params["discriminator"], cfg)[0])
        g_batch = {"z": jax.random.normal(jax.random.fold_in(k_g, 0), (m, cfg.latent_dim), jnp.float32),
                   "label": None if labels is None else labels[:m]}
        g_fn = lambda p, b, key: g_loss(p, b, key, d_weights_fixed=d_fixed, cfg=cfg)  # noqa: E731
        g_params, g_opt, ok, g_metrics = train.update_player(txs["generator"], params["generator"],
                                                             opt_state["generator"], g_fn, g_batch, k_g, accum, "g_")
        params = {**params, "generator": g_params}
        opt_state = {**opt_state, "generator": g_opt}
        ema = train.update_ema(state.ema_params, params, train_cfg.ema_decay, state.step, train_cfg.ema_warmup)

        d_metrics = {k: jnp.mean(jnp.stack([r[k] for r in rows])) for k in rows[0]}
        metrics = {**d_metrics, **g_metrics, "loss": g_metrics["g_loss"] + d_metrics["d_loss"]}
        new = state.replace(params=params, opt_state=opt_state, ema_params=ema)
        return train.finish_step(state, new, finite & ok, metrics)

    return step


# ----------------------------------------------------------------------------- evaluation and sampling


def evaluate(params, batch, key, cfg: Config) -> dict:
    """Sums over a held-out batch: D's logits on the real examples and on as many fakes, and how many of
    each D classifies right (logit sign); a D far more right on training data than here overfits."""
    real = _to_model(batch, cfg)
    labels = batch["label"].astype(jnp.int32) if cfg.num_classes else None
    z = jax.random.normal(key, (real.shape[0], cfg.latent_dim), jnp.float32)
    weights = d_weights(params["discriminator"], cfg)[0]
    real_logits = d_apply(weights, real, labels, cfg)
    fake_logits = d_apply(weights, generator_output(params["generator"], z, labels, cfg), labels, cfg)
    return {"d_real": jnp.sum(real_logits), "d_fake": jnp.sum(fake_logits),
            "d_correct": jnp.sum(real_logits > 0) + jnp.sum(fake_logits < 0), "count": real.shape[0]}


@functools.partial(jax.jit, static_argnames=("num", "cfg"))
def _sample(g_params, key, labels, truncation, num: int, cfg: Config):
    # truncated_normal draws from N(0, 1) conditioned on [-t, t]: the same as redrawing what falls outside
    # (untruncated draws stay jax.random.normal's, so samples without truncation are unchanged)
    shape = (num, cfg.latent_dim)
    z = jnp.where(truncation > 0, jax.random.truncated_normal(key, -truncation, truncation, shape, jnp.float32),
                  jax.random.normal(key, shape, jnp.float32))
    x = generator_output(g_params, z, labels, cfg)
    return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0) if cfg.arch == "dcgan" else x


def sample(params, key, num: int, cfg: Config, options: SampleOptions = SampleOptions()) -> jax.Array:
    """`num` samples of the generator in `params` (the run's EMA params normally), one compiled call:
    images float32 (num, H, W, C) in [0, 1] (dcgan) or points (num, data_dim) (mlp)."""
    options.validate(cfg)
    labels = cycle_labels(options.labels, num, cfg.num_classes)
    return _sample(params["generator"], key, labels, jnp.float32(options.truncation), num=num, cfg=cfg)
