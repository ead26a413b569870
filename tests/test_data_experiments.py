"""Every --data source kind through the real experiment entry points, for two steps on small generated data.

tfds runs on tfds's own mock data (random examples shaped like the real dataset, no download): an image
dataset through the VAE experiment and tiny_shakespeare through gpt_text. The feature classifier behind the
Frechet metric is trained for 20 steps instead of 600: its quality is not under test here.
"""

import functools
import importlib
import os

import numpy as np
import pytest

from experiments import gpt_text, vae_digits
from genjax import config as config_lib
from tests.test_data_sources import MNIST_5K, make_idx_folder, make_image_folder, random_images


@pytest.fixture(autouse=True)
def _quick_feature_net(monkeypatch):
    for name in ("genjax.metrics.frechet", "genjax.metrics.classifier"):  # wherever it lives now
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "train_classifier"):
            monkeypatch.setattr(module, "train_classifier", functools.partial(module.train_classifier, steps=20))


def train_vae(workdir, data, **overrides):
    settings = {"data": data, "train.steps": "2", "train.batch_size": "8", "train.log_every": "1",
                "train.eval_every": "2", "train.sample_every": "2", "train.ckpt_every": "2",
                "train.num_devices": "1", "model.iwae_samples": "2", "num_quality_samples": "32",
                "model.hidden": "16", "model.latent_dim": "2", **overrides}
    summary = vae_digits.train_and_evaluate(config_lib.override(vae_digits.Config(), settings), str(workdir))
    assert summary["steps"] == 2 and np.isfinite(summary["test_elbo"])
    return summary


def test_vae_on_a_folder_of_pngs(tmp_path):
    make_image_folder(str(tmp_path / "pngs"), num_classes=3, per_class=30, h=8, w=8, c=1)  # 9 test images
    train_vae(tmp_path / "run", str(tmp_path / "pngs"))
    assert os.path.exists(tmp_path / "run" / "summary.json")


def test_vae_resizes_and_converts_a_folder_to_the_requested_shape(tmp_path):
    make_image_folder(str(tmp_path / "pngs"), num_classes=3, per_class=30, h=12, w=10, c=3)
    train_vae(tmp_path / "run", str(tmp_path / "pngs"), image_size="8", channels="1")
    saved = config_lib.load(str(tmp_path / "run"))["config"]
    assert saved["model"]["image_shape"] == [8, 8, 1] and saved["image_size"] == 8


def test_vae_on_an_npz_file(tmp_path):
    np.savez(tmp_path / "d.npz", images=random_images(90, 8, 8, 1), labels=np.arange(90) % 4)
    train_vae(tmp_path / "run", str(tmp_path / "d.npz"))


def test_vae_on_idx_files(tmp_path):
    make_idx_folder(str(tmp_path / "idx"), n_train=40, n_test=12)
    train_vae(tmp_path / "run", str(tmp_path / "idx"))


@pytest.mark.skipif(not os.path.isdir(MNIST_5K), reason="../shared/datasets/mnist-5k is not on this machine")
def test_vae_on_real_mnist_5k(tmp_path):
    train_vae(tmp_path / "run", MNIST_5K)


def test_vae_on_tfds_mock_mnist(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        train_vae(tmp_path / "run", "tfds:mnist")


def test_gpt_text_on_tfds_mock_tiny_shakespeare(tmp_path):
    import tensorflow_datasets as tfds

    cfg = config_lib.override(gpt_text.Config(), {
        "data": "tfds:tiny_shakespeare", "train.steps": "2", "train.log_every": "1", "train.eval_every": "2",
        "train.sample_every": "2", "train.num_devices": "1", "eval_blocks": "4", "sample.length": "8",
        "model.n_layer": "1", "model.d_model": "32", "model.n_head": "2", "model.block_size": "16"})
    # the mock's examples are short random strings: 300 of them make a corpus of a few thousand characters
    with tfds.testing.mock_data(num_examples=300, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = gpt_text.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert summary["steps"] == 2 and np.isfinite(summary["val_bits_per_char"])
