"""Text-to-image diffusion on scikit-learn's 8x8 digits with captions generated from the images: a
transformer text encoder, cross-attention in the diffusion U-Net and classifier-free guidance on the text.

    python experiments/text_to_image.py --workdir runs/text_to_image
    python -m genjax.sample runs/text_to_image --prompt "a thick, slanted seven" --guidance 3 --num 16 \\
        --out grid.png
    python -m genjax.sample runs/text_to_image --prompt "zero|1, thin stroke|a wide two" --num 30 \\
        --out grid.png

Captions (genjax.data.captions): each training image's digit name plus its thickness, slant and width,
measured from its pixels and bucketed into words by per-class tertiles ("a thick, slanted seven",
"7, thin stroke", "seven", ...); the phrasing is chosen per example per step by a hash of (seed, step,
index). Prompts are dropped to the empty prompt with probability model.cond_drop_prob, so the model is also
unconditional, and sampling mixes the two with guidance w (genjax's convention: out_c + w (out_c -
out_u), w = 0 the conditional model; s = w + 1 in the eps_u + s (eps_c - eps_u) notation).

Diffusion runs in pixel space: at 8x8 a latent space saves nothing (latent_diffusion's 4x4x2 latents are
half the pixels), it would cap quality at the autoencoder's reconstructions and blur the thin strokes the
thickness and slant words are about, and it needs a second run.

Evaluation (EMA weights): every eval_every steps and at the end, the held-out denoising MSE with each test
image's caption and with the empty prompt at the same noise (`test_mse`, `test_mse_empty`: their gap is
what the text tells the denoiser); at the end, at each of `guidances`, `num_quality_samples` samples prompted
with training captions, scored by the shipped digits classifier (`label_accuracy_w<w>`: the share read as
the prompted digit) and for Frechet distance / precision / recall; at sample.guidance, attribute following:
"a thin seven", "a thick seven", ... (`attribute_samples` per class and bucket), measured with the
captioning functions (`<attribute>_bucket_accuracy`, chance 1/3; `<attribute>_spearman`). Writes
prompt_grid.png (prompts x samples), samples/*.png, metrics.jsonl, tb/, checkpoints/, summary.json.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from typing import ClassVar

import jax
import numpy as np

from genjax import data, experiment, log, loop, metrics, train
from genjax.config import ConfigError
from genjax.data import captions
from genjax.metrics import attributes
from genjax.models import text_to_image as t2i

GRID_PROMPTS = ("zero", "1", "two", "3, thick stroke", "a thin four", "5", "a slanted six", "seven",
                "an eight", "9, wide, upright", "a thin seven", "a thick seven", "a backslanted one",
                "a slanted one", "a narrow zero", "a wide zero")


@dataclasses.dataclass(frozen=True)
class Config:
    DERIVED: ClassVar[tuple[str, ...]] = ("model.image_shape",)
    RESUMABLE: ClassVar[tuple[str, ...]] = ("sample", "guidances", "num_quality_samples", "attribute_samples",
                                            "grid_samples", "eval_batch_size")

    data: str = "digits"  # labelled digit images: 'digits', 'tfds:mnist', an .npz, MNIST idx files
    data_dir: str = ""  # tfds data_dir ('' = tfds default)
    image_size: int = 0  # resize (and centre-crop) every image to this side; 0 keeps the data's size
    channels: int = 0  # 1 (grey) or 3 (RGB) to convert; 0 keeps the data's channels
    sample: t2i.SampleOptions = t2i.SampleOptions(guidance=1.0)  # the chosen guidance: grids, attributes
    guidances: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)  # label accuracy and sample quality at each
    num_quality_samples: int = 1000  # per guidance
    attribute_samples: int = 10  # per (attribute, bucket, class) prompt
    grid_samples: int = 10  # columns of prompt_grid.png
    eval_batch_size: int = 500  # rows per compiled sampling call (one shape: compiled once)
    train: train.TrainConfig = train.TrainConfig(
        steps=4000, batch_size=64, lr=1e-3, schedule="cosine", warmup_steps=200, grad_clip=1.0,
        ema_decay=0.999, log_every=100, eval_every=500, sample_every=2000, ckpt_every=2000,
    )
    model: t2i.Config = t2i.SIZES["digits"]


def check(config: Config, num_classes: int) -> None:
    """Refuses, before anything is built, data the captions cannot name and empty evaluations."""
    if num_classes != len(captions.NAMES):
        raise ConfigError(f"--data {config.data} has {num_classes} classes; the captions name the digits "
                          "0-9, so give labelled digit images (digits, tfds:mnist, MNIST idx files)")
    for name in ("num_quality_samples", "attribute_samples", "grid_samples", "eval_batch_size"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}={getattr(config, name)} must be >= 1")
    config.sample.validate(config.model)
    t2i.tokenize(list(GRID_PROMPTS), config.model)


def caption_batches(images, tokens_all, train_cfg, start_step: int = 0):
    """The loop's batches: images of `data.batch_indices(step, ...)` (this host's rows) with their
    captions' tokens in the phrasing `captions.choose(seed, step, index)` picks (tokens_all (P, N, T))."""
    n = len(images)
    data.check_batch_fits(train_cfg.batch_size, n)
    rows = data.batching.host_rows(train_cfg.batch_size)
    for step in itertools.count(start_step):
        idx = data.batch_indices(step, train_cfg.batch_size, n, train_cfg.seed)[rows]
        yield {"image": images[idx], "tokens": tokens_all[captions.choose(train_cfg.seed, step, idx), idx]}


def draw(params, key, prompts: list[str], cfg: t2i.Config, options: t2i.SampleOptions,
         batch: int) -> np.ndarray:
    """One sample per prompt, in calls of exactly `batch` rows (the last padded), so that every evaluation
    reuses one compiled sampler; call i draws from fold_in(key, i)."""
    tokens = t2i.tokenize(prompts, cfg)
    out = []
    for i, lo in enumerate(range(0, len(tokens), batch)):
        chunk = tokens[lo:lo + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        images = t2i.sample_tokens(params, jax.random.fold_in(key, i), padded, cfg, options)
        out.append(np.asarray(images)[:len(chunk)])
    return np.concatenate(out)


def attribute_prompts(per_prompt: int):
    """(prompts, labels, attribute, prompted bucket) of the attribute-following test: for every attribute,
    bucket and class, `per_prompt` samples of the phrasing naming that attribute alone ("a thick seven")."""
    rows = [(captions.caption(c, {a: b}, captions.SINGLE[a]), c, a, b) for a in captions.ATTRIBUTES
            for b in range(3) for c in range(len(captions.NAMES)) for _ in range(per_prompt)]
    return tuple(map(list, zip(*rows)))


def train_and_evaluate(config: Config, workdir: str) -> dict:
    timer = experiment.Timer()
    config, train_src, test_src = experiment.image_data(config)
    check(config, train_src.num_classes)
    run = experiment.setup(config, workdir, experiment="text_to_image", family="text_to_image",
                           examples=train_src.size, keys=("init", "state", "eval", "sample", "quality"))
    model_cfg, keys, seed = config.model, run.keys, config.train.seed

    # ---- captions: attributes measured once, bucketed by the training images' per-class tertiles
    real, test = train_src.all(), test_src.all()
    values = captions.measure(real["image"])
    edges = captions.bucket_edges(values, real["label"], len(captions.NAMES))
    words = captions.buckets(values, real["label"], edges)
    phrased = captions.all_phrasings(real["label"], words)  # [phrasing][example]
    tokens_all = np.stack([t2i.tokenize(texts, model_cfg) for texts in phrased])
    test_words = captions.buckets(captions.measure(test["image"]), test["label"], edges)
    test_captions = captions.captions(test["label"], test_words, seed, 0, np.arange(len(test["label"])))
    test_tokens = t2i.tokenize(test_captions, model_cfg)
    log.note(f"captions, e.g. {captions.captions(real['label'][:3], words, seed, 0, np.arange(3))}")

    # ---- state and step: one optimizer over {'text', 'unet'}
    tx = train.make_optimizer(config.train)
    state = train.init_state(keys["state"], t2i.init(keys["init"], model_cfg), tx,
                             ema=config.train.ema_decay > 0)
    step = train.step_for(functools.partial(t2i.loss, cfg=model_cfg), config.train, tx)

    # ---- evaluation (the EMA weights where the run keeps them)
    net = metrics.feature_net(config.data, real, test, train_src.num_classes)
    evaluate = jax.jit(functools.partial(t2i.evaluate, cfg=model_cfg))
    sample = functools.partial(draw, cfg=model_cfg, batch=config.eval_batch_size)
    num = min(config.num_quality_samples, len(real["label"]))
    quality_prompts = captions.captions(real["label"][:num], {k: v[:num] for k, v in words.items()}, seed, 0,
                                        np.arange(num))

    @experiment.per_step
    def evaluate_state(state) -> dict:
        batches = experiment.chunks({"image": test["image"], "tokens": test_tokens}, config.eval_batch_size)
        return experiment.evaluate_batches(evaluate, state.eval_params, batches, keys["eval"])

    def quality(state, guidance: float) -> dict:
        options = dataclasses.replace(config.sample, guidance=guidance)
        fake = sample(state.eval_params, jax.random.fold_in(keys["quality"], 1), quality_prompts,
                      options=options)
        scores = metrics.sample_quality(net, real["image"], fake, real["label"][:num])
        return {k: scores[k] for k in ("label_accuracy", "frechet", "precision", "recall")}

    def following(state) -> dict:
        prompts, labels, names, prompted = attribute_prompts(config.attribute_samples)
        fake = sample(state.eval_params, jax.random.fold_in(keys["quality"], 2), prompts,
                      options=config.sample)
        stats = attributes.class_stats(values, real["label"], len(captions.NAMES))
        names, labels, prompted = np.asarray(names), np.asarray(labels), np.asarray(prompted)
        out = {}
        for a in captions.ATTRIBUTES:
            sel = names == a
            scores = attributes.following(fake[sel], labels[sel], a, prompted[sel], edges, stats)
            out.update({f"{a}_{k}": v for k, v in scores.items()})
        out["attribute_label_accuracy"] = float(np.mean(net.predict(fake) == labels))
        return out

    def grid(state, path: str) -> None:
        prompts = [p for p in GRID_PROMPTS for _ in range(config.grid_samples)]
        images = sample(state.eval_params, keys["sample"], prompts, options=config.sample)
        log.save_labelled_rows(path, images, list(GRID_PROMPTS))

    def grid_hook(state):
        step = int(jax.device_get(state.step))
        grid(state, os.path.join(workdir, "samples", f"prompt_grid_{step:06d}.png"))

    hooks = (loop.Hook(config.train.eval_every, evaluate_state),
             loop.Hook(config.train.sample_every, grid_hook, split="samples"))

    # ---- train
    state = loop.run(state=state, step_fn=step, mesh=run.mesh, cfg=config.train, workdir=workdir, hooks=hooks,
                     batches_from=functools.partial(caption_batches, real["image"], tokens_all, config.train))

    # ---- final evaluation: labels per guidance, attributes at the chosen one, the grid
    log.note("final evaluation: label accuracy per guidance, attribute following, prompt grid")
    train_seconds = timer.seconds()
    summary = {f"test_{k}": v for k, v in evaluate_state(state).items()}
    for w in config.guidances:
        summary.update({f"{k}_w{w:g}": v for k, v in quality(state, w).items()})
    summary.update(following(state))
    grid(state, os.path.join(workdir, "prompt_grid.png"))
    summary.update({
        "guidance": config.sample.guidance, "sampler": f"{config.sample.sampler}/{config.sample.steps}",
        "classifier_accuracy": net.test_accuracy, "params_text": _count(state.params["text"]),
        "params_unet": _count(state.params["unet"]), "train_seconds": train_seconds,
    })
    return experiment.finish(workdir, summary, timer=timer, state=state, mesh=run.mesh)


def _count(tree) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
