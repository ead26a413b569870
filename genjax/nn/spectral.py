"""Spectral normalization as a pure function of a params pytree (Miyato et al., 2018).

Every weight matrix of a network (leaves named `kernel` or `embedding` with two or more dimensions) is
divided by an estimate of its largest singular value, obtained by power iteration. Kernels are viewed as
matrices of shape (prod(leading dims), out): a conv kernel (kh, kw, in, out) becomes (kh*kw*in, out).

The power-iteration vectors are ordinary state, not parameters: `init` makes a nested dict holding one
unit vector `u` (shape (out,)) per normalized leaf, mirroring the params' nesting; `normalize` returns the
normalized params and the refreshed vectors. Callers keep the vectors next to the trained params (the
GAN stores them as `params['discriminator']['spectral']`) and never hand them to the optimizer.
Gradients flow through sigma = v^T W u but not through u and v (the usual stop-gradient).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

NORMALIZED_NAMES = ("kernel", "embedding")


def _eligible(path: tuple[str, ...], leaf) -> bool:
    return path[-1] in NORMALIZED_NAMES and getattr(leaf, "ndim", 0) >= 2


def _l2normalize(x, eps=1e-12):
    return x * jax.lax.rsqrt(jnp.sum(x * x) + eps)


def init(params: Any, key: jax.Array) -> dict:
    """One random unit vector per normalized leaf, in a nested dict mirroring `params`."""
    flat = traverse_util.flatten_dict(params)
    paths = [p for p, w in flat.items() if _eligible(p, w)]
    keys = jax.random.split(key, max(len(paths), 1))
    state = {}
    for k, path in zip(keys, paths):
        w = flat[path]
        state[path] = _l2normalize(jax.random.normal(k, (w.shape[-1],), w.dtype))
    return traverse_util.unflatten_dict(state)


def sigma(w: jax.Array, u: jax.Array, n_iters: int = 1, update: bool = True) -> tuple[jax.Array, jax.Array]:
    """(estimate of the top singular value of `w` as a matrix, new u).

    With update=False no iteration refreshes u: sigma = ||W u|| with the stored u (used by the
    generator's step, which must not change the discriminator's state).
    """
    mat = w.reshape(-1, w.shape[-1])  # (in, out); u lives on the `out` side
    u = jax.lax.stop_gradient(u)
    if update:
        for _ in range(n_iters):
            v = _l2normalize(mat @ u)
            u = _l2normalize(mat.T @ v)
    v = jax.lax.stop_gradient(_l2normalize(mat @ u))
    u = jax.lax.stop_gradient(u)
    return v @ (mat @ u), u


def normalize(params: Any, state: dict, n_iters: int = 1, update: bool = True) -> tuple[Any, dict]:
    """(params with every normalized leaf divided by its sigma, refreshed power-iteration state)."""
    flat = traverse_util.flatten_dict(params)
    flat_u = traverse_util.flatten_dict(state)
    new_u = {}
    for path, u in flat_u.items():
        w = flat[path]
        s, new_u[path] = sigma(w, u, n_iters, update)
        flat[path] = w / s
    return traverse_util.unflatten_dict(flat), traverse_util.unflatten_dict(new_u)
