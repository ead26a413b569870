"""The ring of 8 Gaussians (radius 2, std 0.02): the classic 2-D mode-collapse check for GANs.

Points come from an equal mixture of Gaussians centred on a circle; `ring_batches` draws a fresh batch
each step from a seeded stream, so batch `s` of seed `k` is always the same (exact resume).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from genjax.data.batching import host_rows

RING_MODES, RING_RADIUS, RING_STD = 8, 2.0, 0.02


def ring_centers(modes: int = RING_MODES, radius: float = RING_RADIUS) -> np.ndarray:
    angles = 2 * np.pi * np.arange(modes) / modes
    return (radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)).astype(np.float32)


def ring_data(rng: np.random.Generator | int, num: int, modes: int = RING_MODES, radius: float = RING_RADIUS,
              std: float = RING_STD) -> tuple[np.ndarray, np.ndarray]:
    """(points float32 (num, 2), mode index int32 (num,))."""
    rng = np.random.default_rng(rng)
    labels = rng.integers(0, modes, num).astype(np.int32)
    x = ring_centers(modes, radius)[labels] + std * rng.standard_normal((num, 2)).astype(np.float32)
    return x.astype(np.float32), labels


def ring_batches(batch_size: int, seed: int = 0, start_step: int = 0, **ring) -> Iterator[dict]:
    """Endless {'x', 'label'} batches; batch `s` is a function of (seed, s) only. Each host keeps its rows."""
    rows = host_rows(batch_size)
    step = start_step
    while True:
        x, y = ring_data(np.random.default_rng([seed, step]), batch_size, **ring)
        yield {"x": x[rows], "label": y[rows]}
        step += 1
