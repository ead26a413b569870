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


def test_frechet_with_fewer_samples_than_dimensions():
    # singular covariances: the factored path (n <= d) against the d x d eigendecomposition path
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(30, 64)), rng.normal(size=(25, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.5
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (f1, f2)]
    np.testing.assert_allclose(metrics.frechet_distance(f1, f2),
                               metrics.frechet_distance_from_stats(*stats[0], *stats[1]), rtol=1e-7)
    assert metrics.frechet_distance(f1, f1) == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def digits_net():
    train, test = data.digits("train").all(), data.digits("test").all()
    return metrics.feature_net("digits", train, test, 10), train, test


def test_digits_classifier_ships_with_the_package(monkeypatch):
    from genjax.metrics import classifier

    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("trained, not loaded"))
    train, test = data.digits("train").all(), data.digits("test").all()
    net = metrics.feature_net("digits", train, test, 10)
    assert net.version == "digits_v1.msgpack"
    assert np.mean(net.predict(test["image"]) == test["label"]) == pytest.approx(net.test_accuracy)
    assert net.test_accuracy > 0.97


def test_other_datasets_train_once_then_load_from_the_cache(monkeypatch):
    import functools

    from genjax.metrics import classifier

    train, test = data.digits("train").all(), data.digits("test").all()
    quick = functools.partial(classifier.train_classifier, steps=5)
    monkeypatch.setattr(classifier, "train_classifier", quick)
    # --data is often a path: relative and absolute spellings of one folder share the cached network
    net = metrics.feature_net("../data/my_digits/", train, test, 10)
    assert net.version.startswith("cache:my_digits-")
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("trained twice"))
    again = metrics.feature_net("/home/me/data/my_digits", train, test, 10)
    np.testing.assert_array_equal(again.features(test["image"][:10]), net.features(test["image"][:10]))
    # ...but other images under the same name get their own network
    monkeypatch.setattr(classifier, "train_classifier", quick)
    edited = {**train, "image": train["image"][::-1].copy()}
    assert metrics.feature_net("/home/me/data/my_digits", edited, test, 10).version != net.version


def test_sample_quality_reports_precision_and_recall_for_any_feature_net(digits_net):
    net, train, test = digits_net
    q = metrics.sample_quality(net, train["image"], test["image"])
    assert {"frechet", "kid", "kid_std", "precision", "recall", "class_tv"} <= q.keys()
    assert 0.8 < q["precision"] <= 1 and 0.8 < q["recall"] <= 1

    class PixelFeatures:  # a feature net without classes, like the FID Inception
        def features(self, images):
            return np.asarray(images, np.float64).reshape(len(images), -1)

    q = metrics.sample_quality(PixelFeatures(), train["image"], test["image"])
    assert "class_tv" not in q and 0 < q["precision"] <= 1


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


def test_inception_input_errors_name_the_value():
    from genjax.config import ConfigError
    from genjax.metrics import inception

    net = inception.InceptionNet(variables={}, resize=False)
    with pytest.raises(ConfigError, match="too small"):
        net.features(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ConfigError, match=r"\(1, 80, 80, 2\)"):
        net.features(np.zeros((1, 80, 80, 2), np.float32))
    with pytest.raises(ConfigError, match="do not exist"):
        inception.inception_net("/nonexistent/pt_inception.pth")


def test_inception_download_failure_says_how_to_get_the_weights(tmp_path, monkeypatch):
    import urllib.request

    from genjax.config import ConfigError

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.delenv("GENJAX_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("GENJAX_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(ConfigError, match="Network is unreachable.*GENJAX_INCEPTION_WEIGHTS"):
        metrics.inception_net()
    assert not list(tmp_path.rglob("*.pth*"))  # no partial file left behind
