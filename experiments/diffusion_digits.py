"""Diffusion on scikit-learn's 8x8 digits (or any --data): a U-Net denoiser, DDPM / DDIM / DPM-Solver++
samplers, classifier-free guidance, and the variational bound in bits/dim.

    python experiments/diffusion_digits.py --workdir runs/diffusion_digits                         # conditional
    python experiments/diffusion_digits.py --workdir runs/diffusion_udigits --model.num_classes 0  # unconditional
    python -m genjax.sample runs/diffusion_digits --num 64 --out grid.png --sampler ddim --steps 50
    python -m genjax.sample runs/diffusion_digits --num 100 --labels 0,1,2,3,4,5,6,7,8,9 --guidance 2 \\
        --out grid.png

The default model is class-conditional (model.num_classes 10; pass 0 for unlabelled data) and scores its
samples with a light classifier-free guidance (sample.guidance 0.3): on the digits guidance trades recall
for precision, and 0.3 keeps both near real digits' (README). The conditional model trains with labels
dropped to the null label with probability model.cond_drop_prob, so one network gives both p(x | y) and
p(x); sampling mixes them with the guidance scale w (0: plain conditional, w > 0: classifier-free
guidance). Evaluation and samples use the EMA weights where the run keeps them (train.ema_decay > 0).

Evaluation, every eval_every steps and at the end: the bound on the held-out NLL in bits/dim
(`eval_repeats` noise draws per test image; conditional runs report the unconditional p(x) through the
null label, and bits_per_dim_cond for p(x | y)), and the Frechet distance, KID, precision and recall of
`num_quality_samples` samples (`sample`: sampler, steps, guidance) against the training images in the
shipped digits classifier's features, next to a 10-component Gaussian mixture and held-out real digits.
Writes samples/*.png, metrics.jsonl, tb/, checkpoints/, summary.json. Measured results: README.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import numpy as np

from genjax import experiment, log, loop, metrics, train
from genjax.models import diffusion


@dataclasses.dataclass(frozen=True)
class Config:
    DERIVED: ClassVar[tuple[str, ...]] = ("model.image_shape",)
    RESUMABLE: ClassVar[tuple[str, ...]] = ("sample", "grid_guidance", "eval_repeats", "eval_batch_size",
                                            "num_quality_samples")

    data: str = "digits"  # 'digits', 'tfds:NAME', an image folder, .npz/.npy, or MNIST idx files
    data_dir: str = ""  # tfds data_dir ('' = tfds default)
    image_size: int = 0  # resize (and centre-crop) every image to this side; 0 keeps the data's size
    channels: int = 0  # 1 (grey) or 3 (RGB) to convert; 0 keeps the data's channels
    sample: diffusion.SampleOptions = diffusion.SampleOptions(guidance=0.3)  # evaluation samples and grids
    grid_guidance: float = 2.0  # conditional runs also save a grid sampled with this guidance (0: none)
    eval_repeats: int = 4  # noise draws per test image in the bits/dim bound
    eval_batch_size: int = 512
    num_quality_samples: int = 1000  # samples scored at each evaluation
    train: train.TrainConfig = train.TrainConfig(
        steps=5000, batch_size=64, lr=1e-3, schedule="cosine", warmup_steps=200, grad_clip=1.0,
        ema_decay=0.999, log_every=100, eval_every=2500, sample_every=2500, ckpt_every=2500,
    )
    model: diffusion.Config = dataclasses.replace(diffusion.SIZES["digits"], num_classes=10)


def train_and_evaluate(config: Config, workdir: str) -> dict:
    timer = experiment.Timer()
    config, train_src, test_src = experiment.image_data(config)
    config.sample.validate(config.model)
    run = experiment.setup(config, workdir, experiment="diffusion_digits", family="diffusion",
                           examples=train_src.size, keys=("init", "state", "eval", "sample", "quality"))
    model_cfg, keys = config.model, run.keys
    conditional = model_cfg.num_classes > 0

    # ---- state and step
    tx = train.make_optimizer(config.train)
    state = train.init_state(keys["state"], diffusion.init(keys["init"], model_cfg), tx,
                             ema=config.train.ema_decay > 0)
    step = train.step_for(functools.partial(diffusion.loss, cfg=model_cfg), config.train, tx)

    # ---- evaluation and samples (the EMA weights where the run keeps them)
    real, test = train_src.all(), test_src.all()
    net = metrics.feature_net(config.data, real, test, train_src.num_classes)
    evaluate = jax.jit(functools.partial(diffusion.evaluate, cfg=model_cfg))
    # conditional samples follow the data's class frequencies, so the histogram is comparable
    labels = tuple(int(v) for v in real["label"][:config.num_quality_samples]) if conditional else ()

    def bits_per_dim(params, null_label: bool) -> float:
        held_out = {"image": test["image"], "label": test["label"]}
        if null_label:
            held_out["label"] = np.full_like(test["label"], model_cfg.num_classes)
        batches = [b for b in experiment.chunks(held_out, config.eval_batch_size) for _ in range(config.eval_repeats)]
        return experiment.evaluate_batches(evaluate, params, batches, keys["eval"])["bits_per_dim"]

    def quality(state, key) -> dict:
        options = dataclasses.replace(config.sample, labels=labels)
        sample_timer = experiment.Timer()
        fake = np.asarray(diffusion.sample(state.eval_params, key, config.num_quality_samples, model_cfg, options))
        return {"sampling_seconds": sample_timer.seconds(),
                **metrics.sample_quality(net, real["image"], fake, np.asarray(labels) if labels else None)}

    @experiment.per_step
    def evaluate_state(state) -> dict:
        out = {"bits_per_dim": bits_per_dim(state.eval_params, null_label=conditional)}
        if conditional:
            out["bits_per_dim_cond"] = bits_per_dim(state.eval_params, null_label=False)
        return out

    def eval_hook(state):
        scores = {k: v for k, v in quality(state, keys["quality"]).items() if np.isscalar(v)}
        return {**evaluate_state(state), **scores}

    def images(state):
        grids = {"samples": diffusion.sample(state.eval_params, keys["sample"], 100, model_cfg, config.sample)}
        if conditional and config.grid_guidance:  # columns 0..9 (the labels default), guided
            guided = dataclasses.replace(config.sample, guidance=config.grid_guidance)
            grids["samples_guided"] = diffusion.sample(state.eval_params, keys["sample"], 100, model_cfg, guided)
        return grids

    hooks = (loop.Hook(config.train.eval_every, eval_hook),
             experiment.image_hook(workdir, config.train.sample_every, images))

    # ---- train
    state = loop.run(state=state, step_fn=step, batches_from=experiment.batches_from(train_src, config.train),
                     mesh=run.mesh, cfg=config.train, workdir=workdir, hooks=hooks)

    # ---- final evaluation: likelihood bound and sample quality against a Gaussian mixture and real digits
    log.note("final evaluation: likelihood bound and sample quality")
    summary = {
        **{f"test_{k}": v for k, v in evaluate_state(state).items()},
        **quality(state, jax.random.fold_in(keys["quality"], 1)),  # sampling_seconds: compiled already
        **metrics.reference_scores(net, real["image"], test["image"], config.num_quality_samples),
        "classifier_accuracy": net.test_accuracy,
        "sampler": f"{config.sample.sampler}/{config.sample.steps}",
    }
    return experiment.finish(workdir, summary, timer=timer, state=state, mesh=run.mesh)


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
