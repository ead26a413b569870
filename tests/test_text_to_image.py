"""Text-to-image: captions from measured attributes, the composition's shapes and gradients, the guidance
convention, bad prompts, and one step of the experiment with the sample CLI on its workdir."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import text_to_image as t2i_exp
from genjax import config as config_lib, data, experiment, sample as sample_cli
from genjax.config import ConfigError
from genjax.data import captions
from genjax.metrics import attributes
from genjax.models import text_to_image as t2i
from genjax.nn.unet import UNet

# a tiny composition: a one-layer 16-wide encoder, a one-level U-Net with cross-attention at 8x8
CFG = t2i.Config(channels=8, num_groups=4, text_width=16, text_heads=2, text_layers=1, channel_mults=(1,),
                 attn_resolutions=(), context_resolutions=(8,), context_head_dim=8, timesteps=50, max_len=8)
TINY = {"model.channels": "8", "model.num_groups": "4", "model.text_width": "16", "model.text_heads": "2",
        "model.text_layers": "1", "model.channel_mults": "1", "model.attn_resolutions": "",
        "model.context_resolutions": "8", "model.context_head_dim": "8", "model.timesteps": "50",
        "model.max_len": "8", "sample.sampler": "ddim", "sample.steps": "2", "sample.guidance": "3",
        "guidances": "3", "num_quality_samples": "8", "attribute_samples": "1", "grid_samples": "1",
        "eval_batch_size": "400",  # >= the 359 test digits and the 90 attribute prompts: one shape each
        "train.steps": "1", "train.batch_size": "16", "train.num_devices": "1", "train.log_every": "1",
        "train.ema_decay": "0", "train.grad_clip": "0"}  # a step without them compiles 2x faster


@pytest.fixture(scope="module")
def params():
    return t2i.init(jax.random.key(0), CFG)


def _live(params, seed):
    """Params with the zero-initialized output layers perturbed, so that the text reaches the output."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + np.float32(0.3) * rng.standard_normal(x.shape, np.float32), params)


# ----------------------------------------------------------------------------- captions


def _strokes(thickness, shear, width=1):
    """A synthetic 8x8 digit: a vertical bar `width` columns wide, sheared `shear` columns per row up."""
    img = np.zeros((8, 8, 1), np.float32)
    for r in range(8):
        c = int(round(3 + shear * (7 - r) / 7 * 3))
        img[r, max(c - width // 2, 0):c - width // 2 + width, 0] = thickness
    return img


def test_measured_attributes_follow_the_strokes():
    images = np.stack([_strokes(0.5, 0.0), _strokes(1.0, 0.0), _strokes(1.0, 1.0), _strokes(1.0, -1.0),
                       _strokes(1.0, 0.0, width=3)])
    v = captions.measure(images)
    assert v["thickness"][1] > v["thickness"][0] and v["thickness"][4] > v["thickness"][1]
    assert v["slant"][2] > 0.3 > abs(v["slant"][1]) and v["slant"][3] < -0.3  # 3 columns in 7 rows: 0.43
    assert v["width"][4] > v["width"][1] > 0 and v["width"][2] > v["width"][1]


def test_captions_are_deterministic_and_carry_the_measured_buckets():
    real = data.load("digits", "train").all()
    values = captions.measure(real["image"])
    edges = captions.bucket_edges(values, real["label"], 10)
    words = captions.buckets(values, real["label"], edges)
    for b in words.values():  # per-class tertiles: each word on about a third of every class
        for c in range(10):
            counts = np.bincount(b[real["label"] == c], minlength=3)
            assert counts.min() >= 0.28 * counts.sum()
    idx = np.arange(200)
    texts = captions.captions(real["label"][idx], {k: v[idx] for k, v in words.items()}, 0, 7, idx)
    assert texts == captions.captions(real["label"][idx], {k: v[idx] for k, v in words.items()}, 0, 7, idx)
    assert texts != captions.captions(real["label"][idx], {k: v[idx] for k, v in words.items()}, 0, 8, idx)
    assert np.array_equal(captions.choose(0, 7, idx[::-1]), captions.choose(0, 7, idx)[::-1])  # per example
    assert set(captions.choose(0, 7, np.arange(1000))) == set(range(len(captions.PHRASINGS)))
    for i, text in zip(idx, texts):
        tokens = captions.split_words(text)
        assert captions.NAMES[real["label"][i]] in tokens or str(real["label"][i]) in tokens
        for a, ws in captions.ATTRIBUTES.items():
            said = [w for w in ws if w in tokens]
            assert said in ([], [ws[words[a][i]]]), (text, a)  # a named attribute is the measured one
    assert captions.caption(7, {"thickness": 2, "slant": 2, "width": 0}, 6) == "a thick, slanted seven"
    assert captions.caption(8, {"slant": 1}, 3) == "an upright eight"
    assert captions.caption(7, {"thickness": 0}, 5) == "7, thin stroke"
    vocab, longest = captions.vocabulary()
    assert set(vocab) <= set(t2i.Config().words) and longest <= CFG.max_len
    # the attribute metric reads real digits' own buckets back exactly
    stats = attributes.class_stats(values, real["label"], 10)
    score = attributes.following(real["image"], real["label"], "slant", words["slant"], edges, stats)
    assert score["bucket_accuracy"] == 1.0 and score["spearman"] > 0.8
    assert score["mean_z"][0] < 0 < score["mean_z"][2]


# ----------------------------------------------------------------------------- the composition


def test_shapes_and_gradients_of_the_composition(params):
    assert set(params) == {"text", "unet"}
    assert not any("cross" in k for k in jax.eval_shape(  # the U-Net without context is the one it was
        lambda: UNet(1, 8, (1,), 1, (), 0.0, 4).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                                                     jnp.zeros((1,))))["params"])
    assert {"down0_cross0", "up0_cross0", "up0_cross1", "mid_cross"} <= set(params["unet"])
    tokens = t2i.tokenize(["a thick, slanted seven", "7", "", "Seven"], CFG)
    chex.assert_shape(tokens, (4, 9))
    assert list(tokens[2]) == [1] + [0] * 8 and np.array_equal(tokens[0][:2], [1, CFG.words.index("a") + 2])
    assert tokens[3][1] == CFG.words.index("seven") + 2 and tokens[3][2] == 0  # lowercased
    states, mask = jax.jit(functools.partial(t2i.encode_text, cfg=CFG))(params["text"], tokens)
    chex.assert_shape(states, (4, 9, 16))
    assert mask.tolist()[2] == [True] + [False] * 8

    live = _live(params, 1)
    batch = {"image": np.random.default_rng(2).random((4, 8, 8, 1), np.float32), "tokens": tokens}
    (value, metrics), grads = jax.jit(jax.value_and_grad(functools.partial(t2i.loss, cfg=CFG), has_aux=True))(
        live, batch, jax.random.key(3))
    assert value.shape == () and np.isfinite(value) and set(metrics) == {"mse"}
    for part in ("text", "unet"):  # the gradient reaches both parts
        assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads[part]))
        assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[part])) > 0


def test_guidance_convention(params):
    """out_c + w (out_c - out_u): w = 0 is the conditional model, w = -1 the unconditional one, and the
    empty prompt is the unconditional model at any w."""
    params = _live(params, 1)
    options = t2i.SampleOptions(prompt="a thick seven|1, thin stroke", sampler="ddim", steps=3)
    draw = lambda prompt, w: np.asarray(t2i.sample(  # noqa: E731
        params, jax.random.key(2), 4, CFG, dataclasses.replace(options, prompt=prompt, guidance=w)))
    cond = draw(options.prompt, 0.0)
    tokens = t2i.tokenize(options.prompts() * 2, CFG)
    kwargs = dict(cfg=CFG, sampler="ddim", steps=3, eta=0.0, spacing="time")
    guided_at_0 = t2i._sample(params, jax.random.key(2), tokens, jnp.float32(0.0), guided=True, **kwargs)
    np.testing.assert_allclose(guided_at_0, cond, atol=1e-5)  # the guided path at w = 0: conditional
    uncond = draw("", 0.0)
    np.testing.assert_allclose(draw(options.prompt, -1.0), uncond, atol=1e-5)
    np.testing.assert_allclose(draw("", 3.0), uncond, atol=1e-5)  # empty prompt: guidance changes nothing
    assert np.abs(draw(options.prompt, 3.0) - cond).max() > 1e-3 and np.abs(cond - uncond).max() > 1e-3
    assert cond.shape == (4, 8, 8, 1) and 0.0 <= cond.min() and cond.max() <= 1.0


def test_bad_prompts_are_one_line_config_errors():
    for prompt, value, fix in (("a thick seven!", "'!'", "use only the words"),
                               ("a thick seventeen", "'seventeen'", "use only the words"),
                               ("one " * 9, "9 words", "model.max_len")):
        with pytest.raises(ConfigError) as e:
            t2i.SampleOptions(prompt=prompt).validate(CFG)
        assert value in str(e.value) and fix in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.context_resolutions"):
        dataclasses.replace(CFG, context_resolutions=(4,)).validate()
    with pytest.raises(ConfigError, match="model.vocab"):
        dataclasses.replace(CFG, vocab="seven Seven").validate()


# ----------------------------------------------------------------------------- the experiment and the CLI


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("t2i") / "run")
    argv = ["--workdir", workdir, *[f"--{k}={v}" for k, v in TINY.items()]]
    return workdir, experiment.main(t2i_exp.Config(), t2i_exp.train_and_evaluate, "", argv)


def test_one_step_of_the_experiment(one_step_run):
    workdir, summary = one_step_run
    assert summary["steps"] == 1
    for key in ("test_mse", "test_mse_empty", "label_accuracy_w3", "frechet_w3", "thickness_bucket_accuracy",
                "slant_spearman", "width_bucket_accuracy", "attribute_label_accuracy", "wall_seconds"):
        assert np.isfinite(summary[key]), key
    assert len(summary["slant_mean_z"]) == 3
    record = config_lib.load(workdir)
    assert record["family"] == "text_to_image" and record["experiment"] == "text_to_image"
    import os

    assert os.path.exists(os.path.join(workdir, "prompt_grid.png"))


def test_sample_cli_with_a_prompt(one_step_run, tmp_path, capsys):
    workdir, _ = one_step_run
    out = tmp_path / "grid.png"
    code = sample_cli.main([workdir, "--prompt", "a thick, slanted seven", "--guidance", "3", "--num", "4",
                            "--out", str(out), "--steps", "3", "--sampler", "ddim"])
    assert code == 0, capsys.readouterr().err
    assert out.exists()
    capsys.readouterr()
    for prompt, value in (("a seven?", "'?'"), ("seven " * 9, "9 words")):
        code = sample_cli.main([workdir, "--prompt", prompt, "--out", str(tmp_path / "x.png")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and value in err, err


def test_data_without_ten_classes_is_refused(tmp_path, capsys):
    path = tmp_path / "three.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 255, (40, 8, 8, 1), np.uint8), labels=np.arange(40) % 3)
    with pytest.raises(SystemExit) as e:
        experiment.main(t2i_exp.Config(), t2i_exp.train_and_evaluate, "",
                        ["--workdir", str(tmp_path / "run"), "--data", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 classes" in err, err
    assert not (tmp_path / "run").exists()
