"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models"): each set's manifold is the union of balls around its points reaching
their k-th nearest neighbour in the same set (k = 3).

Precision = the fraction of generated samples inside the real manifold (how many samples look real);
recall = the fraction of real points inside the generated manifold (how much of the data is covered).
A Frechet distance averages both failures into one number; these two tell them apart.

Exact: all pairwise Euclidean distances in float64, in row blocks that bound memory, no approximate
nearest-neighbour search. A point at exactly the radius counts as inside, as in the authors' code.
"""

from __future__ import annotations

import numpy as np

from genjax.config import ConfigError

_BLOCK_ELEMENTS = 1 << 24  # distances held at once (128 MB in float64)


def _squared_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    return np.maximum(np.sum(a * a, axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T), 0.0)


def _row_blocks(n_rows: int, n_cols: int):
    step = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
    return (slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step))


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point of the same set."""
    features = np.asarray(features, np.float64)
    if not 1 <= k < len(features):
        raise ConfigError(f"k={k} nearest neighbours need more than k points; got {len(features)}")
    sq = np.sum(features * features, axis=1)
    radii = np.empty(len(features))
    for rows in _row_blocks(len(features), len(features)):
        d = _squared_distances(features[rows], features, sq)
        d[np.arange(d.shape[0]), np.arange(rows.start, rows.stop)] = 0.0  # a point is its own 0th neighbour
        radii[rows] = np.partition(d, k, axis=1)[:, k]
    return radii


def manifold_coverage(queries: np.ndarray, support: np.ndarray, support_radii: np.ndarray) -> float:
    """Fraction of `queries` within the ball of at least one `support` point."""
    queries, support = np.asarray(queries, np.float64), np.asarray(support, np.float64)
    sq = np.sum(support * support, axis=1)
    inside = np.zeros(len(queries), bool)
    for rows in _row_blocks(len(queries), len(support)):
        distances = _squared_distances(queries[rows], support, sq)
        inside[rows] = np.any(distances <= support_radii[None, :], axis=1)
    return float(np.mean(inside))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of feature set `fake` against feature set `real`, k-NN manifolds."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ConfigError(f"feature sets of shapes {real.shape} and {fake.shape}: expected (N, D) and (M, D)")
    precision = manifold_coverage(fake, real, knn_radii(real, k))
    recall = manifold_coverage(real, fake, knn_radii(fake, k))
    return precision, recall
