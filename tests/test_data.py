"""Datasets and batching: embedded digits, seeded resumable order, tfds through mock data, bad images."""

import sys

import numpy as np
import pytest

from genjax import data
from genjax.config import ConfigError
from genjax.data.batching import batch_indices


def test_digits_splits():
    train, test = data.digits("train"), data.digits("test")
    assert train.shape == (8, 8, 1) and train.num_classes == 10
    assert train.size + test.size == 1797 and test.size == 359
    batch = train.all()
    assert batch["image"].dtype == np.float32 and batch["image"].min() == 0 and batch["image"].max() == 1
    assert set(np.unique(batch["label"])) == set(range(10))


def test_batch_order_is_a_function_of_seed_and_step():
    n, b = 50, 8
    a = [batch_indices(s, b, n, seed=3) for s in range(20)]
    again = [batch_indices(s, b, n, seed=3) for s in range(20)]
    other = [batch_indices(s, b, n, seed=4) for s in range(20)]
    assert all((x == y).all() for x, y in zip(a, again))
    assert not all((x == y).all() for x, y in zip(a, other))
    # each epoch visits every example exactly once (the stream is a concatenation of permutations)
    stream = np.concatenate(a)[: 3 * n].reshape(3, n)
    for epoch in stream:
        assert sorted(epoch) == list(range(n))
    assert not (stream[0] == stream[1]).all()  # reshuffled each epoch


def test_resumed_iterator_yields_the_same_batches():
    src = data.digits("train")
    full = data.batches(src.fetch, src.size, 32, seed=0)
    batches = [next(full) for _ in range(10)]
    resumed = data.batches(src.fetch, src.size, 32, seed=0, start_step=6)
    for want in batches[6:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


@pytest.mark.parametrize("images,needle", [
    (np.ones((4, 8, 8)), "expects \\(N, H, W, C\\)"),
    (np.full((4, 8, 8, 1), 255.0), "divide uint8 pixels by 255"),
    (np.full((4, 8, 8, 1), np.nan), "finite"),
])
def test_bad_images_are_rejected(images, needle):
    with pytest.raises(ConfigError, match=needle):
        data.from_arrays(images, np.zeros(4), num_classes=2)


def test_tfds_path_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        src = data.load("mnist", "train")
        assert src.shape == (28, 28, 1) and src.num_classes == 10 and src.size == 20
        batch = next(data.batches(src.fetch, src.size, 8, seed=0))
    assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32


def test_import_genjax_does_not_import_tensorflow():
    import subprocess

    code = ("import sys, genjax, genjax.train, genjax.loop, genjax.data, genjax.metrics, genjax.sample, "
            "genjax.models.vae; bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
