"""Seeded, resumable batch order over any random-access dataset.

The examples of global step `s` are a pure function of `(seed, s)`: example number `i = s * B + j` of
the stream is `perm(epoch)[i % N]` with `epoch = i // N` and `perm(epoch)` a permutation seeded by
`(seed, epoch)`. A resumed run therefore sees exactly the batches an uninterrupted run would, with no
iterator state to checkpoint. Each host takes only its rows of the global batch.
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Iterator

import jax
import numpy as np

from genjax.config import ConfigError
from genjax.data.transforms import flip_rows


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


def check_batch_fits(batch_size: int, size: int, what: str = "training images") -> None:
    """A global batch must not exceed the dataset: call before anything is built or compiled."""
    if batch_size < 1:
        raise ConfigError(f"train.batch_size={batch_size} must be at least 1")
    if batch_size > size:
        raise ConfigError(f"train.batch_size={batch_size:,} is larger than the {size:,} {what}; "
                          f"use --train.batch_size {size} or less (or more data)")


class StepBatch:
    """The host rows of the batch of global step `step` (a picklable function of the step alone, so
    loader workers can compute any step's batch independently)."""

    def __init__(self, fetch: Callable[[np.ndarray], dict], size: int, batch_size: int, seed: int,
                 flip: bool = False):
        self.fetch, self.size, self.batch_size, self.seed, self.flip = fetch, size, batch_size, seed, flip
        self.rows = host_rows(batch_size)

    def __call__(self, step: int) -> dict:
        batch = self.fetch(batch_indices(step, self.batch_size, self.size, self.seed)[self.rows])
        if self.flip:
            batch = {**batch, "image": flip_rows(batch["image"], self.seed, step, self.batch_size, self.rows)}
        return batch


def batches(fetch: Callable[[np.ndarray], dict], size: int, batch_size: int, seed: int,
            start_step: int = 0, *, workers: int = 0, prefetch: int = 2, flip: bool = False) -> Iterator[dict]:
    """Endless host-local batches from step `start_step` on (by epochs, reshuffled each epoch).

    `workers` > 0 computes batches (reading, decoding, augmenting) in that many processes through grain,
    `prefetch` batches ahead each; the batches are identical to the in-process ones. `flip` adds random
    horizontal flips (for natural images; not for digits), also a function of (seed, step).
    """
    check_batch_fits(batch_size, size, "examples")
    make = StepBatch(fetch, size, batch_size, seed, flip)
    if workers > 0:
        from genjax.data.pipeline import parallel_batches

        return parallel_batches(make, start_step, workers, prefetch)
    return (make(step) for step in itertools.count(start_step))
