"""benchmarks/gpu.sh --tiny: every GPU lever row's code path on CPU before GPU minutes are spent on it. Every
row is in the report, with finite numbers, and each lever's loss after identical steps equals its
reference row's (f32 to 1e-4, bf16 to 3e-2); a failing row and the deadline become rows, not crashes."""

import json
import math
import os
import pathlib
import subprocess
import sys

from benchmarks import gpu_levers

ROOT = pathlib.Path(__file__).parent.parent


def test_tiny_run_reports_every_row_finite_and_each_lever_matches_its_reference_loss(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not conftest's 8 simulated devices
    proc = subprocess.run(["bash", "benchmarks/gpu.sh", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                          env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob("gpu-levers-tiny-*.json")
    data = json.loads(path.read_text())
    assert path.with_suffix(".md").exists() and data["environment"]["backend"] == "cpu"
    assert all(math.isfinite(v) and v > 0 for k, v in data["peaks"].items() if k != "table_bfloat16")
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == [name for name, _, _ in gpu_levers.ROWS]
    for row in data["rows"][1:]:
        if gpu_levers.gpu_only(row):
            assert row["status"] == "skipped: no GPU", row["name"]
            continue
        assert row["status"] == "ok", (row["name"], row["status"], row.get("log_tail"))
        numbers = [row[k] for k in ("items_per_s", "step_ms", "compile_s", "check", *(
            ("tflops", "mfu_matmul") if row["family"] != "decode" else ()))] + row["losses"]
        assert all(math.isfinite(x) and x > 0 for x in numbers), (row["name"], numbers)
        ref = rows[row["ref"]]
        assert ref["family"] == row["family"] and ref["batch"] == row["batch"]
        tol = 3e-2 if "bfloat16" in (row["dtype"], ref["dtype"]) else 1e-4
        assert abs(row["check"] - ref["check"]) <= tol * abs(ref["check"]), (row["name"], row["check"], ref["check"])
        assert row["check_ok"]
    # the levers do compare against another row: bf16, padding, layout, remat, accumulation, f32 U-Net
    assert {rows[n]["ref"] for n in ("gpt2 bf16", "bf16 vocab unpadded", "bf16 unrolled", "bf16 remat")} == {
        "gpt2 f32"}
    assert rows["b32 bf16 accum 2"]["ref"] == "b32 bf16" and rows["decode bf16 unrolled"]["ref"] == "decode bf16"
    assert rows["unet cifar10 f32"]["ref"] == "unet cifar10 bf16"
    assert rows["b32 bf16 accum 2"]["setting"] == "batch 32 as 2 x 16 x 32"


def test_a_failing_row_is_an_error_row_and_rows_past_the_deadline_are_skipped(tmp_path):
    data = gpu_levers.run_rows([("bad heads", dict(n_head=3), "")], tiny=True, deadline_s=120, gpu=False)
    (row,) = data["rows"]
    assert row["status"] == "error" and "n_head" in row["error"], row
    data = gpu_levers.run_rows(gpu_levers.ROWS, tiny=True, deadline_s=0, out=str(tmp_path), gpu=False)
    assert {r["status"] for r in data["rows"]} == {"skipped: deadline", "skipped: no GPU"}
    (md,) = tmp_path.glob("*.md")
    assert md.read_text().count("skipped: deadline") == sum(not gpu_levers.gpu_only(r) for r in data["rows"]) - 1
