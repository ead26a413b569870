"""GAN on scikit-learn's 8x8 digits: DCGAN generator, spectrally normalized discriminator, EMA samples.

    python experiments/gan_digits.py --workdir runs/gan_digits                          # unconditional
    python experiments/gan_digits.py --workdir runs/gan_cdigits --model.num_classes 10  # class-conditional
    python experiments/gan_digits.py --workdir runs/gan_hinge --model.loss hinge
    python experiments/gan_digits.py --workdir runs/gan_wgan --model.loss wgan_gp --model.n_disc 5 \\
        --model.spectral_norm false --model.b1 0 --model.b2 0.9 --train.batch_size 320
    python -m genjax.sample runs/gan_cdigits --num 100 --labels 0,1,2,3,4,5,6,7,8,9 --out grid.png

The conditional model (num_classes > 0) pairs a class-conditional generator with a projection
discriminator; samples and the sample CLI draw labels 0, 1, ..., 9, 0, ... unless --labels says otherwise.
Optimization lives in the model config (model.lr_g / lr_d for the two-timescale rule, model.b1 / b2,
model.ema_decay, model.n_disc); train.lr, b1, b2, schedule, warmup, weight_decay, grad_clip, grad_accum
and ema_decay do not apply to the two-player step and are refused if set. train.batch_size is the real
examples per step, split over the n_disc discriminator updates.

Evaluation: every eval_every steps and at the end, the Frechet distance and KID of EMA samples to the
training images, in the features of a frozen digits classifier (genjax.metrics, as for the VAE), next to a
10-component Gaussian mixture baseline and the test-set floor, and the predicted-class histogram of the
samples (class_tv: 0 = balanced; conditional runs also report label_accuracy, the share of samples the
classifier reads as the class they were drawn for).
Writes samples/*.png, metrics.jsonl, tb/, checkpoints/, summary.json into the workdir.

tfds configs (GPU/TPU sizes; need tensorflow-datasets with the dataset prepared in --data_dir):
    MNIST 28x28x1 (7x7 -> 28x28):
        --data mnist --model.widths 256,128,64 --model.latent_dim 128 --model.num_classes 10 \\
        --train.steps 20000 --train.batch_size 256
    CIFAR-10 32x32x3 (4x4 -> 32x32), hinge loss, TTUR:
        --data cifar10 --model.widths 512,256,128,64 --model.latent_dim 128 --model.loss hinge \\
        --model.lr_g 1e-4 --model.lr_d 4e-4 --model.b1 0 --model.b2 0.9 --model.n_disc 2 \\
        --train.steps 50000 --train.batch_size 256
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from genjax import data, experiment, loop, metrics, parallel, train
from genjax.config import ConfigError
from genjax.models import gan


@dataclasses.dataclass(frozen=True)
class Config:
    data: str = "digits"  # 'digits' (embedded) or a tfds image dataset such as 'mnist'
    data_dir: str = ""  # tfds data_dir ('' = tfds default)
    num_quality_samples: int = 1000  # EMA samples scored by the Frechet distance and KID
    baselines: bool = True  # also score a Gaussian mixture fit and the test set (seconds; off in smoke tests)
    train: train.TrainConfig = train.TrainConfig(
        steps=3000, batch_size=64, log_every=100, eval_every=1000, sample_every=1000, ckpt_every=1000,
    )
    model: gan.Config = gan.Config(
        latent_dim=32, widths=(128, 64), loss="nonsat", r1_weight=0.0, spectral_norm=True,
        lr_g=2e-4, lr_d=4e-4, b1=0.5, b2=0.999, ema_decay=0.999,
    )


def train_and_evaluate(config: Config, workdir: str) -> dict:
    timer = experiment.Timer()
    gan.check_train_config(config.train)
    train_src = data.load(config.data, "train", config.data_dir or None)
    test_src = data.load(config.data, "test", config.data_dir or None)
    if config.model.num_classes not in (0, train_src.num_classes):
        raise ConfigError(f"model.num_classes={config.model.num_classes}: {config.data} has "
                          f"{train_src.num_classes} classes; use 0 (unconditional) or {train_src.num_classes}")
    model_cfg = dataclasses.replace(config.model, arch="dcgan", image_shape=tuple(train_src.shape))
    model_cfg.validate()
    config = dataclasses.replace(config, model=model_cfg)
    experiment.start(config, workdir, experiment="gan_digits", family="gan")
    mesh = parallel.mesh_for(config.train)
    parallel.check_batch_size(config.train.batch_size, mesh)
    if config.train.batch_size % model_cfg.n_disc:
        raise ConfigError(f"train.batch_size={config.train.batch_size} must divide by model.n_disc="
                          f"{model_cfg.n_disc} (each D update takes batch_size / n_disc examples)")

    # ---- state and step
    state_key, sample_key, quality_key = jax.random.split(jax.random.key(config.train.seed), 3)
    state = gan.init_state(state_key, model_cfg)
    step = gan.make_step(model_cfg)

    # ---- evaluation and samples (always from the generator's EMA when the run keeps one)
    real, test = train_src.all(), test_src.all()
    net = metrics.feature_net(config.data, real, test, train_src.num_classes)

    def generator(state):
        return state.ema_params if state.ema_params is not None else state.params["generator"]

    def quality(state, key) -> dict:
        labels = None
        if model_cfg.num_classes:  # the data's class frequencies, so the histogram is comparable
            labels = np.resize(real["label"], config.num_quality_samples)
        fake = np.asarray(gan.sample(generator(state), key, config.num_quality_samples, model_cfg, labels=labels))
        out = metrics.sample_quality(net, real["image"], fake)
        predicted = net.predict(fake)
        out["class_hist"] = (np.bincount(predicted, minlength=net.num_classes) / len(fake)).tolist()
        if labels is not None:  # does the generator draw the class it is asked for?
            out["label_accuracy"] = float(np.mean(predicted == labels))
        return out

    def eval_hook(state):
        return {k: v for k, v in quality(state, quality_key).items() if np.isscalar(v)}

    def images(state):
        return {"samples": gan.sample(generator(state), sample_key, 100, model_cfg),
                "samples_raw": gan.sample(state.params["generator"], sample_key, 100, model_cfg)}

    hooks = (loop.Hook(config.train.eval_every, eval_hook),
             experiment.image_hook(workdir, config.train.sample_every, images))

    def batches_from(start):
        return data.batches(train_src.fetch, train_src.size, config.train.batch_size, config.train.seed, start)

    # ---- train
    state = loop.run(state=state, step_fn=step, batches_from=batches_from, mesh=mesh, cfg=config.train,
                     workdir=workdir, hooks=hooks)

    # ---- final sample quality against a Gaussian-mixture baseline and the test-set floor
    final = quality(state, jax.random.fold_in(quality_key, 1))
    summary = {**final, "classifier_accuracy": net.test_accuracy, "wall_seconds": timer.seconds(),
               "steps": int(state.step), "devices": int(mesh.devices.size)}
    if config.baselines:
        summary.update(metrics.reference_scores(net, real["image"], test["image"], config.num_quality_samples))
    experiment.write_summary(workdir, summary)
    return summary


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
