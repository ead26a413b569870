"""The step builder: optimizer math, EMA, gradient accumulation, the non-finite guard, step keys."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax import train


def quadratic_loss(params, batch, key, step=None):
    err = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(err**2), {"mse": jnp.mean(err**2)}


def _problem(n=16, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w_true = rng.normal(size=(d,)).astype(np.float32)
    return {"w": jnp.zeros(d)}, {"x": jnp.asarray(x), "y": jnp.asarray(x @ w_true)}


def test_weight_decay_shrinks_matrices_only():
    """With zero gradients AdamW's update is the decay alone: kernels and embeddings shrink by lr * wd,
    biases, norm scales and layer-stacked vectors (rank 2 but named bias/scale) stay."""
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "ln": {"scale": jnp.ones(4)},
              "wte": jnp.ones((5, 4)), "stacked": {"bias": jnp.ones((2, 4)), "kernel": jnp.ones((2, 4, 4))}}
    tx = train.make_optimizer(train.TrainConfig(lr=0.1, weight_decay=0.5, schedule="constant", grad_clip=0.0))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    for path in (("dense", "kernel"), ("wte",), ("stacked", "kernel")):
        leaf = functools.reduce(lambda t, k: t[k], path, new)
        np.testing.assert_allclose(leaf, 1.0 - 0.1 * 0.5, rtol=1e-6, err_msg=str(path))
    for path in (("dense", "bias"), ("ln", "scale"), ("stacked", "bias")):
        np.testing.assert_array_equal(functools.reduce(lambda t, k: t[k], path, new), 1.0, err_msg=str(path))


def test_step_matches_plain_optax_and_counts():
    params, batch = _problem()
    tx = optax.sgd(0.1)
    state = train.init_state(jax.random.key(0), params, tx)
    step = jax.jit(train.make_step(quadratic_loss, tx))
    new, metrics = step(state, batch)
    grads = jax.grad(lambda p: quadratic_loss(p, batch, None)[0])(params)
    chex.assert_trees_all_close(new.params, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), rtol=1e-6)
    assert int(new.step) == 1 and float(metrics["nonfinite"]) == 0.0
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-6)


def test_training_converges():
    params, batch = _problem()
    tx = optax.adam(0.1)
    state = train.init_state(jax.random.key(0), params, tx)
    step = jax.jit(train.make_step(quadratic_loss, tx))
    for _ in range(200):
        state, metrics = step(state, batch)
    assert float(metrics["loss"]) < 1e-4


def test_ema_follows_the_incremental_update_formula():
    params, batch = _problem()
    tx = optax.sgd(0.1)
    state = train.init_state(jax.random.key(0), params, tx, ema=True)
    step = jax.jit(train.make_step(quadratic_loss, tx, ema_decay=0.9))
    new, _ = step(state, batch)
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.ema_params, new.params)
    chex.assert_trees_all_close(new.ema_params, expected, rtol=1e-6)


def test_gradient_accumulation_equals_full_batch():
    params, batch = _problem(n=24)
    tx = optax.adam(0.05)
    state = train.init_state(jax.random.key(0), params, tx)
    full = jax.jit(train.make_step(quadratic_loss, tx))
    accum = jax.jit(train.make_step(quadratic_loss, tx, grad_accum=4))
    s1, s2 = state, jax.tree.map(jnp.copy, state)
    for _ in range(3):
        s1, m1 = full(s1, batch)
        s2, m2 = accum(s2, batch)
    chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    # On CPU the microbatch loop is unrolled (a conv weight gradient in a loop body is up to 80x slower).
    assert "while" not in accum.lower(state, batch).as_text()


def test_nonfinite_step_changes_nothing_but_the_counter():
    params, batch = _problem()
    tx = optax.adam(0.1)
    state = train.init_state(jax.random.key(0), params, tx)
    step = jax.jit(train.make_step(quadratic_loss, tx))
    bad = {**batch, "y": batch["y"].at[0].set(jnp.nan)}
    new, metrics = step(state, bad)
    assert float(metrics["nonfinite"]) == 1.0
    chex.assert_trees_all_equal(new.params, state.params)
    chex.assert_trees_all_equal(new.opt_state, state.opt_state)
    assert int(new.step) == 1


def test_step_keys_depend_on_step_and_seed_only():
    tx = optax.sgd(0.1)
    seen = []

    def loss(params, batch, key, step):
        return jnp.sum(params["w"]) * 0.0, {"draw": jax.random.uniform(key)}

    step = jax.jit(train.make_step(loss, tx))
    for seed in (0, 0, 1):
        state = train.init_state(jax.random.key(seed), {"w": jnp.zeros(2)}, tx)
        draws = []
        for _ in range(3):
            state, m = step(state, {})
            draws.append(float(m["draw"]))
        seen.append(draws)
    assert seen[0] == seen[1] and seen[0] != seen[2] and len(set(seen[0])) == 3


def test_the_step_counter_is_always_passed_to_the_loss():
    tx = optax.sgd(0.0)

    def loss(params, batch, key, step):  # no default: make_step must always pass it
        return jnp.sum(params["w"]) * 0.0, {"step_seen": step.astype(jnp.float32)}

    step = jax.jit(train.make_step(loss, tx, grad_accum=2))  # also through the microbatch loop
    state = train.init_state(jax.random.key(0), {"w": jnp.zeros(2)}, tx)
    for expected in range(3):
        state, m = step(state, {"x": jnp.zeros((4, 1))})
        assert float(m["step_seen"]) == expected


def test_apply_gradients_checks_the_updated_params():
    params, grads = {"w": jnp.ones(3)}, {"w": jnp.array([1.0, -2.0, 0.5])}
    loss = jnp.float32(1.0)
    tx = optax.sgd(0.1)
    new, _, finite = train.apply_gradients(tx, params, tx.init(params), grads, loss)
    assert bool(finite)
    chex.assert_trees_all_close(new, {"w": jnp.array([0.9, 1.2, 0.95])}, rtol=1e-6)
    for bad_loss, bad_grads in ((jnp.float32(jnp.nan), grads), (loss, {"w": grads["w"].at[1].set(jnp.inf)})):
        assert not bool(train.apply_gradients(tx, params, tx.init(params), bad_grads, bad_loss)[2])
    # Loss and gradients finite, the update not: an infinite learning rate, or a finite one so large
    # that the float32 parameters overflow. Only the new parameters show it; they come back unguarded.
    for scale in (jnp.inf, 3e38):
        tx = optax.scale(scale)
        new, _, finite = train.apply_gradients(tx, params, tx.init(params), grads, loss)
        assert not bool(finite), scale
        assert not bool(jnp.all(jnp.isfinite(new["w"])))
    # and make_step keeps the state, counts the step, reports it
    tx = optax.scale(3e38)
    state = train.init_state(jax.random.key(0), {"w": jnp.ones(3)}, tx)
    _, batch = _problem(d=3)
    new, metrics = jax.jit(train.make_step(quadratic_loss, tx))(state, batch)
    assert float(metrics["nonfinite"]) == 1.0 and np.isfinite(float(metrics["loss"]))
    assert int(new.step) == 1
    chex.assert_trees_all_equal(new.params, state.params)


def test_update_ema_warmup_follows_the_formula():
    ema, params = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    assert train.update_ema(None, params, 0.99, 0, warmup=True) is None
    for t in (0, 1, 5, 50, 500, 5000):
        d = min(0.99, (1 + t) / (10 + t))
        got = train.update_ema(ema, params, 0.99, jnp.int32(t), warmup=True)
        np.testing.assert_allclose(got["w"], 1.0 - d, rtol=1e-5, err_msg=f"t={t}")
        # without warmup the decay is the configured one at every step
        np.testing.assert_allclose(train.update_ema(ema, params, 0.99, t)["w"], 0.01, rtol=1e-5)
    assert (1 + 5000) / (10 + 5000) > 0.99  # the last t really reached the cap


def test_step_for_takes_ema_warmup_and_accumulation_from_the_config():
    params, batch = _problem(n=8)
    cfg = train.TrainConfig(lr=0.1, ema_decay=0.9, ema_warmup=True, grad_accum=2)
    tx = optax.sgd(0.1)
    state = train.init_state(jax.random.key(0), params, tx, ema=True)
    assert state.eval_params is state.ema_params
    step = jax.jit(train.step_for(quadratic_loss, cfg, tx))
    s = state
    for t in range(3):
        new, _ = step(s, batch)
        d = min(0.9, (1 + t) / (10 + t))
        expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, s.ema_params, new.params)
        chex.assert_trees_all_close(new.ema_params, expected, rtol=1e-6, atol=1e-7)
        s = new
    assert _traced_batch_sizes(cfg, batch) == {4}  # grad_accum=2 microbatches of the 8 examples
    plain = train.init_state(jax.random.key(0), params, tx)
    assert plain.ema_params is None and plain.eval_params is plain.params


def _traced_batch_sizes(cfg, batch):
    """The batch sizes the loss is traced with under step_for(cfg)."""
    sizes = []

    def loss(params, b, key, step):
        sizes.append(b["x"].shape[0])
        return quadratic_loss(params, b, key)

    tx = optax.sgd(0.1)
    state = train.init_state(jax.random.key(0), _problem()[0], tx)
    jax.eval_shape(train.step_for(loss, cfg, tx), state, batch)
    return set(sizes)


@pytest.mark.parametrize("schedule,warmup", [("constant", 0), ("constant", 10), ("cosine", 10)])
def test_make_optimizer_schedules(schedule, warmup):
    cfg = train.TrainConfig(lr=0.1, steps=100, schedule=schedule, warmup_steps=warmup, grad_clip=1.0)
    tx = train.make_optimizer(cfg)
    params = {"w": jnp.ones(2)}
    updates, _ = tx.update({"w": jnp.full(2, 100.0)}, tx.init(params), params)
    # gradient clipped to norm 1 then Adam-normalized: the first update is at most the lr in size
    assert float(jnp.max(jnp.abs(updates["w"]))) <= 0.1 + 1e-6
    if warmup:
        assert float(jnp.max(jnp.abs(updates["w"]))) == pytest.approx(0.0, abs=1e-6)
