"""The ring of 8 Gaussians: its data and score, and the GAN's quality test -- a real run of the ring model
(gan.SIZES['ring']) with experiments/gan_ring.py's train settings covers the modes."""

import jax
import numpy as np

from genjax.data.ring import RING_MODES, ring_batches, ring_centers, ring_data
from genjax.metrics.ring import ring_score
from genjax.models import gan


def test_ring_data_and_score():
    x, y = ring_data(0, 4000)
    np.testing.assert_array_equal(x, ring_data(0, 4000)[0])  # seeded
    assert x.dtype == np.float32 and set(np.unique(y)) == set(range(RING_MODES))
    score = ring_score(x)
    assert score["modes"] == 8 and score["hq"] > 0.98
    assert ring_score(np.zeros((100, 2)))["modes"] == 0
    assert ring_score(ring_centers()[[0] * 100])["modes"] == 1
    # batch s of seed k is a function of (k, s) only: a resumed stream continues exactly
    a, b = ring_batches(16, seed=3), ring_batches(16, seed=3, start_step=2)
    next(a), next(a)
    np.testing.assert_array_equal(next(a)["x"], next(b)["x"])


def test_ring_training_covers_modes():
    from experiments import gan_ring

    config = gan_ring.Config()
    cfg, tc = config.model, config.train
    assert cfg == gan.SIZES["ring"]
    settings = (tc.lr, tc.b1, tc.ema_decay, tc.ema_warmup, tc.batch_size, tc.steps)
    assert settings == (3e-3, 0.5, 0.995, True, 256, 4000)
    k_init, k_state = jax.random.split(jax.random.key(0))
    state = gan.init_state(k_state, gan.init(k_init, cfg), cfg, tc)
    step = jax.jit(gan.make_step(cfg, tc), donate_argnums=0)
    data = ring_batches(tc.batch_size, seed=0)
    nonfinite = 0.0
    for _ in range(tc.steps):
        state, metrics = step(state, next(data))
        nonfinite += metrics["nonfinite"]
    assert float(nonfinite) == 0.0
    score = ring_score(gan.sample(state.eval_params, jax.random.key(1), 2500, cfg))
    assert score["modes"] >= 7 and score["hq"] >= 0.7, score
