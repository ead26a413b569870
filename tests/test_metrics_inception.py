"""The Flax FID Inception against pytorch-fid itself, given the same (random) weights: identical in
float64 (1e-9); in float32 through pytorch-fid's own file pipeline (PNG -> tensor -> resize to 299 ->
pool3) features agree to 2e-4 (mean 1e-5) and FID to 1e-5 relative, as close as pytorch-fid's float32
is to its own float64.

pytorch-fid and torchvision come from the package registry (`pip install -e ".[fid]"`); only their
pretrained weights would need internet, so both networks get the same random weights here instead.
"""

import importlib.util

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("pytorch_fid") is None or importlib.util.find_spec("torchvision") is None:
    pytest.skip("pytorch-fid is not installed (pip install -e '.[fid]')", allow_module_level=True)

from genjax.config import ConfigError  # noqa: E402
from genjax.metrics import frechet_distance, inception  # noqa: E402


def _import_pytorch_fid():
    try:
        import pytorch_fid.inception
    except RuntimeError as e:
        # A CUDA-built torchvision wheel beside a CPU-only torch cannot load its C ops, and torchvision
        # then fails registering fake kernels for two of them. pytorch-fid needs none of torchvision's
        # C ops (only its Python Inception blocks), so declaring the two schemas lets the import through.
        if "torchvision::nms" not in str(e):
            raise
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _import_pytorch_fid.keep = lib  # the schemas live as long as the library object
        import pytorch_fid.inception
    import pytorch_fid.fid_score

    return pytorch_fid


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Random weights in the layout of pytorch-fid's `pt_inception-2015-12-05` file.

    He-initialized convolutions and BatchNorm statistics calibrated on upsampled 32x32 images like the
    test's keep activations near unit scale through all 94 layers, as the real weights do.
    """
    fid = _import_pytorch_fid().inception
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False,
                                          init_weights=False)
    # pytorch-fid's patched blocks have the same parameters and their own forward: calibrate through it
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        getattr(net, name).__class__ = fid.FIDInceptionA
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        getattr(net, name).__class__ = fid.FIDInceptionC
    net.Mixed_7b.__class__, net.Mixed_7c.__class__ = fid.FIDInceptionE_1, fid.FIDInceptionE_2
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = plain average over the calibration batch
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.2)
    net.train()
    with torch.no_grad():
        net(_resized_299(_smooth_images(np.random.default_rng(0), 4, 32, 32)) * 2 - 1)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def torch_fid(weights_file):
    """pytorch-fid with its weight download replaced by the random weight file."""
    pytorch_fid = _import_pytorch_fid()
    mp = pytest.MonkeyPatch()
    mp.setattr(pytorch_fid.inception, "load_state_dict_from_url",
               lambda *a, **k: torch.load(weights_file, weights_only=True))
    yield pytorch_fid
    mp.undo()


def _nchw(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def _resized_299(images):
    return torch.nn.functional.interpolate(_nchw(images), size=(299, 299), mode="bilinear",
                                           align_corners=False)


def _smooth_images(rng, n, h, w):
    """Random images with image-like spatial structure (a coarse noise field, upsampled)."""
    coarse = rng.uniform(size=(n, 4, 4, 3))
    return np.clip(np.kron(coarse, np.ones((1, -(-h // 4), -(-w // 4), 1)))[:, :h, :w]
                   + 0.1 * rng.normal(size=(n, h, w, 3)), 0, 1).astype(np.float32)


def test_resize_matches_torch_interpolate():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 32, 400, 3)).astype(np.float32)  # one axis up-, one downsampled
    ours = np.asarray(inception.resize_bilinear(x))
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                                          mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_network_is_pytorch_fids_exactly_in_float64(torch_fid, weights_file):
    """Both networks in float64: any difference in layers, padding, pooling or weight layout would show
    far above the 1e-9 tolerance (float32 cannot show this: see the next test)."""
    images = _smooth_images(np.random.default_rng(1), 3, 80, 96)  # no resize: any size >= 75 works
    model = torch_fid.inception.InceptionV3([3], resize_input=False).eval().double()
    with torch.no_grad():
        ref = model(_nchw(images.astype(np.float64)))[0][:, :, 0, 0].numpy()
    variables = inception.inception_net(weights_file).variables
    with jax.enable_x64(True):
        as64 = jax.tree.map(lambda v: np.asarray(v, np.float64), variables)
        ours = np.asarray(jax.jit(inception.InceptionV3().apply)(as64, 2.0 * images.astype(np.float64) - 1.0))
    assert ours.dtype == np.float64 and ref.std() > 0.1
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9 * ref.std())


def test_float32_features_and_fid_match_pytorch_fid_from_png_files(torch_fid, weights_file, tmp_path):
    """pytorch-fid's own pipeline on PNG files (32x32 resized to 299, float32) against the port on the
    same pixels. Float32 rounding through 94 random layers differs between the two convolution libraries
    by up to ~2e-4 on a few of the 2048 unit-scale features (as much as pytorch-fid's own float32 differs
    from its float64), so the elementwise bound is 5e-4 and the mean error is held to 3e-5."""
    from PIL import Image

    rng = np.random.default_rng(2)
    sets = [(_smooth_images(rng, 4, 32, 32) * 255).round().astype(np.uint8),
            (np.clip(_smooth_images(rng, 4, 32, 32) * 1.3, 0, 1) * 255).round().astype(np.uint8)]
    model = torch_fid.inception.InceptionV3([3]).eval()  # pytorch-fid's defaults: resize, normalize
    net = inception.inception_net(weights_file)
    ours, ref = [], []
    for s, images in enumerate(sets):
        files = []
        for i, image in enumerate(images):
            files.append(tmp_path / f"{s}_{i}.png")
            Image.fromarray(image).save(files[-1])
        ref.append(torch_fid.fid_score.get_activations(files, model, batch_size=4, num_workers=0))
        ours.append(net.features(images, batch=4))
    for a, b in zip(ours, ref):
        assert 0.1 < b.std() < 10  # unit-scale features, like the real weights give
        assert np.abs(a - b).max() < 5e-4 and np.abs(a - b).mean() < 3e-5
    assert frechet_distance(*ours) == pytest.approx(frechet_distance(*ref), rel=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pytorch-fid passes scipy's deprecated `disp`
def test_frechet_distance_matches_pytorch_fids(torch_fid):
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(400, 64)), rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) * 0.2 + 0.3
    ref = torch_fid.fid_score.calculate_frechet_distance(f1.mean(0), np.cov(f1, rowvar=False),
                                                         f2.mean(0), np.cov(f2, rowvar=False))
    assert frechet_distance(f1, f2) == pytest.approx(ref, rel=1e-9)


def test_npz_conversion_loads_the_same_network(weights_file, tmp_path):
    out = str(tmp_path / "inception.npz")
    from genjax.metrics.__main__ import main

    assert main(["convert-inception", weights_file, out]) == 0
    a, b = inception.inception_net(weights_file), inception.inception_net(out)
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(x, y)


def test_incomplete_weights_name_the_missing_tensor(weights_file):
    state = inception.read_state_dict(weights_file)
    state.pop("Mixed_6b.branch7x7_2.conv.weight")
    with pytest.raises(ConfigError, match="Mixed_6b/branch7x7_2/conv/kernel"):
        inception.variables_from_state_dict(state)
