"""benchmarks/: FLOP counting against analytic formulas, the suite's result schema, the stored reports
re-rendered from their JSON, and the PyTorch references against genjax (skipped without torch)."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import cases, timing

RESULTS = pathlib.Path(__file__).parent.parent / "benchmarks" / "results"


def test_dense_layer_and_its_gradient_count_2_m_n_k_flops_per_matmul():
    b, i, o = 64, 256, 128
    x, w = jnp.ones((b, i)), jnp.ones((i, o))
    assert timing.flops(lambda x, w: x @ w, x, w) == pytest.approx(2 * b * i * o, rel=0.01)
    # forward x @ w, backward dw = x^T g and dx = g w^T: three matmuls of the same size
    grad = jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)), argnums=(0, 1))
    assert timing.flops(grad, w, x) == pytest.approx(3 * 2 * b * i * o, rel=0.05)


def test_transformer_step_flops_match_6n_plus_attention():
    case = cases.CASES["transformer"]["cpu"]
    xla = timing.flops(*cases.step_flops_args(case))
    analytic = cases.transformer.flops_per_token(case.model) * case.examples_per_step
    # XLA also counts softmax, norms, GELU and the optimizer; the matmuls dominate.
    assert analytic * 0.9 < xla < analytic * 1.35


def test_scanned_layers_count_once_so_the_gpu_case_takes_flops_from_its_unrolled_twin():
    case = cases.Case("transformer", cases.gpt(n_layer=4, scan_layers=True), 2, text=True)
    twin = cases.Case("transformer", case.model, 2, text=True, flops_twin={"scan_layers": False})
    scanned, unrolled = (timing.flops(*cases.step_flops_args(c)) for c in (case, twin))
    assert unrolled > 2 * scanned  # XLA counts the scanned body once, not 4 times


def test_mfu_and_peaks():
    assert timing.mfu(1e9, 0.01, 1e12) == pytest.approx(0.1)
    assert timing.mfu(None, 0.01, 1e12) is None
    assert timing.DEVICE_PEAKS["H100"]["bfloat16"] > timing.DEVICE_PEAKS["A100"]["bfloat16"]
    assert timing.matmul_peak("float32", n=256, repeats=2) > 1e8


def test_interleaved_timing_calibrates_steps_per_repetition():
    calls = {"fast": [], "slow": []}

    def runner(name, seconds):
        return lambda k: (calls[name].append(k), __import__("time").sleep(seconds * k))

    out = timing.interleaved({"fast": runner("fast", 0.001), "slow": runner("slow", 0.3)}, reps=2)
    assert calls["fast"][0] == calls["slow"][0] == 2  # calibration (and warm-up) on 2 steps each
    assert out["fast"]["steps_per_rep"] == 20 and out["slow"]["steps_per_rep"] == 3  # ~1 s, at most 20
    assert out["slow"]["step_s"] == pytest.approx(0.3, rel=0.2) and out["fast"]["step_s"] < 0.01


def test_quick_suite_writes_a_stable_schema(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--only", "vae", "--out", str(tmp_path),
           "--name", "smoke"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert set(results) >= {"environment", "peaks", "train", "sampling", "errors", "notes"}
    (row,) = results["train"]
    assert set(row) >= {"family", "size", "params", "batch", "compile_s", "step_s_median", "examples_per_s",
                        "flops_per_step", "mfu", "peak_used"}
    assert row["family"] == "vae" and row["step_s_median"] > 0 and 0 < row["mfu"] < 2
    assert f"| vae | cpu | {row['params']:,} | 128 |" in (tmp_path / "smoke.md").read_text()


def test_stored_reports_render_again_from_their_json():
    """Every results/*.md is what this code writes from the JSON beside it (one report writer)."""
    from benchmarks import __main__ as suite
    from benchmarks import bench_gpt, bench_unet, scaling

    load = lambda name: json.loads((RESULTS / f"{name}.json").read_text())  # noqa: E731
    cpu = load("cpu2-2026-11-28")  # written with sorted keys; the markdown had the run's order
    cpu["peaks"] = {k: cpu["peaks"][k] for k in ("measured_matmul_float32", "measured_matmul_bfloat16")}
    rendered = {"cpu2-2026-11-28": suite.markdown(cpu),
                "nvidia-h200-2026-11-28": suite.markdown(load("nvidia-h200-2026-11-28")),
                "scaling-cpu2": scaling.markdown(load("scaling-cpu2")["rows"]),
                "gpt_cpu": bench_gpt.markdown(load("gpt_cpu")),
                "unet_cpu": bench_unet.markdown(load("unet_cpu"))}
    if pytest.importorskip("torch", reason="gpt_loss_curve imports torch"):
        from benchmarks import gpt_loss_curve

        rendered["gpt_loss_curve"] = gpt_loss_curve.markdown(load("gpt_loss_curve"))
    for name, text in rendered.items():
        assert text == (RESULTS / f"{name}.md").read_text(), name


def test_torch_gpt_copy_and_trainer_follow_genjax_step_for_step():
    """gpt_loss_curve's premises: genjax's params loaded into the torch GPT give the same losses, and the
    torch trainer (AdamW, clipping, warmup + cosine) follows genjax's step for step."""
    torch = pytest.importorskip("torch")
    from benchmarks import gpt_loss_curve as lc
    from benchmarks import torch_ref
    from genjax import train
    from genjax.data import text as text_data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = cases.gpt(n_layer=2, d_model=64, block_size=32)
        # A short schedule that crosses warmup, peak, cosine and its floor; a clip that triggers.
        tcfg = train.TrainConfig(steps=4, batch_size=6, lr=1e-2, schedule="cosine", warmup_steps=2,
                                 weight_decay=0.1, b2=0.99, grad_clip=0.5)
        lc.check_schedule(tcfg, steps=[0, 1, 2, 3, 4, 5])
        tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 5000).astype(np.uint16)
        ours = lc.genjax_run(cfg, tcfg, tokens)
        start = jax.tree.map(np.array, jax.device_get(ours.weights()))
        ref = lc.torch_run(start, cfg, tcfg, tokens)
        assert torch_ref.max_param_diff(start, ref.weights()) == 0.0
        batch = ours.batch(0)
        assert ours.score(batch) == pytest.approx(ref.score(batch), rel=1e-6)
        gl, tl = ours.train(5), ref.train(5)
        assert abs(gl[0] - tl[0]) < lc.INIT_LOSS_TOL  # step 0 reports the loss of the copied initial weights
        np.testing.assert_allclose(gl, tl, atol=2e-5)
        assert torch_ref.max_param_diff(ours.weights(), ref.weights()) < 2e-5
        np.testing.assert_array_equal(ours.batch(3), text_data.block_batch(tokens, 3, 6, 32, tcfg.seed))
        moved = max(float(np.max(np.abs(a - np.asarray(b))))  # real updates, not warmup's near-zero rates
                    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(ours.weights())))
        assert moved > 1e-2
    finally:
        torch.set_num_threads(threads)


def test_torch_unet_matches_genjax_forward_and_schedule():
    """torch_ref's U-Net is the digits U-Net (and a padded, 3-level, conditional one): same parameter count
    and, with genjax's random non-zero parameters loaded, the same output; its log-SNR is genjax's."""
    torch = pytest.importorskip("torch")
    from benchmarks import bench_unet, torch_ref
    from genjax.models.diffusion import schedule

    check = bench_unet.forward_check()
    assert check["params_torch"] == check["params_genjax"] == 176_849
    assert check["max_abs_diff"] < 1e-4 and check["max_abs_out"] > 0.1
    odd = cases.unet(image_shape=(7, 9, 2), num_classes=3, channel_mults=(1, 2, 2), attn_resolutions=(2, 8))
    check = bench_unet.forward_check(odd)
    assert check["params_torch"] == check["params_genjax"] and check["max_abs_diff"] < 1e-4
    t = np.linspace(0.05, 1.0, 11, dtype=np.float32)
    for name in ("linear", "cosine"):
        np.testing.assert_allclose(torch_ref.log_snr(torch.from_numpy(t), name).numpy(),
                                   np.asarray(schedule.log_snr(jnp.asarray(t), name)), rtol=1e-5, atol=1e-4)
