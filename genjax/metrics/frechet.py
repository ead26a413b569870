"""Distances between two sets of features: Frechet distance (FID when the features are Inception's) and
the kernel distance KID (unbiased MMD^2, cubic polynomial kernel)."""

from __future__ import annotations

import numpy as np

from genjax.config import ConfigError


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _cov_factor(f: np.ndarray) -> np.ndarray:
    """R with R^T R = cov(f): the centered features themselves when there are fewer than dimensions
    (n x d, no d x d work at all), else the symmetric square root of the covariance (d x d)."""
    n, d = f.shape
    if n <= d:
        return (f - f.mean(0)) / np.sqrt(n - 1)
    return _sqrt_psd(np.cov(f, rowvar=False))


def check_features(f1: np.ndarray, f2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ConfigError(f"feature sets of shapes {f1.shape} and {f2.shape}: expected (N, D) and (M, D)")
    if min(len(f1), len(f2)) < 2:
        raise ConfigError(f"feature sets of {len(f1)} and {len(f2)} rows: a covariance needs at least 2 each")
    return f1, f2


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fit to two feature sets.

    Tr (S1 S2)^(1/2) is the nuclear norm of R1 R2^T for any factors S = R^T R (the eigenvalues of
    S1 S2 are the squared singular values of R1 R2^T), so it is real and exact in float64 even when
    the covariances are singular (fewer samples than dimensions), where scipy's sqrtm is not.
    """
    f1, f2 = check_features(f1, f2)
    mean_term = np.sum((f1.mean(0) - f2.mean(0)) ** 2)
    trace_s1 = np.sum(np.var(f1, axis=0, ddof=1))
    trace_s2 = np.sum(np.var(f2, axis=0, ddof=1))
    cross = np.linalg.svd(_cov_factor(f1) @ _cov_factor(f2).T, compute_uv=False).sum()
    return float(mean_term + trace_s1 + trace_s2 - 2.0 * cross)


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """The same from precomputed means and covariances (e.g. pytorch-fid's `.npz` statistics)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    r1 = _sqrt_psd(sigma1)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ sigma2 @ r1), 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 20, subset_size: int = 500,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3, mean and std over random subsets."""
    f1, f2 = check_features(f1, f2)
    d = f1.shape[1]
    m = min(subset_size, len(f1), len(f2))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))
