"""LoRA (Hu et al. 2021, low-rank adapters) as pure functions over a params pytree: no model changes.

    cfg = LoraConfig(rank=8, alpha=16.0, targets=("attn/qkv", "attn/proj"))
    adapters = init_adapters(key, params, cfg)     # A (.., in, r) small random, B (.., r, out) zeros
    merged = merge(params, adapters, cfg)          # W + (alpha / rank) * A @ B on every adapted kernel
    state = init_state(key, params, adapters, tx)  # LoraState: adapters trained, the base frozen
    step = step_for(functools.partial(transformer.loss, cfg=model_cfg), cfg, train_cfg, tx)
    state = loop.run(state=state, step_fn=step, ..., model_rules=model_rules(transformer.MODEL_RULES))

A target selects the kernels (leaves named `kernel` with >= 2 dims) whose path holds its segments in a
row: 'attn/qkv' is blocks/layer_<i>/block/attn/qkv/kernel in every layer, 'mlp' both MLP kernels, 'proj'
the attention and MLP output projections. A kernel's last two dims are (in, out); leading dims (the
stacked layer axis of scan_layers) get one adapter each: a (L, in, out) kernel gets A (L, in, r) and
B (L, r, out).

Training differentiates the adapters only: the loss sees merge(base, adapters) with the base as a plain
input, so gradients and optimizer moments exist for the adapters alone. Since the model is unchanged,
each adapted kernel is materialized merged (and its full-size gradient in the backward pass, from which
dA and dB follow); activations cost what they cost the base model. Input dropout on the adapter branch
(the paper's LoRA dropout) needs the branch inside the model and is not offered; `model.dropout` works.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from genjax import train
from genjax.config import ConfigError

DEFAULT_TARGETS = ("attn/qkv", "attn/proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8  # adapter rank r; 0 makes no adapters (gpt_finetune: full fine-tuning)
    alpha: float = 16.0  # the update is (alpha / rank) * A @ B, so the lr need not follow the rank
    targets: tuple[str, ...] = DEFAULT_TARGETS  # kernel path patterns (see the module docstring)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self):
        if self.rank < 0:
            raise ConfigError(f"lora.rank={self.rank} must be >= 1 (or 0: no adapters, full fine-tuning)")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha={self.alpha} must be > 0 (the update is alpha / rank * A @ B)")
        if not self.targets or any(not t.strip("/") for t in self.targets):
            raise ConfigError(f"lora.targets={','.join(self.targets)!r} needs non-empty kernel patterns, "
                              f"e.g. {','.join(DEFAULT_TARGETS)}")

    def validate_for(self, params):
        """`validate`, and that rank >= 1, every target selects a kernel of `params` and the rank fits
        the kernels it adapts."""
        self.validate()
        if self.rank < 1:
            raise ConfigError(f"lora.rank={self.rank} makes no adapters: use >= 1 (rank 0: full fine-tuning)")
        for name, w in select(params, self.targets).items():
            if self.rank > min(w.shape[-2:]):
                raise ConfigError(f"lora.rank={self.rank} exceeds the smaller side of {name} "
                                  f"{tuple(w.shape)}: use <= {min(w.shape[-2:])} (or 0: full fine-tuning)")


# ----------------------------------------------------------------------------- paths


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def kernels(params) -> dict[str, jax.Array]:
    """'a/b/kernel' -> leaf for every kernel (a leaf named `kernel` with >= 2 dims) of `params`."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {"/".join(k): x for p, x in flat if (k := _keys(p))[-1] == "kernel" and len(x.shape) >= 2}


def _matches(target: str, name: str) -> bool:
    want, have = target.strip("/").split("/"), name.split("/")
    return any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1))


def available(params) -> list[str]:
    """The kernels' module paths, layer indices collapsed ('blocks/layer_*/block/attn/qkv'): what
    targets can select, for error messages."""
    names = [re.sub(r"layer_\d+", "layer_*", n.removesuffix("/kernel")) for n in kernels(params)]
    return list(dict.fromkeys(names))


def select(params, targets) -> dict[str, jax.Array]:
    """The kernels the targets select, by path; a target selecting none is a ConfigError listing them."""
    found = kernels(params)
    chosen = {}
    for target in targets:
        hits = {n: w for n, w in found.items() if _matches(target, n)}
        if not hits:
            raise ConfigError(f"lora.targets: {target!r} matches no kernel; available: "
                              f"{', '.join(available(params))}")
        chosen.update(hits)
    return {n: w for n, w in found.items() if n in chosen}  # in params order, each once


# ----------------------------------------------------------------------------- adapters


def init_adapters(key: jax.Array, params, cfg: LoraConfig) -> dict:
    """Adapters for the kernels `cfg.targets` select, nested like `params` ({'kernel': {'a', 'b'}}):
    A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default), B = 0, so the merged model starts as the base."""
    cfg.validate_for(params)
    adapters: dict = {}
    for i, (name, w) in enumerate(select(params, cfg.targets).items()):
        *lead, n_in, n_out = w.shape
        bound = 1.0 / math.sqrt(n_in)
        # Drawn flat: XLA:CPU compiles threefry draws of rank >= 3 (stacked layers) slowly.
        a = jax.random.uniform(jax.random.fold_in(key, i), (math.prod(lead) * n_in * cfg.rank,), jnp.float32,
                               -bound, bound).reshape(*lead, n_in, cfg.rank)
        node = adapters
        for k in name.split("/"):
            node = node.setdefault(k, {})
        node.update(a=a, b=jnp.zeros((*lead, cfg.rank, n_out), jnp.float32))
    return adapters


def _pairs(adapters) -> dict[tuple[str, ...], dict[str, jax.Array]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(adapters)
    pairs: dict = {}
    for p, x in flat:
        *where, which = _keys(p)
        pairs.setdefault(tuple(where), {})[which] = x
    return pairs


def merge(params, adapters, cfg: LoraConfig | float):
    """`params` with W + scale * A @ B on every adapted kernel (scale = cfg.alpha / cfg.rank, or `cfg`
    itself as a number). The product is taken at full float32 precision (accelerators would otherwise
    use bf16 passes) and cast to the kernel's dtype."""
    scale = cfg.scale if isinstance(cfg, LoraConfig) else float(cfg)
    pairs = _pairs(adapters)
    missing = ["/".join(k) for k in pairs if "/".join(k) not in kernels(params)]
    if missing:
        raise ConfigError(f"adapters for {missing[0]}, which these params do not have as a kernel; "
                          f"available: {', '.join(available(params))}")

    def leaf(path, w):
        pair = pairs.get(_keys(path))
        if pair is None:
            return w
        a, b = pair["a"], pair["b"]
        if a.shape[:-1] != w.shape[:-1] or b.shape[-1] != w.shape[-1]:
            raise ConfigError(f"adapter of {'/'.join(_keys(path))}: A {a.shape} @ B {b.shape} does not fit "
                              f"the kernel {w.shape}")
        delta = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
        return (w + scale * delta.astype(jnp.float32)).astype(w.dtype)

    return jax.tree_util.tree_map_with_path(leaf, params)


def num_params(adapters) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(adapters))


# ----------------------------------------------------------------------------- training


def wrap_loss(loss_fn: Callable[..., tuple[jax.Array, dict]], cfg: LoraConfig | float):
    """`loss_fn(params, batch, key, step=None)` -> `lora_loss(adapters, batch, key, step=None, *, base)`,
    the same loss at merge(base, adapters). Differentiate it in `adapters`; the base is a frozen input."""

    def lora_loss(adapters, batch, key, step=None, *, base):
        return loss_fn(merge(jax.lax.stop_gradient(base), adapters, cfg), batch, key, step=step)

    return lora_loss


class LoraState(train.TrainState):
    """A TrainState whose `params` are the adapters (what the optimizer and EMA see) plus the frozen base.

    The loop compiles `step(state, batch)`: a base closed over by the step would be embedded in the
    compiled program as constants (measured: 3x the compile time of the same step at 10M parameters), so
    the base rides in the state, placed and sharded like params, never differentiated or changed. It
    is therefore also in every checkpoint.
    """

    base: Any = None


def init_state(key: jax.Array, base, adapters, tx: optax.GradientTransformation,
               ema: bool = False) -> LoraState:
    s = train.init_state(key, adapters, tx, ema)
    return LoraState(step=s.step, params=s.params, opt_state=s.opt_state, key=s.key, ema_params=s.ema_params,
                     base=base)


def merged_params(state: LoraState, cfg: LoraConfig | float):
    """The full model to evaluate and sample: the base merged with the eval adapters (EMA where kept)."""
    return merge(state.base, state.eval_params, cfg)


def make_step(loss_fn: Callable[..., tuple[jax.Array, dict]], tx: optax.GradientTransformation,
              cfg: LoraConfig | float, *, ema_decay: float = 0.0, ema_warmup: bool = False,
              grad_accum: int = 1):
    """`train.make_step` for a LoraState: the same pieces (accumulation, finite guard, EMA) over the adapters;
    the base goes through untouched."""
    lora_loss = wrap_loss(loss_fn, cfg)

    def step(state: LoraState, batch):
        loss_fn = functools.partial(lora_loss, step=state.step, base=state.base)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        key = train.step_key(state)
        (loss, metrics), grads = train.accumulate_gradients(grad_fn, state.params, batch, key, grad_accum)
        params, opt_state, finite = train.apply_gradients(tx, state.params, state.opt_state, grads, loss)
        ema = train.update_ema(state.ema_params, params, ema_decay, state.step, ema_warmup)
        trained = state.replace(base=None)  # the finite guard selects over what changed, not the base
        new = trained.replace(params=params, opt_state=opt_state, ema_params=ema)
        kept, metrics = train.finish_step(trained, new, finite,
                                          {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)})
        return kept.replace(base=state.base), metrics

    return step


def step_for(loss_fn: Callable, cfg: LoraConfig, train_cfg: train.TrainConfig,
             tx: optax.GradientTransformation | None = None):
    """`make_step` with the train config's optimizer, EMA and accumulation settings."""
    tx = train.make_optimizer(train_cfg) if tx is None else tx
    return make_step(loss_fn, tx, cfg, ema_decay=train_cfg.ema_decay, ema_warmup=train_cfg.ema_warmup,
                     grad_accum=train_cfg.grad_accum)


def model_rules(rules: Mapping[str, int]) -> dict[str, int]:
    """Tensor-parallel rules for a LoraState from the family's: the base keeps them (its paths end alike),
    and an adapter follows its kernel's split (by output columns: B's columns; by input rows: A's rows),
    so the A @ B update lands split as the kernel is. Rules with positive dims are left to the base."""
    out = dict(rules)
    for suffix, dim in rules.items():
        if suffix.split("/")[-1] == "kernel" and dim in (-1, -2):
            out[f"{suffix}/{'b' if dim == -1 else 'a'}"] = dim
    return out
