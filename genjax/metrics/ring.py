"""Mode coverage and sample quality on the ring of Gaussians (genjax.data.ring)."""

from __future__ import annotations

import math

import numpy as np

from genjax.data.ring import RING_MODES, RING_RADIUS, RING_STD, ring_centers


def ring_score(samples, modes: int = RING_MODES, radius: float = RING_RADIUS, std: float = RING_STD,
               min_share: float = 0.008) -> dict:
    """{'modes': covered modes, 'hq': share of high-quality samples, 'per_mode': counts}.

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
