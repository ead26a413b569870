"""Recounts FLOPs and MFU of a results file with this version's FLOP counter (lowering only, any backend).

    python -m benchmarks.recount benchmarks/results/nvidia-h200-2026-11-28.json

For results measured before the counter moved to the unoptimized HLO (the compiled GPU module hides
cuDNN/cuBLAS work in custom calls): the step times stay as measured; FLOPs are recounted here by
lowering the same step at the same size (no compile, no accelerator needed), and MFU recomputed
against the peak the run used.
"""

import json
import sys

from benchmarks import harness, suite


def main(path: str) -> None:
    with open(path) as f:
        results = json.load(f)
    for row in results["train"]:
        case = suite.CASES[row["family"]](row["size"])
        old = row.get("flops_per_step")
        row["flops_per_step_compiled_module"] = old
        row["flops_per_step"] = suite.step_flops(case)
        row["mfu"] = harness.mfu(row["flops_per_step"], row["step_s_median"], row["peak_used"])
        print(f"{row['family']:12s} {old or 0:.3g} -> {row['flops_per_step']:.3g} FLOP/step, MFU {row['mfu']:.2%}")
    results["notes"] = [n for n in results.get("notes", []) if "cost analysis" not in n] + [
        "FLOPs per step recounted (python -m benchmarks.recount) from the unoptimized HLO of the same step; "
        "step times as measured on the device; MFU against the device table's peak"]
    stem = path[: -len(".json")]
    with open(path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True, default=float)
    with open(stem + ".md", "w") as f:
        f.write(harness.markdown(results))


if __name__ == "__main__":
    main(sys.argv[1])
