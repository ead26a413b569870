"""InceptionV3 pool features exactly as pytorch-fid computes them, so FID/KID/precision/recall are on
the scale of published numbers (e.g. DDPM's CIFAR-10 FID 3.17).

A Flax port of pytorch-fid's `InceptionV3` (the TensorFlow FID graph `inception-2015-12-05`): the same
layers, TF's average pooling that ignores padded zeros, max pooling in the last block, bilinear resize
to 299x299 as `F.interpolate(align_corners=False)`, inputs scaled from [0, 1] to [-1, 1]. It reads
pytorch-fid's own weight file, `pt_inception-2015-12-05-6726825d.pth` (with torch installed), or an
`.npz` of the same tensors made once with `python -m genjax.metrics convert-inception IN.pth OUT.npz`
(then numpy is enough). `tests/test_metrics_inception.py` checks features against pytorch-fid to 1e-4.

    net = inception_net()                       # $GENJAX_INCEPTION_WEIGHTS, the cache, or a download
    metrics.sample_quality(net, real, fake)     # images (N, H, W, 1 or 3) floats in [0, 1] or uint8

For numbers comparable to papers, score 50,000 samples and pass them as uint8 (what PNG files hold).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from genjax.config import ConfigError
from genjax.data.images import check_images

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch hub's convention: the file name carries its hash prefix
FEATURE_DIM = 2048
INPUT_SIZE = 299
MIN_SIZE = 75  # smallest input the stride-2 stages leave a 1x1 map for (resize=False only)

# Convolutions in full float32 even where the backend would use TF32 (GPUs): features must match.
_PRECISION = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- the network


class ConvBN(nn.Module):
    """torchvision's BasicConv2d: convolution without bias, frozen BatchNorm (eps 1e-3), ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        (ph, pw) = self.padding
        x = nn.Conv(self.features, self.kernel, self.stride, padding=((ph, ph), (pw, pw)), use_bias=False,
                    precision=_PRECISION, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    # pytorch-fid's patch: TensorFlow's average pool does not count the padded zeros
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride: int):
    padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = ConvBN(64, (1, 1), name="branch1x1")(x)
        b5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
        b5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = ConvBN(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = ConvBN(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = ConvBN(192, (1, 1), name="branch1x1")(x)
        b7 = ConvBN(c7, (1, 1), name="branch7x7_1")(x)
        b7 = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = ConvBN(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
        b3 = ConvBN(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = ConvBN(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    # The FID graph's last block max-pools where the paper (and torchvision) average-pool.
    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = ConvBN(320, (1, 1), name="branch1x1")(x)
        b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool_3x3(x, 1) if self.max_pool else _avg_pool_3x3(x)
        bp = ConvBN(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """pytorch-fid's InceptionV3 up to the final average pool: (N, H, W, 3) in [-1, 1] -> (N, 2048).

    Submodule names are the PyTorch attribute names, so weights map over by name.
    """

    @nn.compact
    def __call__(self, x):
        x = ConvBN(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, 2)
        x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# ----------------------------------------------------------------------------- resize as PyTorch does


def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of `F.interpolate(mode='bilinear', align_corners=False)` along one axis.

    No antialiasing, as in pytorch-fid: downsampling reads only the two nearest source pixels. Source
    positions are computed in float32 like PyTorch's kernel (in float64 they differ by up to 2e-5).
    """
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5), f32(0))  # clamped at 0
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = np.clip(src - lo.astype(f32), 0, 1).astype(np.float64)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m.astype(np.float32)


def resize_bilinear(x, size: int = INPUT_SIZE):
    """(N, H, W, C) -> (N, size, size, C), as pytorch-fid resizes its inputs."""
    rows = interpolation_matrix(x.shape[1], size)
    cols = interpolation_matrix(x.shape[2], size)
    x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=_PRECISION)
    return jnp.einsum("pw,nowc->nopc", cols, x, precision=_PRECISION)


@functools.partial(jax.jit, static_argnames="resize")
def _pool_features(variables, images, resize: bool):
    x = resize_bilinear(images) if resize else images
    return InceptionV3().apply(variables, 2.0 * x - 1.0)


# ----------------------------------------------------------------------------- weights


def variables_from_state_dict(state_dict: dict) -> dict:
    """Flax variables from pytorch-fid's tensors ({'Mixed_5b.branch1x1.conv.weight': array, ...}).

    The classifier head (`fc.*`) is not needed for pool features and is dropped.
    """
    flat = {}
    for name, value in state_dict.items():
        *modules, layer, kind = name.split(".")
        value = np.asarray(value, np.float32)
        if layer == "conv" and kind == "weight":
            flat[("params", *modules, "conv", "kernel")] = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif layer == "bn" and kind in ("weight", "bias"):
            flat[("params", *modules, "bn", "scale" if kind == "weight" else "bias")] = value
        elif layer == "bn" and kind in ("running_mean", "running_var"):
            flat[("batch_stats", *modules, "bn", kind.removeprefix("running_"))] = value
    expected = flax.traverse_util.flatten_dict(jax.eval_shape(
        InceptionV3().init, jax.random.key(0), jnp.zeros((1, MIN_SIZE, MIN_SIZE, 3))))
    missing = sorted("/".join(k) for k in expected.keys() - flat.keys())
    if missing:
        raise ConfigError(f"Inception weights lack {len(missing)} tensors (first: {missing[0]}); "
                          f"expected pytorch-fid's {os.path.basename(WEIGHTS_URL)}")
    for key, leaf in expected.items():
        if flat[key].shape != leaf.shape:
            raise ConfigError(f"Inception weight {'/'.join(key)} has shape {flat[key].shape}, expected "
                              f"{leaf.shape}; expected pytorch-fid's {os.path.basename(WEIGHTS_URL)}")
    return flax.traverse_util.unflatten_dict({k: jnp.asarray(flat[k]) for k in expected})


def read_state_dict(path: str) -> dict:
    """pytorch-fid's tensors from its `.pth` file (needs torch) or from an `.npz` conversion of it."""
    if not os.path.exists(path):
        raise ConfigError(f"Inception weights {path!r} do not exist; download {WEIGHTS_URL}")
    if path.endswith(".npz"):
        with np.load(path) as f:
            return dict(f)
    try:
        import torch
    except ImportError:
        raise ConfigError(
            f"reading {path} needs torch (pip install 'genjax[fid]'); or convert it once where torch is installed "
            f"(python -m genjax.metrics convert-inception {path} OUT.npz) and pass the .npz") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state.items()}


def _cache_dir() -> str:
    return os.path.join(os.environ.get("GENJAX_CACHE", os.path.expanduser("~/.cache/genjax")), "inception")


def download_weights() -> str:
    """pytorch-fid's weight file in the cache (downloaded once, hash-checked); its path."""
    path = os.path.join(_cache_dir(), os.path.basename(WEIGHTS_URL))
    if os.path.exists(path):
        return path
    import urllib.request

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        urllib.request.urlretrieve(WEIGHTS_URL, tmp)
        with open(tmp, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if not digest.startswith(WEIGHTS_SHA256_PREFIX):
            raise OSError(f"the file's sha256 {digest[:8]}... is not {WEIGHTS_SHA256_PREFIX}...")
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(
            f"no FID Inception weights: downloading {WEIGHTS_URL} failed ({e}); fetch it on a machine with "
            "internet and pass its path: inception_net(weights=PATH) or GENJAX_INCEPTION_WEIGHTS=PATH") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------- the feature net


@dataclasses.dataclass(frozen=True)
class InceptionNet:
    """Frozen FID Inception: `features(images)` (N, 2048). No class histogram (`num_classes` 0)."""

    variables: dict
    resize: bool = True  # pytorch-fid's default; False only for inputs already at the size you want
    num_classes: int = 0

    def features(self, images, batch: int = 50) -> np.ndarray:
        images = _as_rgb_floats(images, self.resize)
        out = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            # pad the last chunk to the batch size: one compiled shape for the whole set
            padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)])
            features = _pool_features(self.variables, padded, self.resize)
            out.append(np.asarray(features, np.float64)[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))


def _as_rgb_floats(images, resize: bool) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    images = images.astype(np.float32)
    check_images(images, "images")
    if images.shape[-1] not in (1, 3):
        raise ConfigError(f"images of shape {images.shape}: the Inception needs 1 (grey) or 3 channels")
    if not resize and min(images.shape[1:3]) < MIN_SIZE:
        raise ConfigError(f"images of {images.shape[1]}x{images.shape[2]} are too small for InceptionV3 "
                          f"without resizing (at least {MIN_SIZE}x{MIN_SIZE}); use resize=True, the default")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images  # grey as PIL's convert('RGB')


def inception_net(weights: str | None = None, resize: bool = True) -> InceptionNet:
    """The FID Inception from `weights` (pytorch-fid's `.pth` or its `.npz`), else from
    `$GENJAX_INCEPTION_WEIGHTS`, else from the cache, downloading it there on first use."""
    path = weights or os.environ.get("GENJAX_INCEPTION_WEIGHTS") or download_weights()
    return InceptionNet(variables_from_state_dict(read_state_dict(path)), resize=resize)
