"""One call per evaluation: a model's sample quality and the two bars it is read against.

`net` is any feature network with `features(images)` (the digits classifier, or the FID Inception);
if it also classifies (`num_classes > 0`, `predict`), the samples' class histogram is scored too.
"""

from __future__ import annotations

import numpy as np

from genjax.metrics.frechet import frechet_distance, kernel_inception_distance
from genjax.metrics.manifold import precision_recall

K_NEAREST = 3  # Kynkaanniemi et al.'s choice for precision/recall


def _scores(net, real_features: np.ndarray, fake: np.ndarray, labels=None) -> dict:
    fake_features = net.features(fake)
    kid, kid_std = kernel_inception_distance(real_features, fake_features)
    precision, recall = precision_recall(real_features, fake_features, K_NEAREST)
    out = {"frechet": frechet_distance(real_features, fake_features), "kid": kid, "kid_std": kid_std,
           "precision": precision, "recall": recall}
    if getattr(net, "num_classes", 0):
        predicted = net.predict(fake)
        counts = np.bincount(predicted, minlength=net.num_classes) / len(fake)
        # total variation distance between the samples' predicted classes and uniform: 0 = balanced
        out["class_tv"] = float(0.5 * np.abs(counts - 1.0 / net.num_classes).sum())
        out["class_hist"] = counts.tolist()
        if labels is not None:  # a conditional model: does it draw the class it is asked for?
            out["label_accuracy"] = float(np.mean(predicted == np.asarray(labels)))
    return out


def sample_quality(net, real: np.ndarray, fake: np.ndarray, labels=None) -> dict:
    """Frechet distance, KID, precision and recall (k=3) of `fake` against `real` in `net`'s features,
    and (classifiers only) `class_tv`, the predicted-class histogram's distance from uniform,
    `class_hist`, and with the classes the samples were drawn for (`labels`) `label_accuracy`."""
    return _scores(net, net.features(real), fake, labels)


def gaussian_mixture_baseline(images: np.ndarray, num: int, components: int = 10,
                              seed: int = 0) -> np.ndarray:
    """Samples of a `components`-Gaussian mixture fit to the pixels: the bar a generative model must clear."""
    from sklearn.mixture import GaussianMixture

    flat = images.reshape(len(images), -1)
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed, reg_covar=1e-3).fit(flat)
    samples, _ = gmm.sample(num)
    rng = np.random.default_rng(seed)
    samples = samples[rng.permutation(num)]  # gmm.sample returns samples grouped by component
    return np.clip(samples, 0.0, 1.0).reshape(num, *images.shape[1:]).astype(np.float32)


def reference_scores(net, real: np.ndarray, test: np.ndarray, num: int) -> dict:
    """The two bars a model's `num` samples are read against, scored like them against `real`:
    a Gaussian mixture fit to the pixels (`num` samples; a model must beat it) and held-out real
    images (`test[:num]`, the real-vs-real floor; `real_samples` says how many there were, which is
    fewer than `num` when the test split is small, e.g. digits' 359)."""
    real_features = net.features(real)
    gmm = _scores(net, real_features, gaussian_mixture_baseline(real, num))
    floor = _scores(net, real_features, test[:num])
    out = {"frechet_gmm_baseline": gmm["frechet"], "kid_gmm_baseline": gmm["kid"],
           "precision_gmm_baseline": gmm["precision"], "recall_gmm_baseline": gmm["recall"],
           "frechet_test_floor": floor["frechet"], "kid_test_floor": floor["kid"],
           "real_precision": floor["precision"], "real_recall": floor["recall"],
           "real_samples": min(num, len(test))}
    if "class_tv" in gmm:
        out["class_tv_gmm_baseline"] = gmm["class_tv"]
    return out
