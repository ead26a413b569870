"""Batches computed ahead in worker processes (grain), in step order.

The batch of a step is a pure function of the step (`batching.StepBatch`), so the loader only has to
spread steps over processes: grain's `MapDataset.range(start, ...)` of step numbers, mapped through that
function, `mp_prefetch`ed by `workers` processes that each compute every `workers`-th step and keep
`prefetch` batches ready. grain hands them back in step order, so the stream equals the in-process one
batch for batch, and a resumed run starts at its step with no loader state to restore.

Workers are spawned processes that receive the batch function pickled: a source's
reader must be picklable (genjax's are; a memory-mapped array travels as its file name).
"""

from __future__ import annotations

import atexit
import pickle
import weakref
from typing import Iterator

import numpy as np

from genjax.config import ConfigError

_FOREVER = 2**62  # grain's range needs an end; no run takes this many steps


def parallel_batches(make, start_step: int, workers: int, prefetch: int = 2) -> Iterator[dict]:
    try:
        import grain
    except ImportError as e:
        raise ConfigError("data workers need grain: pip install grain (or set the number of workers to 0)") from e
    try:
        pickle.dumps(make)
    except Exception as e:
        raise ConfigError(f"the dataset cannot be sent to loader workers ({type(e).__name__}: {e}); "
                          "use workers=0, or a picklable fetch function (no lambdas or closures)") from None
    _mark_flags_parsed()
    steps = grain.MapDataset.range(start_step, _FOREVER).map(make)
    loader = steps.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    loader = loader.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                             per_worker_buffer_size=max(1, prefetch)))
    return Loader(iter(loader))


class Loader:
    """grain's iterator, closed (workers stopped, shared memory freed) by `close()`, when garbage
    collected, or at interpreter exit at the latest: grain's own clean-up fails noisily during shutdown."""

    def __init__(self, iterator):
        self._iterator = iterator
        _open_loaders.add(self)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        # Copied out of grain's shared memory (about 0.1 ms per MB), so no batch kept by the caller pins
        # a shared-memory block, whose clean-up fails when it happens during interpreter shutdown.
        return {k: np.array(v) for k, v in next(self._iterator).items()}

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            iterator.close()

    def __del__(self):
        self.close()


_open_loaders: "weakref.WeakSet[Loader]" = weakref.WeakSet()
atexit.register(lambda: [loader.close() for loader in list(_open_loaders)])


def _mark_flags_parsed() -> None:
    """grain's workers read absl flags; a program that never called absl's app.run has not parsed them,
    and the workers would fail on the first flag they read."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
