"""Seeded, resumable batch order over any random-access dataset.

The examples of global step `s` are a pure function of `(seed, s)`: example number `i = s * B + j` of
the stream is `perm(epoch)[i % N]` with `epoch = i // N` and `perm(epoch)` a permutation seeded by
`(seed, epoch)`. A resumed run therefore sees exactly the batches an uninterrupted run would, with no
iterator state to checkpoint. Each host takes only its rows of the global batch.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import jax
import numpy as np


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def batch_indices(step: int, batch_size: int, size: int, seed: int) -> np.ndarray:
    """Dataset indices of the global batch at `step`."""
    stream = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, positions = np.divmod(stream, size)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        out[sel] = _permutation(seed, int(epoch), size)[positions[sel]]
    return out


def host_rows(batch_size: int) -> slice:
    """This process's rows of a global batch."""
    per_host = batch_size // jax.process_count()
    start = jax.process_index() * per_host
    return slice(start, start + per_host)


def batches(fetch: Callable[[np.ndarray], dict], size: int, batch_size: int, seed: int,
            start_step: int = 0) -> Iterator[dict]:
    """Endless host-local batches from step `start_step` on (by epochs, reshuffled each epoch)."""
    rows = host_rows(batch_size)
    step = start_step
    while True:
        yield fetch(batch_indices(step, batch_size, size, seed)[rows])
        step += 1
