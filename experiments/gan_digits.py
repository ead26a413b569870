"""GAN on scikit-learn's 8x8 digits (or any --data): DCGAN generator, spectrally normalized discriminator.

    python experiments/gan_digits.py --workdir runs/gan_digits                          # unconditional
    python experiments/gan_digits.py --workdir runs/gan_cdigits --model.num_classes 10  # class-conditional
    python experiments/gan_digits.py --workdir runs/gan_hinge --model.loss hinge
    python experiments/gan_digits.py --workdir runs/gan_wgan --model.loss wgan_gp --model.n_disc 5 \\
        --model.spectral_norm false --train.b1 0 --train.b2 0.9 --train.batch_size 320
    python -m genjax.sample runs/gan_cdigits --num 100 --labels 0,1,2,3,4,5,6,7,8,9 --out grid.png

The two-player step is built from genjax.train's pieces, so the train config means what it means for
every family: train.lr is the generator's learning rate and train.lr * model.d_lr_scale the
discriminator's (two-timescale rule), with train.schedule, warmup_steps, weight_decay, grad_clip and
grad_accum applying to both players; train.ema_decay keeps an EMA of the weights (warmed up with
train.ema_warmup), which evaluation and samples use. train.batch_size is the real examples per step,
split over the model.n_disc discriminator updates. A conditional model (num_classes > 0) pairs a
class-conditional generator with a projection discriminator.

Evaluation, every eval_every steps and at the end: Frechet distance, KID, precision and recall of EMA
samples against the training images in the shipped digits classifier's features, next to a 10-component
Gaussian mixture and held-out real digits; the predicted-class histogram (class_tv: 0 = balanced) and, for
conditional runs, label_accuracy. Writes samples/*.png, metrics.jsonl, tb/, checkpoints/, summary.json.
Measured results: README.md.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from genjax import experiment, log, loop, metrics, train
from genjax.config import ConfigError
from genjax.models import gan


@dataclasses.dataclass(frozen=True)
class Config:
    DERIVED: ClassVar[tuple[str, ...]] = ("model.image_shape",)
    RESUMABLE: ClassVar[tuple[str, ...]] = ("num_quality_samples", "baselines")

    data: str = "digits"  # 'digits', 'tfds:NAME', an image folder, .npz/.npy, or MNIST idx files
    data_dir: str = ""  # tfds data_dir ('' = tfds default)
    image_size: int = 0  # resize (and centre-crop) every image to this side; 0 keeps the data's size
    channels: int = 0  # 1 (grey) or 3 (RGB) to convert; 0 keeps the data's channels
    num_quality_samples: int = 1000  # EMA samples scored at each evaluation
    baselines: bool = True  # also score a Gaussian mixture fit and held-out data (seconds; off in smoke tests)
    train: train.TrainConfig = train.TrainConfig(
        steps=3000, batch_size=64, lr=2e-4, b1=0.5, b2=0.999, ema_decay=0.999, ema_warmup=True,
        log_every=100, eval_every=1000, sample_every=1000, ckpt_every=1000,
    )
    model: gan.Config = dataclasses.replace(gan.SIZES["digits"], d_lr_scale=2.0)


def train_and_evaluate(config: Config, workdir: str) -> dict:
    timer = experiment.Timer()
    config, train_src, test_src = experiment.image_data(config)
    if config.model.arch != "dcgan":
        raise ConfigError("gan_digits trains images: keep model.arch='dcgan' (gan_ring trains points)")
    run = experiment.setup(config, workdir, experiment="gan_digits", family="gan", examples=train_src.size,
                           keys=("init", "state", "sample", "quality"))
    model_cfg, keys = config.model, run.keys

    # ---- state and step
    state = gan.init_state(keys["state"], gan.init(keys["init"], model_cfg), model_cfg, config.train)
    step = gan.make_step(model_cfg, config.train)

    # ---- evaluation and samples (the EMA weights where the run keeps them)
    real, test = train_src.all(), test_src.all()
    net = metrics.feature_net(config.data, real, test, train_src.num_classes)
    # conditional samples follow the data's class frequencies, so the histogram is comparable
    labels = tuple(int(v) for v in real["label"][:config.num_quality_samples]) if model_cfg.num_classes else ()

    def quality(state, key) -> dict:
        fake = gan.sample(state.eval_params, key, config.num_quality_samples, model_cfg, gan.SampleOptions(labels))
        return metrics.sample_quality(net, real["image"], np.asarray(fake), np.asarray(labels) if labels else None)

    def eval_hook(state):
        return {k: v for k, v in quality(state, keys["quality"]).items() if np.isscalar(v)}

    def images(state):
        return {"samples": gan.sample(state.eval_params, keys["sample"], 100, model_cfg),
                "samples_raw": gan.sample(state.params, keys["sample"], 100, model_cfg)}

    hooks = (loop.Hook(config.train.eval_every, eval_hook),
             experiment.image_hook(workdir, config.train.sample_every, images))

    # ---- train
    state = loop.run(state=state, step_fn=step, batches_from=experiment.batches_from(train_src, config.train),
                     mesh=run.mesh, cfg=config.train, workdir=workdir, hooks=hooks)

    # ---- final sample quality against a Gaussian mixture and held-out real digits
    log.note("final evaluation: sample quality")
    summary = {**quality(state, jax.random.fold_in(keys["quality"], 1)), "classifier_accuracy": net.test_accuracy}
    if config.baselines:
        summary.update(metrics.reference_scores(net, real["image"], test["image"], config.num_quality_samples))
    return experiment.finish(workdir, summary, timer=timer, state=state, mesh=run.mesh)


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
