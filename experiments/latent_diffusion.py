"""Latent diffusion on scikit-learn's 8x8 digits (or any --data), two runs as Stable Diffusion is built:
a KL-regularized autoencoder with a spatial latent, then the diffusion U-Net on its frozen latents.

    python experiments/vae_digits.py --workdir runs/vae_latent \\
        --config experiments/configs/vae_digits_latent.json
    python experiments/latent_diffusion.py --workdir runs/latent_digits --autoencoder runs/vae_latent
    python -m genjax.sample runs/latent_digits --num 64 --out grid.png --sampler ddim --steps 50

Stage 1 may also train the autoencoder against a discriminator (experiments/vae_gan_digits.py, the VQGAN /
SD recipe). Stage 2 restores the stage-1 run's autoencoder (its EMA where it kept one;
`genjax.sample.load_run`), encodes the training images once (`latents`: the posterior mean, or one
posterior sample per image), sets model.latent_scale to 1 / std of those latents (SD's scale factor;
recorded in config.json and the summary) and trains the diffusion family's U-Net on the scaled latents with the shared loop (checkpoints,
exact resume). The autoencoder's params ride along in the train state unchanged, so the checkpoints hold
the whole model ({'autoencoder': ..., 'diffusion': ...}) and `python -m genjax.sample` samples it: the
diffusion sampler in latent space, then the decoder. Resuming checks that --autoencoder still holds the
same weights (their SHA-256).

Evaluation, every eval_every steps and at the end: the held-out denoising MSE on latents and the
autoencoder's reconstruction error; Frechet distance, KID, precision and recall of `num_quality_samples`
decoded samples (`sample`: sampler, steps, guidance) against the training images in the shipped digits
classifier's features, next to the same scores of the autoencoder's reconstructions of training images
(`recon_*`: the ceiling the decoder sets), a 10-component Gaussian mixture and held-out real digits; and
the sampling speed (samples/s, compiled). Writes samples/*.png, metrics.jsonl, tb/, checkpoints/,
summary.json into the workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import ClassVar, Literal

import jax
import numpy as np

from genjax import config as config_lib
from genjax import data, experiment, log, loop, metrics, train
from genjax.config import ConfigError
from genjax.models import latent_diffusion as ld, vae_gan


@dataclasses.dataclass(frozen=True)
class Config:
    DERIVED: ClassVar[tuple[str, ...]] = (
        "model.image_shape", "model.ae_channels", "model.ae_latent_channels", "model.ae_likelihood",
        "model.ae_dtype", "model.latent_scale", "autoencoder_sha256")
    RESUMABLE: ClassVar[tuple[str, ...]] = ("autoencoder", "sample", "eval_batch_size", "num_quality_samples")

    autoencoder: str = ""  # workdir of the stage-1 run (vae_digits.py / vae_gan_digits.py, a spatial latent)
    autoencoder_sha256: str = ""  # set from --autoencoder: its architecture and weights
    latents: Literal["mean", "sample"] = "mean"  # each training image encoded once: posterior mean, or a draw
    data: str = "digits"  # 'digits', 'tfds:NAME', an image folder, .npz/.npy, or MNIST idx files
    data_dir: str = ""  # tfds data_dir ('' = tfds default)
    image_size: int = 0  # resize (and centre-crop) every image to this side; 0 keeps the data's size
    channels: int = 0  # 1 (grey) or 3 (RGB) to convert; 0 keeps the data's channels
    sample: ld.SampleOptions = ld.SampleOptions()  # evaluation samples and grids
    eval_batch_size: int = 512
    num_quality_samples: int = 1000  # samples scored at each evaluation
    train: train.TrainConfig = train.TrainConfig(
        steps=5000, batch_size=64, lr=1e-3, schedule="cosine", warmup_steps=200, grad_clip=1.0,
        ema_decay=0.999, log_every=100, eval_every=2500, sample_every=2500, ckpt_every=2500,
    )
    model: ld.Config = ld.SIZES["digits"]


def load_autoencoder(path: str):
    """(vae.Config, params) of a stage-1 run, a VAE's or a vae_gan's (its autoencoder); a ConfigError (one
    line) for anything that is not a trained spatial-latent autoencoder run."""
    from genjax import sample as sample_lib

    if not path:
        raise ConfigError("--autoencoder is required: the workdir of a spatial-latent VAE or VAE-GAN run "
                          "(stage 1, experiments/vae_digits.py --config experiments/configs/"
                          "vae_digits_latent.json, or experiments/vae_gan_digits.py)")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ConfigError(f"--autoencoder {path} is not a genjax run (no config.json)")
    record = config_lib.load(path)
    if record.get("family") not in ("vae", "vae_gan"):
        raise ConfigError(f"--autoencoder {path} holds a {record.get('family')!r} run, not a VAE or "
                          "VAE-GAN; train one (experiments/configs/vae_digits_latent.json or "
                          "vae_gan_digits_latent.json)")
    _, ae_cfg, params, _ = sample_lib.load_run(path)
    if record["family"] == "vae_gan":  # the autoencoder; its discriminator served training only
        ae_cfg, params = vae_gan.vae_config(ae_cfg), params["autoencoder"]
    if not ae_cfg.spatial:
        raise ConfigError(f"--autoencoder {path} is an autoencoder with a flat latent (model.arch="
                          f"{ae_cfg.arch}, model.latent_channels=0); latent diffusion needs a spatial one (model.arch=conv, "
                          "model.latent_channels > 0: experiments/configs/vae_digits_latent.json)")
    return ae_cfg, params


def check_same_autoencoder(config: Config, workdir: str) -> None:
    """Refuses resuming a run whose --autoencoder now holds other weights than the ones it trained on."""
    ckpts = os.path.join(workdir, "checkpoints")
    if not (os.path.exists(os.path.join(workdir, "config.json")) and os.path.isdir(ckpts)
            and any(n.isdigit() for n in os.listdir(ckpts))):
        return
    record = config_lib.load(workdir)
    saved = record.get("config", {}).get("autoencoder_sha256")
    if record.get("experiment") == "latent_diffusion" and saved != config.autoencoder_sha256:
        raise ConfigError(f"--workdir {workdir} was trained on another autoencoder (sha256 {str(saved)[:12]})"
                          f" than --autoencoder {config.autoencoder} (sha256 "
                          f"{config.autoencoder_sha256[:12]}); pass the same one or use a fresh --workdir "
                          "(nothing was changed)")


def encode_all(ae_params, images: np.ndarray, cfg: ld.Config, batch_size: int, key=None) -> np.ndarray:
    """Unscaled latents (N, *latent_shape) of `images`, in batches (posterior means, or with `key` one
    posterior draw per image, batch i from fold_in(key, i))."""
    unscaled = dataclasses.replace(cfg, latent_scale=1.0)
    fn = jax.jit(lambda x, k: ld.encode(ae_params, x, unscaled, k))
    out = [fn(images[lo:lo + batch_size], None if key is None else jax.random.fold_in(key, i))
           for i, lo in enumerate(range(0, len(images), batch_size))]
    return np.concatenate([np.asarray(o) for o in out])


def train_and_evaluate(config: Config, workdir: str) -> dict:
    timer = experiment.Timer()
    config, train_src, test_src = experiment.image_data(config)
    ae_cfg, ae_params = load_autoencoder(config.autoencoder)
    if tuple(ae_cfg.image_shape) != tuple(train_src.shape):
        raise ConfigError(f"--autoencoder {config.autoencoder} was trained on {tuple(ae_cfg.image_shape)} "
                          f"images, --data {config.data} has {tuple(train_src.shape)}")
    model_cfg = ld.with_autoencoder(config.model, ae_cfg)
    config = dataclasses.replace(config, model=model_cfg,
                                 autoencoder_sha256=ld.fingerprint(ae_params, model_cfg))
    config.sample.validate(model_cfg)
    check_same_autoencoder(config, workdir)

    # ---- the training images, encoded once; the scale factor from their latents (SD: 1 / std)
    real, test = train_src.all(), test_src.all()
    encode_key = None
    if config.latents == "sample":
        encode_key = jax.random.fold_in(jax.random.key(config.train.seed), 1)
    latents = encode_all(ae_params, real["image"], model_cfg, config.eval_batch_size, encode_key)
    latent_std = float(np.std(latents))
    model_cfg = dataclasses.replace(model_cfg, latent_scale=1.0 / latent_std)
    config = dataclasses.replace(config, model=model_cfg)
    scaled = (latents * model_cfg.latent_scale).astype(np.float32)
    run = experiment.setup(config, workdir, experiment="latent_diffusion", family="latent_diffusion",
                           examples=len(scaled), keys=("init", "state", "eval", "sample", "quality"))
    keys = run.keys
    log.note(f"latents {scaled.shape[1:]} of {len(scaled)} images: std {latent_std:.4g}, "
             f"latent_scale {model_cfg.latent_scale:.4g}")

    # ---- state (the autoencoder frozen inside) and step
    tx = train.make_optimizer(config.train)
    params = {**ld.init(keys["init"], model_cfg), "autoencoder": ae_params}
    state = ld.init_state(keys["state"], params, tx, ema=config.train.ema_decay > 0)
    step = ld.make_step(model_cfg, config.train, tx)
    labels_all = np.asarray(real["label"], np.int32)

    def fetch(indices):
        return {"latent": scaled[indices], "label": labels_all[indices]}

    batches_from = functools.partial(data.batches, fetch, len(scaled), config.train.batch_size,
                                     config.train.seed)

    # ---- evaluation and samples (the EMA weights where the run keeps them)
    net = metrics.feature_net(config.data, real, test, train_src.num_classes)
    evaluate = jax.jit(functools.partial(ld.evaluate, cfg=model_cfg))
    conditional = model_cfg.num_classes > 0
    labels = tuple(int(v) for v in real["label"][:config.num_quality_samples]) if conditional else ()

    def quality(state, key) -> dict:
        options = dataclasses.replace(config.sample, labels=labels)
        num = config.num_quality_samples
        jax.block_until_ready(ld.sample(state.eval_params, key, num, model_cfg, options))  # compiles for num
        sample_timer = experiment.Timer()
        fake = np.asarray(ld.sample(state.eval_params, key, num, model_cfg, options))
        seconds = sample_timer.seconds()
        return {"sampling_seconds": seconds, "samples_per_sec": num / seconds,
                **metrics.sample_quality(net, real["image"], fake, np.asarray(labels) if labels else None)}

    @experiment.per_step
    def evaluate_state(state) -> dict:
        batches = experiment.chunks({"image": test["image"], "label": test["label"]}, config.eval_batch_size)
        return experiment.evaluate_batches(evaluate, state.eval_params, batches, keys["eval"])

    def eval_hook(state):
        scores = {k: v for k, v in quality(state, keys["quality"]).items() if np.isscalar(v)}
        return {**evaluate_state(state), **scores}

    def images(state):
        return {"samples": ld.sample(state.eval_params, keys["sample"], 100, model_cfg, config.sample)}

    hooks = (loop.Hook(config.train.eval_every, eval_hook),
             experiment.image_hook(workdir, config.train.sample_every, images))

    # ---- train
    state = loop.run(state=state, step_fn=step, batches_from=batches_from, mesh=run.mesh, cfg=config.train,
                     workdir=workdir, hooks=hooks)

    # ---- final evaluation: decoded samples next to the decoder's ceiling, a Gaussian mixture, real digits
    log.note("final evaluation: denoising error and sample quality")
    ae_final = jax.device_get(state.params["autoencoder"])
    recon = np.asarray(jax.jit(lambda x: ld.decode(ae_final, ld.encode(ae_final, x, model_cfg), model_cfg))(
        real["image"][:config.num_quality_samples]))
    ceiling = metrics.sample_quality(net, real["image"], recon)
    summary = {
        **{f"test_{k}": v for k, v in evaluate_state(state).items()},
        **quality(state, jax.random.fold_in(keys["quality"], 1)),
        **{f"recon_{k}": ceiling[k] for k in ("frechet", "kid", "precision", "recall")},
        **metrics.reference_scores(net, real["image"], test["image"], config.num_quality_samples),
        "classifier_accuracy": net.test_accuracy,
        "latent_shape": list(scaled.shape[1:]), "latent_std": latent_std,
        "latent_scale": model_cfg.latent_scale,
        "autoencoder_unchanged": bool(all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(ae_final), jax.tree.leaves(jax.device_get(ae_params))))),
        "sampler": f"{config.sample.sampler}/{config.sample.steps}",
    }
    return experiment.finish(workdir, summary, timer=timer, state=state, mesh=run.mesh)


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
