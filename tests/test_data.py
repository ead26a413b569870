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
    (np.ones((4, 2, 8, 8, 1)), "expects \\(N, H, W, C\\)"),
    (np.full((4, 8, 8, 1), 255.0), "divide uint8 pixels by 255"),
    (np.full((4, 8, 8, 1), np.nan), "finite"),
])
def test_bad_images_are_rejected(images, needle):
    with pytest.raises(ConfigError, match=needle):
        data.from_arrays(images, np.zeros(4), num_classes=2)


def test_a_batch_larger_than_the_dataset_is_one_clear_error():
    src = data.digits("train")
    with pytest.raises(ConfigError, match=r"train.batch_size=1,000,000,000 is larger than the 1,438 training images; "
                                          r"use --train.batch_size 1438 or less"):
        data.check_batch_fits(1_000_000_000, src.size)
    with pytest.raises(ConfigError, match="train.batch_size=1,439 is larger"):  # not a MemoryError, and at once
        data.batches(src.fetch, src.size, src.size + 1, seed=0)
    data.check_batch_fits(src.size, src.size)


def test_flips_are_a_function_of_seed_and_step_on_any_host_layout():
    src = data.digits("train")
    plain = next(data.batches(src.fetch, src.size, 64, seed=0, start_step=5))
    flipped = next(data.batches(src.fetch, src.size, 64, seed=0, start_step=5, flip=True))
    is_flipped = [(f == p[:, ::-1]).all() and not (f == p).all() for f, p in zip(flipped["image"], plain["image"])]
    kept = [(f == p).all() for f, p in zip(flipped["image"], plain["image"])]
    assert all(a or b for a, b in zip(is_flipped, kept)) and 16 < sum(is_flipped) < 48
    from genjax.data.transforms import flip_rows

    whole = flip_rows(plain["image"], 0, 5, 64, slice(0, 64))
    halves = np.concatenate([flip_rows(plain["image"][:32], 0, 5, 64, slice(0, 32)),
                             flip_rows(plain["image"][32:], 0, 5, 64, slice(32, 64))])
    np.testing.assert_array_equal(whole, halves)  # two hosts flip exactly what one host does
    np.testing.assert_array_equal(whole, flipped["image"])


def test_worker_processes_yield_the_in_process_batches_and_resume(tmp_path):
    """grain workers decode PNG files and flip; the stream equals the in-process one from any start step."""
    from tests.test_data_sources import make_image_folder

    make_image_folder(str(tmp_path / "f"), num_classes=3, per_class=10, c=3)
    src = data.load(str(tmp_path / "f"), "train")
    want = [b for _, b in zip(range(8), data.batches(src.fetch, src.size, 8, seed=1, start_step=3, flip=True))]
    loader = data.batches(src.fetch, src.size, 8, seed=1, start_step=3, workers=2, flip=True)
    try:
        got = [next(loader) for _ in range(8)]
    finally:
        loader.close()
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g["image"], w["image"])
        np.testing.assert_array_equal(g["label"], w["label"])
    with pytest.raises(ConfigError, match="cannot be sent to loader workers"):
        data.batches(lambda idx: {"image": idx}, 10, 2, seed=0, workers=1)


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
