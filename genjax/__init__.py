"""genjax: generative models (VAE, GAN, diffusion, GPT) as pure JAX functions over pytrees.

The public pieces, each a small module:

    genjax.config      typed configs, command-line overrides, workdir config.json
    genjax.train       TrainConfig, TrainState, make_optimizer, make_step (loss -> pure step)
    genjax.loop        run(): the one training loop (sharded, checkpointed, resumable), Hook
    genjax.parallel    make_mesh, state_sharding, global_batch (data + FSDP over a device mesh)
    genjax.checkpoint  Checkpointer (orbax): async save, keep N, safe restore
    genjax.data        digits (embedded), tfds without TensorFlow, seeded resumable batches, text
    genjax.metrics     Frechet distance / KID in a frozen classifier's features, likelihood units
    genjax.models      vae, gan, diffusion, transformer: init / loss or step / sample
    genjax.sample      `python -m genjax.sample WORKDIR`: samples from any trained run

Importing genjax imports neither TensorFlow nor tensorflow_datasets.
"""

__version__ = "0.1.0"
