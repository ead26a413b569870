"""VAE on scikit-learn's 8x8 digits (or any --data): ELBO training, IWAE likelihood, samples, interpolation.

    python experiments/vae_digits.py --workdir runs/vae_digits
    python experiments/vae_digits.py --workdir runs/vae_mnist --data ../shared/datasets/mnist-5k \\
        --model.arch conv --model.latent_dim 32
    python -m genjax.sample runs/vae_digits --num 64 --out samples.png

Trains the ELBO with a KL warm-up, evaluates the held-out ELBO and the IWAE NLL (model.iwae_samples
importance samples) on a fixed binarization, and scores prior samples of the EMA weights (where the run
keeps them) in the shipped digits classifier's features (Frechet distance, KID, precision, recall) next
to a 10-component Gaussian mixture and held-out real digits, and the reconstructions of as many training
images alike (recon_*, with their MSE and the held-out images' test_recon_mse). Writes samples/*.png (samples,
reconstructions, interpolations), metrics.jsonl, tb/, checkpoints/, summary.json into the workdir.
Measured results: README.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import numpy as np

from genjax import experiment, log, loop, metrics, train
from genjax.models import vae


@dataclasses.dataclass(frozen=True)
class Config:
    DERIVED: ClassVar[tuple[str, ...]] = ("model.image_shape",)
    RESUMABLE: ClassVar[tuple[str, ...]] = ("num_quality_samples", "eval_batch_size")

    data: str = "digits"  # 'digits', 'tfds:NAME', an image folder, .npz/.npy, or MNIST idx files
    data_dir: str = ""  # tfds data_dir ('' = tfds default)
    image_size: int = 0  # resize (and centre-crop) every image to this side; 0 keeps the data's size
    channels: int = 0  # 1 (grey) or 3 (RGB) to convert; 0 keeps the data's channels
    num_quality_samples: int = 1000  # prior samples scored at the end
    eval_batch_size: int = 512
    train: train.TrainConfig = train.TrainConfig(
        steps=10000, batch_size=128, lr=2e-3, schedule="cosine", warmup_steps=100,
        log_every=100, eval_every=2500, sample_every=2500, ckpt_every=2500,
    )
    model: vae.Config = dataclasses.replace(vae.SIZES["digits"], kl_warmup_steps=500)


def vae_state_and_step(config: Config, keys: dict):
    """A fresh state and the step of `vae.loss` (train.step_for)."""
    tx = train.make_optimizer(config.train)
    params = vae.init(keys["init"], config.model)
    state = train.init_state(keys["state"], params, tx, ema=config.train.ema_decay > 0)
    return state, train.step_for(functools.partial(vae.loss, cfg=config.model), config.train, tx)


def train_and_evaluate(config: Config, workdir: str, *, name: str = "vae_digits", family=vae,
                       state_and_step=vae_state_and_step) -> dict:
    """The run; `family` (vae, or vae_gan with its own `state_and_step`: experiments/vae_gan_digits.py)
    gives evaluate, sample, reconstruct and interpolate."""
    timer = experiment.Timer()
    config, train_src, test_src = experiment.image_data(config)
    run = experiment.setup(config, workdir, experiment=name, family=family.__name__.split(".")[-1],
                           examples=train_src.size, keys=("init", "state", "eval", "sample"))
    model_cfg, keys = config.model, run.keys

    # ---- state and step
    state, step = state_and_step(config, keys)

    # ---- evaluation and samples (the EMA weights where the run keeps them)
    test = test_src.all()
    evaluate = jax.jit(functools.partial(family.evaluate, cfg=model_cfg))
    reconstruct = jax.jit(functools.partial(family.reconstruct, cfg=model_cfg))
    interpolate = jax.jit(functools.partial(family.interpolate, cfg=model_cfg), static_argnums=3)

    @experiment.per_step
    def eval_hook(state):
        batches = experiment.chunks(test, config.eval_batch_size)
        return experiment.evaluate_batches(evaluate, state.eval_params, batches, keys["eval"])

    def images(state):
        params, x = state.eval_params, test["image"]
        pairs = [interpolate(params, x[i], x[i + 1], 10) for i in range(0, 8, 2)]
        return {"samples": family.sample(params, keys["sample"], 64, model_cfg),
                "reconstructions": np.concatenate([x[:32], reconstruct(params, x[:32])]),
                "interpolation": np.concatenate(pairs)}

    hooks = (loop.Hook(config.train.eval_every, eval_hook),
             experiment.image_hook(workdir, config.train.sample_every, images))

    # ---- train
    state = loop.run(state=state, step_fn=step, batches_from=experiment.batches_from(train_src, config.train),
                     mesh=run.mesh, cfg=config.train, workdir=workdir, hooks=hooks)

    # ---- final evaluation: likelihood, sample quality against a Gaussian mixture and real digits, and the
    # reconstructions of training images scored alike (latent diffusion's ceiling: its recon_* scores)
    log.note("final evaluation: likelihood, sample and reconstruction quality")
    final = eval_hook(state)
    real = train_src.all()
    net = metrics.feature_net(config.data, real, test, train_src.num_classes)
    fake = np.asarray(family.sample(state.eval_params, jax.random.fold_in(keys["sample"], 1),
                                    config.num_quality_samples, model_cfg))
    shown = real["image"][:config.num_quality_samples]
    recon = np.asarray(reconstruct(state.eval_params, shown))
    recon_scores = metrics.sample_quality(net, real["image"], recon)
    test_recon = np.concatenate([reconstruct(state.eval_params, batch["image"]) for batch in
                                 experiment.chunks({"image": test["image"]}, config.eval_batch_size)])
    summary = {
        **{f"test_{k}": v for k, v in final.items()},
        "test_bits_per_dim": metrics.bits_per_dim(final["nll_iwae"], int(np.prod(model_cfg.image_shape))),
        **metrics.sample_quality(net, real["image"], fake),
        **{f"recon_{k}": recon_scores[k] for k in ("frechet", "kid", "precision", "recall")},
        "recon_mse": float(np.mean((recon - shown) ** 2)),
        "test_recon_mse": float(np.mean((test_recon - test["image"]) ** 2)),
        **metrics.reference_scores(net, real["image"], test["image"], config.num_quality_samples),
        "classifier_accuracy": net.test_accuracy,
    }
    return experiment.finish(workdir, summary, timer=timer, state=state, mesh=run.mesh)


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
