"""The VAE trained against a discriminator on scikit-learn's 8x8 digits (or any --data): the autoencoder of
latent diffusion in the VQGAN / Stable Diffusion recipe (the vae_gan family).

    python experiments/vae_gan_digits.py --workdir runs/vae_gan_latent \\
        --config experiments/configs/vae_gan_digits_latent.json
    python experiments/latent_diffusion.py --workdir runs/latent_gan --autoencoder runs/vae_gan_latent
    python -m genjax.sample runs/vae_gan_latent --num 64 --out samples.png

experiments/vae_digits.py's run with the vae_gan family's two-player step (`vae_gan.make_step`: one
discriminator update, then the autoencoder's `vae.loss` plus the weighted adversarial term): the same
evaluation (held-out ELBO and IWAE NLL, D's accuracy on held-out images and their reconstructions,
prior samples and the reconstructions of training images scored in the shipped digits classifier's
features, their MSE), grids and summary. model.adv_weight, model.adv_adaptive and model.adv_start set
the adversarial term; train.lr * model.d_lr_scale is D's learning rate. Measured results: README.md.
"""

from __future__ import annotations

import dataclasses

from genjax import experiment
from genjax.models import vae_gan

try:
    from experiments import vae_digits
except ImportError:  # run as a script, python experiments/vae_gan_digits.py: its folder is on the path
    import vae_digits


@dataclasses.dataclass(frozen=True)
class Config(vae_digits.Config):
    model: vae_gan.Config = vae_gan.SIZES["digits"]


def state_and_step(config: Config, keys: dict):
    """A fresh two-player state and `vae_gan.make_step`."""
    params = vae_gan.init(keys["init"], config.model)
    state = vae_gan.init_state(keys["state"], params, config.model, config.train)
    return state, vae_gan.make_step(config.model, config.train)


def train_and_evaluate(config: Config, workdir: str) -> dict:
    return vae_digits.train_and_evaluate(config, workdir, name="vae_gan_digits", family=vae_gan,
                                         state_and_step=state_and_step)


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
