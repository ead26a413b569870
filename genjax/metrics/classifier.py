"""Domain feature networks for images too small for Inception (8x8 digits): a small classifier whose
penultimate layer is the feature space and whose logits give the samples' class histogram.

Numbers must reproduce across machines, so the digits classifier ships with the package, versioned
(`weights/digits_v1.msgpack`, 0.4 MB), together with the reference values it gave when it was made;
`tests/test_metrics_shipped.py` checks that it still gives them. It was made by

    python -m genjax.metrics ship-classifier digits genjax/metrics/weights/digits_v1.msgpack

(seeded training, 600 steps, ~20 s on a CPU). A changed recipe gets a new version file, never an
overwritten one: results measured with v1 stay reproducible. Datasets without a shipped network get
one trained from a fixed seed on first use and cached in `$GENJAX_CACHE` (default ~/.cache/genjax);
its numbers are comparable between runs on that machine only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax.data.batching import batch_indices

FEATURE_DIM = 128
WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
# dataset name -> (shipped file, image shape it was trained on)
SHIPPED = {"digits": ("digits_v1.msgpack", (8, 8, 1))}


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
    """A frozen classifier: `features(images)` (N, 128) and `predict(images)` (N,) class ids."""

    params: dict
    num_classes: int
    test_accuracy: float
    version: str = ""  # the shipped file's name, or "cache:<file>" for a network trained on this machine
    reference: dict = dataclasses.field(default_factory=dict)  # values published with shipped weights

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


def train_classifier(train: dict, test: dict, num_classes: int, seed: int = 0, steps: int = 600,
                     batch_size: int = 128) -> FeatureNet:
    """Trains the feature classifier (deterministic from `seed` on one machine); seconds for digits."""
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


# ----------------------------------------------------------------------------- files


def save(net: FeatureNet, path: str, **extra) -> None:
    """Writes `net` (and any `extra` record fields) atomically: a reader never sees half a file."""
    record = {"params": flax.serialization.to_state_dict(jax.device_get(net.params)),
              "num_classes": net.num_classes, "test_accuracy": net.test_accuracy,
              "reference": net.reference, **extra}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(record))
    os.replace(tmp, path)


def load(path: str, image_shape, version: str) -> FeatureNet:
    with open(path, "rb") as f:
        record = flax.serialization.msgpack_restore(f.read())
    num_classes = int(record["num_classes"])
    template = jax.eval_shape(Classifier(num_classes).init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    params = flax.serialization.from_state_dict(template["params"], record["params"])
    return FeatureNet(jax.tree.map(jnp.asarray, params), num_classes, float(record["test_accuracy"]),
                      version, {k: float(v) for k, v in record.get("reference", {}).items()})


def shipped_path(name: str) -> str:
    return os.path.join(WEIGHTS_DIR, SHIPPED[name][0])


def _cache_path(name: str, train: dict, seed: int) -> str:
    """The cache file of the network trained for `train`: keyed by the training data's content (so a
    relative and an absolute path to one folder share it, and an edited folder gets a new one), named
    after the data source's last path component."""
    root = os.environ.get("GENJAX_CACHE", os.path.expanduser("~/.cache/genjax"))
    digest = hashlib.sha1(f"{tuple(train['image'].shape)}-{seed}-v1".encode())
    for k in ("image", "label"):
        if k in train:
            digest.update(np.ascontiguousarray(train[k]).tobytes())
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(name.rstrip("/\\")))
    return os.path.join(root, "feature_nets", f"{stem or 'data'}-{digest.hexdigest()[:10]}.msgpack")


def feature_net(name: str, train: dict, test: dict, num_classes: int, seed: int = 0) -> FeatureNet:
    """The feature classifier for dataset `name`: the shipped one where there is one (digits), else
    one trained on first use from `seed` and cached on this machine."""
    shape = tuple(train["image"].shape[1:])
    if name in SHIPPED and SHIPPED[name][1] == shape and seed == 0:
        return load(shipped_path(name), shape, SHIPPED[name][0])
    path = _cache_path(name, train, seed)
    if os.path.exists(path):
        return load(path, shape, f"cache:{os.path.basename(path)}")
    print(f"genjax: training a feature classifier for {name!r} (no shipped one); cached at {path}. Its "
          "Frechet/KID/precision/recall compare runs on this machine, not across machines.", file=sys.stderr)
    net = dataclasses.replace(train_classifier(train, test, num_classes, seed),
                              version=f"cache:{os.path.basename(path)}")
    save(net, path)
    return net


def make_shipped(name: str, out: str) -> FeatureNet:
    """Trains the shipped network for `name` (seed 0) and records its reference values beside it."""
    from genjax import data
    from genjax.metrics.quality import reference_scores

    train, test = data.load(name, "train").all(), data.load(name, "test").all()
    net = train_classifier(train, test, data.load(name, "train").num_classes, seed=0)
    num = 1000
    reference = reference_scores(net, train["image"], test["image"], num)
    net = dataclasses.replace(net, version=os.path.basename(out), reference={"num": float(num), **reference})
    save(net, out, made_by=f"python -m genjax.metrics ship-classifier {name} {out}", jax=jax.__version__,
         flax=flax.__version__, optax=optax.__version__)
    return net
