"""Flax (linen) networks of the model families, and the one way every family initializes them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def fast_key(key: jax.Array) -> jax.Array:
    """An 'rbg' (RngBitGenerator) key derived deterministically from any typed key.

    XLA:CPU compiles jax's default threefry slowly for every random draw of rank >= 3 (~2 s each: a
    conv net's init took tens of seconds); RngBitGenerator compiles in milliseconds and draws faster.
    Used for initialization, dropout and sampling noise inside the networks.
    """
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


def init_params(module: nn.Module, key: jax.Array, *inputs, method=None) -> dict:
    """`module`'s float32 parameters as a plain nested dict, initialized in one quickly compiled call.

    Init runs once per run, so it is compiled at XLA's lowest optimization level (a quicker compile
    matters more than a faster init); inside a trace (jax.eval_shape, an outer jit) it is traced inline.
    """

    def init(key, *inputs):
        return module.init({"params": fast_key(key)}, *inputs, method=method)["params"]

    if not isinstance(key, jax.core.Tracer):
        init = jax.jit(init, compiler_options={"xla_backend_optimization_level": 0})
    return nn.meta.unbox(init(key, *inputs))
