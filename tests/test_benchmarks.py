"""The benchmark harness: FLOP counting against analytic formulas, the result schema, --quick."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import harness


def test_dense_layer_flops_match_2_m_n_k():
    b, i, o = 64, 256, 128
    x, w = jnp.ones((b, i)), jnp.ones((i, o))
    compiled = jax.jit(lambda x, w: x @ w).lower(x, w).compile()
    assert harness.compiled_flops(compiled) == pytest.approx(2 * b * i * o, rel=0.01)


def test_dense_train_step_flops_are_three_forward_passes():
    """Forward x@W plus backward dW = x^T g and dx = g W^T: 3 matmuls of the same size."""
    b, i, o = 64, 256, 128
    x, w = jnp.ones((b, i)), jnp.ones((i, o))
    grad = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)), argnums=(0, 1)))
    flops = harness.compiled_flops(grad.lower(w, x).compile())
    assert flops == pytest.approx(3 * 2 * b * i * o, rel=0.05)


def test_transformer_step_flops_match_6n_plus_attention():
    from genjax.models import transformer as tf
    from benchmarks import suite

    case = suite.transformer_case("cpu")
    xla = suite.step_flops(case)
    cfg = tf.config_for("nanogpt-cpu", vocab_size=96)
    analytic = tf.flops_per_token(cfg) * case.examples_per_step
    # XLA also counts softmax, norms, GELU and the optimizer; the matmuls dominate.
    assert analytic * 0.9 < xla < analytic * 1.35


def test_peak_table_and_mfu():
    assert harness.mfu(1e9, 0.01, 1e12) == pytest.approx(0.1)
    assert harness.mfu(None, 0.01, 1e12) is None
    assert harness.DEVICE_PEAKS["H100"]["bfloat16"] > harness.DEVICE_PEAKS["A100"]["bfloat16"]
    assert harness.measure_matmul_peak("float32", n=256, repeats=2) > 1e8


def test_quick_suite_writes_a_stable_schema(tmp_path):
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "vae", "--out", str(tmp_path),
                          "--name", "smoke"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert set(results) >= {"environment", "peaks", "train", "sampling", "errors", "notes"}
    (row,) = results["train"]
    assert set(row) >= {"family", "size", "params", "batch", "compile_s", "step_s_median", "examples_per_s",
                        "flops_per_step", "mfu", "peak_used"}
    assert row["family"] == "vae" and row["step_s_median"] > 0 and 0 < row["mfu"] < 2
    assert "| vae | cpu |" in (tmp_path / "smoke.md").read_text()


def test_loss_curve_torch_copy_and_optimizer_match_genjax():
    """benchmarks/gpt_loss_curve.py's premises: genjax params copied into torch_gpt give the same loss, and
    torch_gpt's trainer (AdamW, clipping, warmup + cosine) follows genjax's step for step."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from benchmarks import gpt_loss_curve as lc
    from genjax import train
    from genjax.data import text as text_data
    from genjax.models import transformer as T

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = T.config_for("nanogpt-cpu", n_layer=2, d_model=64, block_size=32, vocab_size=65)
        # A short schedule that crosses warmup, peak, cosine and its floor; a clip that triggers.
        tcfg = train.TrainConfig(steps=4, batch_size=6, lr=1e-2, schedule="cosine", warmup_steps=2,
                                 weight_decay=0.1, b2=0.99, grad_clip=0.5)
        lc.check_schedule(tcfg, steps=[0, 1, 2, 3, 4, 5])
        tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 5000).astype(np.uint16)
        data = type("Data", (), {"train": tokens})
        pair = lc.make_pair(data, cfg, tcfg)
        assert lc.max_param_diff(pair.state.params, pair.model, cfg) == 0.0
        start = jax.tree.map(np.array, jax.device_get(pair.state.params))
        gl, tl = pair.train_genjax(5), pair.train_torch(5)
        assert abs(gl[0] - tl[0]) < lc.INIT_LOSS_TOL  # step 0 reports the loss of the copied initial weights
        np.testing.assert_allclose(gl, tl, atol=2e-5)
        assert lc.max_param_diff(pair.state.params, pair.model, cfg) < 2e-5
        # The batches are gpt_text's sampler's: a pure function of (seed, step).
        np.testing.assert_array_equal(pair.batch(3), text_data.block_batch(tokens, 3, 6, 32, tcfg.seed))
        # The updates were real (lr 1e-2, not the warmup's near-zero rates).
        moved = max(float(np.max(np.abs(a - np.asarray(b))))
                    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(pair.state.params)))
        assert moved > 1e-2
    finally:
        torch.set_num_threads(threads)


def test_torch_unet_matches_genjax_forward():
    """benchmarks/torch_unet.py is the digits U-Net: same parameter count, and with genjax's (random,
    all non-zero) parameters copied in, the same output."""
    pytest.importorskip("torch")
    from benchmarks import bench_unet

    check = bench_unet.forward_check()
    assert check["params_torch"] == check["params_genjax"] == 176_849
    assert check["max_abs_diff"] < 1e-4 and check["max_abs_out"] > 0.1
