"""GAN on the 2-D ring of 8 Gaussians (radius 2, std 0.02): the classic mode-collapse check, in seconds.

    python experiments/gan_ring.py --workdir runs/gan_ring
    python experiments/gan_ring.py --workdir runs/gan_ring_hinge --model.loss hinge
    python -m genjax.sample runs/gan_ring --num 2500 --out points.npy     # (2500, 2) points

An MLP generator and discriminator (non-saturating loss, lazy R1 every 4 D updates, generator EMA);
the data is drawn fresh every step from a seeded stream (step s of seed k is always the same batch).
Scored on 2500 EMA samples: a sample is high quality within 3 std of its nearest mode, and a mode is
covered when it gets at least 20 high-quality samples per 2500 (PacGAN's rule). Expected on 2 CPU cores
(under a minute): 8/8 modes, 80-90% high-quality samples. Writes samples/*.png (2-D histograms of the
samples), metrics.jsonl, tb/, checkpoints/, summary.json into the workdir.

Optimization lives in the model config (model.lr_g / lr_d, b1, b2, ema_decay, n_disc); the train.lr
family of fields does not apply to the two-player step and is refused if set.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from genjax import experiment, loop, parallel, train
from genjax.config import ConfigError
from genjax.models import gan


@dataclasses.dataclass(frozen=True)
class Config:
    num_score_samples: int = 2500
    train: train.TrainConfig = train.TrainConfig(
        steps=gan.RING_STEPS, batch_size=gan.RING_BATCH, log_every=500, eval_every=1000, sample_every=1000,
        ckpt_every=1000,
    )
    model: gan.Config = gan.RING


def histogram_image(points: np.ndarray, size: int = 96, extent: float = 3.0) -> np.ndarray:
    """(1, size, size, 1) image in [0, 1] of where 2-D points fall in [-extent, extent]^2 (log counts)."""
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=size, range=[[-extent, extent]] * 2)
    image = np.log1p(counts[::-1])
    return (image / max(image.max(), 1e-9))[None, :, :, None].astype(np.float32)


def train_and_evaluate(config: Config, workdir: str) -> dict:
    timer = experiment.Timer()
    gan.check_train_config(config.train)
    if config.model.arch != "mlp" or config.model.data_dim != 2:
        raise ConfigError("gan_ring trains 2-D points: keep model.arch='mlp' and model.data_dim=2")
    if config.model.num_classes not in (0, gan.RING_MODES):
        raise ConfigError(f"model.num_classes={config.model.num_classes}: use 0 (unconditional) or "
                          f"{gan.RING_MODES} (conditioned on the mode)")
    model_cfg = config.model
    model_cfg.validate()
    experiment.start(config, workdir, experiment="gan_ring", family="gan")
    mesh = parallel.mesh_for(config.train)
    parallel.check_batch_size(config.train.batch_size, mesh)

    state_key, score_key = jax.random.split(jax.random.key(config.train.seed))
    state = gan.init_state(state_key, model_cfg)
    step = gan.make_step(model_cfg)

    def generator(state):
        return state.ema_params if state.ema_params is not None else state.params["generator"]

    def score(state, params=None) -> dict:
        points = np.asarray(gan.sample(generator(state) if params is None else params, score_key,
                                       config.num_score_samples, model_cfg))
        return gan.ring_score(points)

    def eval_hook(state):
        raw = score(state, state.params["generator"])
        return {**{k: v for k, v in score(state).items() if k != "per_mode"},
                "modes_raw": raw["modes"], "hq_raw": raw["hq"]}

    def images(state):
        out = {"samples": histogram_image(np.asarray(gan.sample(generator(state), score_key, 10_000, model_cfg)))}
        if int(jax.device_get(state.step)) <= config.train.sample_every:  # the data, once, for comparison
            out["data"] = histogram_image(gan.ring_data(0, 10_000)[0])
        return out

    hooks = (loop.Hook(config.train.eval_every, eval_hook),
             experiment.image_hook(workdir, config.train.sample_every, images))

    def batches_from(start):
        return gan.ring_batches(config.train.batch_size, config.train.seed, start)

    state = loop.run(state=state, step_fn=step, batches_from=batches_from, mesh=mesh, cfg=config.train,
                     workdir=workdir, hooks=hooks)

    final, raw = score(state), score(state, state.params["generator"])
    summary = {
        "modes": final["modes"], "hq": final["hq"], "per_mode": final["per_mode"],
        "modes_raw": raw["modes"], "hq_raw": raw["hq"],
        "wall_seconds": timer.seconds(), "steps": int(state.step), "devices": int(mesh.devices.size),
    }
    experiment.write_summary(workdir, summary)
    return summary


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
