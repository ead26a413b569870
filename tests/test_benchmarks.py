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
