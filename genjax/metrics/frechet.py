"""Sample quality without Inception weights: Frechet distance and KID in a frozen classifier's features.

No pretrained network can be downloaded here, so each dataset gets its own small classifier, trained
once from a fixed seed and cached on disk (`$GENJAX_CACHE`, default `~/.cache/genjax`). Its penultimate
layer is the feature space; its logits give the predicted-class histogram of samples (mode collapse).
Distances are comparable between runs that use the same dataset and seed, not across datasets or with
published Inception FIDs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax.data.batching import batch_indices

FEATURE_DIM = 128


class Classifier(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        for i, ch in enumerate((32, 64, 128)):
            x = nn.Conv(ch, (3, 3), strides=(1, 1) if i == 0 else (2, 2), name=f"conv{i}")(x)
            x = nn.gelu(x)
        x = jnp.mean(x, axis=(1, 2))
        features = nn.Dense(FEATURE_DIM, name="features")(x)
        logits = nn.Dense(self.num_classes, name="logits")(nn.gelu(features))
        return features, logits


@dataclasses.dataclass(frozen=True)
class FeatureNet:
    """A frozen classifier: `features(images)` (N, 128) and `logits(images)` (N, classes)."""

    params: dict
    num_classes: int
    test_accuracy: float

    def _apply(self, images):
        return _apply(self.params, jnp.asarray(images, jnp.float32), self.num_classes)

    def features(self, images, batch: int = 1024) -> np.ndarray:
        return np.concatenate([np.asarray(self._apply(images[i:i + batch])[0], np.float64)
                               for i in range(0, len(images), batch)])

    def predict(self, images, batch: int = 1024) -> np.ndarray:
        return np.concatenate([np.asarray(jnp.argmax(self._apply(images[i:i + batch])[1], -1))
                               for i in range(0, len(images), batch)])


@functools.partial(jax.jit, static_argnums=2)
def _apply(params, images, num_classes):
    return Classifier(num_classes).apply({"params": params}, images)


def _cache_path(name: str, shape, seed: int) -> str:
    root = os.environ.get("GENJAX_CACHE", os.path.expanduser("~/.cache/genjax"))
    tag = hashlib.sha1(f"{name}-{tuple(shape)}-{seed}-v1".encode()).hexdigest()[:10]
    return os.path.join(root, "feature_nets", f"{name}-{tag}.msgpack")


def train_classifier(train: dict, test: dict, num_classes: int, seed: int = 0, steps: int = 600,
                     batch_size: int = 128) -> FeatureNet:
    """Trains the feature classifier (deterministic from `seed`); a few seconds for digits on a CPU."""
    model = Classifier(num_classes)
    params = model.init(jax.random.key(seed), jnp.zeros((1, *train["image"].shape[1:])))["params"]
    tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            _, logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    n = len(train["image"])
    for s in range(steps):
        idx = batch_indices(s, batch_size, n, seed)
        params, opt_state = step(params, opt_state, train["image"][idx], train["label"][idx])
    net = FeatureNet(params, num_classes, 0.0)
    accuracy = float(np.mean(net.predict(test["image"]) == test["label"]))
    return dataclasses.replace(net, test_accuracy=accuracy)


def feature_net(name: str, train: dict, test: dict, num_classes: int, seed: int = 0) -> FeatureNet:
    """The cached feature classifier for dataset `name`, trained on first use."""
    path = _cache_path(name, train["image"].shape[1:], seed)
    if os.path.exists(path):
        template = jax.eval_shape(Classifier(num_classes).init, jax.random.key(0),
                                  jnp.zeros((1, *train["image"].shape[1:])))["params"]
        with open(path, "rb") as f:
            record = flax.serialization.msgpack_restore(f.read())
        params = flax.serialization.from_state_dict(template, record["params"])
        return FeatureNet(params, num_classes, float(record["test_accuracy"]))
    net = train_classifier(train, test, num_classes, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(
            {"params": flax.serialization.to_state_dict(jax.device_get(net.params)),
             "test_accuracy": net.test_accuracy}))
    os.replace(tmp, path)
    return net


# ----------------------------------------------------------------------------- distances


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fit to two feature sets.

    Tr (S1 S2)^(1/2) is computed as Tr (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric PSD square root, so it
    stays real and stable in float64.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    r1 = _sqrt_psd(s1)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross)


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 20, subset_size: int = 500,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3, mean and std over random subsets."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
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


# ----------------------------------------------------------------------------- one call per evaluation


def sample_quality(net: FeatureNet, real: np.ndarray, fake: np.ndarray) -> dict:
    """Frechet distance, KID and the predicted-class histogram's distance from uniform for `fake`."""
    fr, ff = net.features(real), net.features(fake)
    kid, kid_std = kernel_inception_distance(fr, ff)
    counts = np.bincount(net.predict(fake), minlength=net.num_classes) / len(fake)
    return {
        "frechet": frechet_distance(fr, ff),
        "kid": kid,
        "kid_std": kid_std,
        # total variation distance between the samples' predicted classes and uniform: 0 = balanced
        "class_tv": float(0.5 * np.abs(counts - 1.0 / net.num_classes).sum()),
    }


def gaussian_mixture_baseline(images: np.ndarray, num: int, components: int = 10, seed: int = 0) -> np.ndarray:
    """Samples of a `components`-Gaussian mixture fit to the pixels: the bar a generative model must clear."""
    from sklearn.mixture import GaussianMixture

    flat = images.reshape(len(images), -1)
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed, reg_covar=1e-3).fit(flat)
    samples, _ = gmm.sample(num)
    rng = np.random.default_rng(seed)
    samples = samples[rng.permutation(num)]  # gmm.sample returns samples grouped by component
    return np.clip(samples, 0.0, 1.0).reshape(num, *images.shape[1:]).astype(np.float32)


def reference_scores(net: FeatureNet, real: np.ndarray, test: np.ndarray, num: int) -> dict:
    """The two bars a model's sample quality is read against: a Gaussian mixture fit to the pixels
    (`num` samples; a model must beat it) and the held-out real images (the floor)."""
    gmm = sample_quality(net, real, gaussian_mixture_baseline(real, num))
    floor = sample_quality(net, real, test)
    return {"frechet_gmm_baseline": gmm["frechet"], "kid_gmm_baseline": gmm["kid"],
            "class_tv_gmm_baseline": gmm["class_tv"],
            "frechet_test_floor": floor["frechet"], "kid_test_floor": floor["kid"]}
