"""Frechet distance and KID: against scipy and analytic values, and sane on real digits."""

import numpy as np
import pytest
import scipy.linalg

from genjax import data, metrics


def _reference_frechet(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(500, 16))
    f2 = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 1.0
    np.testing.assert_allclose(metrics.frechet_distance(f1, f2), _reference_frechet(f1, f2), rtol=1e-6)


def test_frechet_analytic_gaussians():
    # N(0, I) vs N(m, 4 I) in d dims: |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d
    rng = np.random.default_rng(1)
    d, m = 4, np.array([1.0, 0.0, 2.0, 0.0])
    f1 = rng.normal(size=(200_000, d))
    f2 = m + 2.0 * rng.normal(size=(200_000, d))
    assert metrics.frechet_distance(f1, f2) == pytest.approx(5.0 + d, rel=2e-2)


def test_kid_is_near_zero_for_one_distribution_and_positive_otherwise():
    rng = np.random.default_rng(2)
    same = metrics.kernel_inception_distance(rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8)))[0]
    shifted = metrics.kernel_inception_distance(rng.normal(size=(1000, 8)), 0.5 + rng.normal(size=(1000, 8)))[0]
    assert abs(same) < 0.01 < shifted


@pytest.fixture(scope="module")
def digits_net():
    train, test = data.digits("train").all(), data.digits("test").all()
    return metrics.feature_net("digits", train, test, 10), train, test


def test_feature_classifier_is_accurate_and_cached(digits_net):
    net, train, test = digits_net
    assert net.test_accuracy > 0.9
    again = metrics.feature_net("digits", train, test, 10)  # from the cache: identical features
    np.testing.assert_array_equal(again.features(test["image"][:10]), net.features(test["image"][:10]))


def test_frechet_grows_with_noise_and_blur(digits_net):
    from scipy.ndimage import gaussian_filter

    net, train, test = digits_net
    real = train["image"]
    floor = metrics.sample_quality(net, real, test["image"])["frechet"]
    rng = np.random.default_rng(0)
    noisy = [metrics.sample_quality(net, real, np.clip(test["image"] + s * rng.normal(size=test["image"].shape),
                                                       0, 1).astype(np.float32))["frechet"]
             for s in (0.1, 0.25, 0.5)]
    blurred = [metrics.sample_quality(net, real, gaussian_filter(test["image"], sigma=(0, s, s, 0)))["frechet"]
               for s in (0.5, 1.0, 2.0)]
    assert floor < noisy[0] < noisy[1] < noisy[2]
    assert floor < blurred[0] < blurred[1] < blurred[2]
    assert noisy[2] > 5 * floor


def test_gmm_baseline_shapes_and_quality(digits_net):
    net, train, _ = digits_net
    fake = metrics.gaussian_mixture_baseline(train["image"], 300)
    assert fake.shape == (300, 8, 8, 1) and fake.min() >= 0 and fake.max() <= 1
    q = metrics.sample_quality(net, train["image"], fake)
    assert q["class_tv"] < 0.5 and q["frechet"] > 0
