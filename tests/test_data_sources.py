"""Bring-your-own image sources (folders, .npz/.npy, idx), resize/crop/channels, splits, bad input, tfds errors."""

import gzip
import hashlib
import os
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from genjax import data
from genjax.config import ConfigError
from genjax.data import tfds_data
from genjax.data.transforms import convert_channels, resize

MNIST_5K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "mnist-5k")


# ----------------------------------------------------------------------------- small generated datasets


def random_images(n, h=8, w=8, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def make_image_folder(root, num_classes=3, per_class=8, h=8, w=8, c=1, seed=0):
    """root/class_k/img_i.png; returns (images, labels) in the order genjax lists them."""
    images = random_images(num_classes * per_class, h, w, c, seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    for i, (image, label) in enumerate(zip(images, labels)):
        write_png(os.path.join(root, f"class_{label}", f"img_{i:03d}.png"), image)
    return images, labels


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def make_idx_folder(root, n_train=40, n_test=10, h=8, w=8, gz=True):
    os.makedirs(root, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images = random_images(n, h, w, 1, seed)[..., 0]
        labels = np.arange(n) % 10
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{ext}"), images)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{ext}"), labels)
        out[prefix] = (images, labels)
    return out


# ----------------------------------------------------------------------------- folders


def test_folder_with_class_subfolders_reads_exact_pixels_and_labels(tmp_path):
    images, labels = make_image_folder(str(tmp_path / "imgs"), num_classes=3, per_class=10, c=3)
    src = data.load(str(tmp_path / "imgs"), "all")
    assert (src.size, src.shape, src.num_classes) == (30, (8, 8, 3), 3)
    raw, got_labels = src.read(np.arange(30))
    assert raw.dtype == np.uint8  # pixels stay uint8 until a batch is made
    np.testing.assert_array_equal(raw, images)
    np.testing.assert_array_equal(got_labels, labels)
    batch = src.fetch(np.array([5, 0]))
    np.testing.assert_array_equal(batch["image"], images[[5, 0]].astype(np.float32) / 255)
    # the seeded hold-out rule: disjoint, covering, the same on every call, 10% in test
    train, test = data.load(str(tmp_path / "imgs"), "train"), data.load(str(tmp_path / "imgs"), "test")
    assert (train.size, test.size) == (27, 3)
    seen = np.concatenate([train.read(np.arange(27))[0], test.read(np.arange(3))[0]])
    assert sorted(map(bytes, seen)) == sorted(map(bytes, images))
    np.testing.assert_array_equal(data.load(str(tmp_path / "imgs"), "test").all()["image"], test.all()["image"])


def test_flat_folder_is_unlabelled_and_train_test_subfolders_are_splits(tmp_path):
    images = random_images(12)
    for i, image in enumerate(images):
        write_png(str(tmp_path / "flat" / f"{i:02d}.png"), image)
    (tmp_path / "flat" / "README.txt").write_text("not an image: skipped")
    src = data.load(str(tmp_path / "flat"), "all")
    assert (src.size, src.num_classes) == (12, 0)
    np.testing.assert_array_equal(src.all()["label"], np.zeros(12))
    np.testing.assert_array_equal(src.read(np.arange(12))[0], images)

    make_image_folder(str(tmp_path / "split" / "train"), num_classes=2, per_class=5)
    make_image_folder(str(tmp_path / "split" / "test"), num_classes=2, per_class=2, seed=1)
    train, test = data.load(str(tmp_path / "split"), "train"), data.load(str(tmp_path / "split"), "test")
    assert (train.size, test.size, train.num_classes, test.num_classes) == (10, 4, 2, 2)


def test_mixed_grey_and_rgb_become_rgb_and_channels_converts_explicitly(tmp_path):
    rgb = random_images(1, c=3)[0]
    grey = random_images(1, c=1, seed=1)[0]
    write_png(str(tmp_path / "a" / "0.png"), rgb)
    write_png(str(tmp_path / "a" / "1.png"), grey)
    Image.fromarray(rgb).save(str(tmp_path / "a" / "2.jpg"), quality=95)
    src = data.load(str(tmp_path / "a"), "all")
    assert src.shape == (8, 8, 3)
    pixels = src.read(np.arange(3))[0]
    np.testing.assert_array_equal(pixels[1], np.repeat(grey, 3, axis=-1))
    np.testing.assert_array_equal(pixels[2], np.asarray(Image.open(tmp_path / "a" / "2.jpg").convert("RGB")))
    grey_src = data.load(str(tmp_path / "a"), "all", channels=1)
    want = np.asarray(Image.fromarray(rgb).convert("L"))  # ITU-R 601 luma, as PIL computes it
    np.testing.assert_array_equal(grey_src.read(np.arange(1))[0][0, ..., 0], want)
    np.testing.assert_array_equal(convert_channels(rgb[None], 1)[0, ..., 0], want)


def test_mixed_sizes_need_image_size_then_resize_and_centre_crop(tmp_path):
    wide = np.zeros((16, 32, 3), np.uint8)
    wide[:, 4:28] = 255  # a white centre band wider than the crop plus the filter: the crop is all white
    write_png(str(tmp_path / "m" / "a.png"), random_images(1, 8, 8, 3)[0])
    write_png(str(tmp_path / "m" / "b.png"), wide)
    with pytest.raises(ConfigError, match=r"m/a.png is 8x8, .*m/b.png is 16x32; set image_size"):
        data.load(str(tmp_path / "m"), "all")
    src = data.load(str(tmp_path / "m"), "all", image_size=8)
    assert src.shape == (8, 8, 3)
    cropped = src.read(np.array([1]))[0][0]
    np.testing.assert_array_equal(cropped, 255)
    ref = np.asarray(Image.fromarray(wide).resize((16, 8), Image.Resampling.BILINEAR))[:, 4:12]
    np.testing.assert_array_equal(cropped, ref)
    stretched = data.load(str(tmp_path / "m"), "all", image_size=8, center_crop=False).read(np.array([1]))[0][0]
    np.testing.assert_array_equal(stretched, np.asarray(Image.fromarray(wide).resize((8, 8), Image.Resampling.BILINEAR)))
    # float sources resize too (digits to 16x16)
    up = data.load("digits", "test", image_size=16)
    assert up.shape == (16, 16, 1) and up.fetch([0])["image"].shape == (1, 16, 16, 1)
    assert 0.0 <= up.all()["image"].min() and up.all()["image"].max() <= 1.0
    assert resize(np.zeros((4, 6, 1), np.float32), 2).shape == (2, 2, 1)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_file_in_the_middle_of_a_folder_is_named(tmp_path, damage):
    make_image_folder(str(tmp_path / "f"), num_classes=2, per_class=5)
    bad = tmp_path / "f" / "class_1" / "img_007.png"
    payload = bad.read_bytes()
    bad.write_bytes({"truncated": payload[: len(payload) // 2], "garbage": b"not a png at all" * 10,
                     "empty": b""}[damage])
    with pytest.raises(ConfigError, match=r"class_1/img_007.png (is not a readable image|could not be decoded)"):
        data.load(str(tmp_path / "f"), "train")


def test_empty_or_missing_folders_and_loose_images_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no image files"):
        data.load(str(tmp_path / "empty"), "train")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        data.load(str(tmp_path / "nope"), "train")
    make_image_folder(str(tmp_path / "mixed"), num_classes=2, per_class=2)
    write_png(str(tmp_path / "mixed" / "loose.png"), random_images(1)[0])
    with pytest.raises(ConfigError, match="loose.png: the folder .* holds class sub-folders"):
        data.load(str(tmp_path / "mixed"), "train")


# ----------------------------------------------------------------------------- arrays


def test_npz_images_labels_and_keras_layout(tmp_path):
    images, labels = random_images(30, c=3), np.arange(30) % 4
    np.savez(tmp_path / "a.npz", images=images, labels=labels)
    src = data.load(str(tmp_path / "a.npz"), "all")
    assert (src.size, src.shape, src.num_classes) == (30, (8, 8, 3), 4)
    np.testing.assert_array_equal(src.read(np.arange(30))[0], images)
    np.savez(tmp_path / "k.npz", x_train=images[:20, ..., 0], y_train=labels[:20], x_test=images[20:, ..., 0],
             y_test=labels[20:])
    train, test = data.load(str(tmp_path / "k.npz"), "train"), data.load(str(tmp_path / "k.npz"), "test")
    assert (train.size, test.size, train.shape, train.num_classes) == (20, 10, (8, 8, 1), 4)
    np.savez(tmp_path / "f.npz", images=images.astype(np.float64) / 255)
    floats = data.load(str(tmp_path / "f.npz"), "all")
    assert floats.num_classes == 0
    np.testing.assert_allclose(floats.all()["image"], images / 255, atol=1e-7)


@pytest.mark.parametrize("arrays,needle", [
    ({"images": np.full((4, 8, 8, 1), 255.0)}, "divide uint8 pixels by 255"),
    ({"images": np.full((4, 8, 8, 1), np.nan)}, "non-finite"),
    ({"images": np.zeros((4, 3, 8, 8))}, "looks channel-first"),
    ({"images": np.zeros((4, 8, 8, 1), np.uint8), "labels": np.array([0, 1, -1, 2])}, r"labels range over \[-1, 2\]"),
    ({"images": np.zeros((4, 8, 8, 1), np.uint8), "labels": np.array([0, 1, 2])}, r"labels have shape \(3,\)"),
    ({"images": np.zeros((4, 8, 8, 1), np.uint8), "labels": np.array([0, 1, 2, 1000])}, r"outside \[0, 4\)"),
    ({"pixels": np.zeros((4, 8, 8, 1))}, "expects 'images'"),
])
def test_bad_npz_files_are_named_with_the_fix(tmp_path, arrays, needle):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=needle):
        data.load(str(tmp_path / "bad.npz"), "all")


def test_npy_is_memory_mapped_and_pickles_as_its_file_name(tmp_path):
    images = random_images(500, 16, 16, 3)
    np.save(tmp_path / "big.npy", images)
    src = data.load(str(tmp_path / "big.npy"), "train")
    assert src.num_classes == 0 and src.size == 450
    blob = pickle.dumps(src.fetch)
    assert len(blob) < images.nbytes / 10  # the pixels are not copied into the pickle
    clone = pickle.loads(blob)
    idx = np.array([3, 1, 400, 2])
    np.testing.assert_array_equal(clone.__self__.read(idx)[0], src.read(idx)[0])


# ----------------------------------------------------------------------------- idx


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_with_train_and_t10k_files(tmp_path, gz):
    made = make_idx_folder(str(tmp_path / "idx"), gz=gz)
    train, test = data.load(str(tmp_path / "idx"), "train"), data.load(str(tmp_path / "idx"), "test")
    assert (train.size, test.size, train.shape, train.num_classes) == (40, 10, (8, 8, 1), 10)
    pixels, labels = train.read(np.arange(40))
    np.testing.assert_array_equal(pixels[..., 0], made["train"][0])
    np.testing.assert_array_equal(labels, made["train"][1])
    # a single file of the pair is a source too (split by the seeded rule)
    one = data.load(str(tmp_path / "idx" / f"t10k-labels-idx1-ubyte{'.gz' if gz else ''}"), "all")
    np.testing.assert_array_equal(one.read(np.arange(10))[0][..., 0], made["t10k"][0])


def test_truncated_idx_file_is_named(tmp_path):
    make_idx_folder(str(tmp_path / "idx"), gz=False)
    path = tmp_path / "idx" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte: the idx header promises 40x8x8 = 2,560 bytes"):
        data.load(str(tmp_path / "idx"), "train")


@pytest.mark.skipif(not os.path.isdir(MNIST_5K), reason="../shared/datasets/mnist-5k is not on this machine")
def test_real_mnist_5k_idx_files():
    with open(os.path.join(MNIST_5K, "images-idx3-ubyte.gz"), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == "889f0dfb4c955c9b0ed96dae8e3bb68c"
    train, test = data.load(MNIST_5K, "train"), data.load(MNIST_5K, "test")
    assert (train.size, test.size, train.shape, train.num_classes) == (4500, 500, (28, 28, 1), 10)
    batch = test.all()
    assert set(np.unique(batch["label"])) == set(range(10))
    assert batch["image"].max() == 1.0 and 0.1 < batch["image"].mean() < 0.2  # MNIST's ink coverage
    rgb32 = data.load(MNIST_5K, "test", image_size=32, channels=3)
    assert rgb32.fetch(np.arange(4))["image"].shape == (4, 32, 32, 3)


# ----------------------------------------------------------------------------- tfds errors


def test_tfds_unknown_name_suggests_close_ones():
    with pytest.raises(ConfigError, match="tfds has no dataset 'mnistt'; did you mean mnist"):
        data.load("tfds:mnistt", "train")


def test_tfds_not_prepared_and_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_data, "online", lambda timeout=3.0: False)
    with pytest.raises(ConfigError, match=r"'mnist' is not prepared in .*mnist.* cannot reach the internet"):
        data.load("tfds:mnist", "train", str(tmp_path))
    from genjax.data import text

    with pytest.raises(ConfigError, match="'tiny_shakespeare' is not prepared"):
        text.load_corpus("tfds:tiny_shakespeare", str(tmp_path))


def test_tfds_prepare_path_runs_tfds_own_builder_code(tmp_path, monkeypatch):
    """With the network replaced by a local file, tfds's real download-and-prepare path runs: it imports
    importlib_resources (the import the install used to lack) and then the builder's TensorFlow calls, which
    must end in genjax's one-line message (TensorFlow is hidden here so the test means the same everywhere)."""
    import tensorflow_datasets as tfds

    text_file = tmp_path / "input.txt"
    text_file.write_text("To be, or not to be: that is the question.\n" * 20)
    monkeypatch.setattr(tfds_data, "online", lambda timeout=3.0: True)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", lambda self, url: str(text_file))
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    from genjax.data import text

    with pytest.raises(ConfigError, match="preparing tfds dataset 'tiny_shakespeare' needs the module 'tensorflow'"):
        text.load_corpus("tfds:tiny_shakespeare", str(tmp_path / "tfds"))
