"""Run the genjax benchmark suite and write results/<device>-<date>.{json,md}.

    python -m benchmarks                  # CPU-sized cases on a CPU, GPU-sized on an accelerator
    python -m benchmarks --quick          # a smoke version (under a minute on 2 CPU cores)
    python -m benchmarks --only transformer --only diffusion
    python -m benchmarks --size gpu --out $OUT   # what benchmarks/gpu.sh runs on a lent GPU

For every family: compile time, median step time, examples (or tokens) per second, FLOPs per step from
XLA's cost analysis, and MFU against a peak (measured in the same run on CPU; the device table on
GPU/TPU, with the measured matmul rate beside it). Then sampling speed for diffusion and the
transformer. Results depend on the machine: rerun here rather than trusting another machine's table.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import jax

from benchmarks import harness, suite


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few steps, small settings: a smoke run")
    p.add_argument("--only", action="append", choices=sorted(suite.CASES), help="families to run (repeatable)")
    p.add_argument("--size", choices=("auto", "cpu", "gpu"), default="auto",
                   help="model sizes: auto = cpu on a CPU backend, gpu otherwise")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (default 20, quick 5)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                   help="output folder for the JSON and markdown results")
    p.add_argument("--name", default=None, help="result file stem (default <device>-<date>)")
    args = p.parse_args(argv)

    size = args.size if args.size != "auto" else ("cpu" if jax.default_backend() == "cpu" else "gpu")
    steps = args.steps or (5 if args.quick else 20)
    families = args.only or list(suite.CASES)
    env = harness.environment()
    print(f"benchmarks: {env['device_kind']} x{env['device_count']}, jax {env['jax']}, size={size}", flush=True)

    measured = {d: harness.measure_matmul_peak(d, n=1024 if args.quick else None) for d in ("float32", "bfloat16")}
    table = {d: harness.table_peak(dtype=d) for d in ("float32", "bfloat16")}
    peaks = {f"measured_matmul_{d}": v for d, v in measured.items()}
    peaks.update({f"table_{d}": v for d, v in table.items() if v})
    results = {"environment": env, "size": size, "quick": args.quick, "peaks": peaks, "train": [],
               "sampling": [], "errors": [], "notes": []}

    for name in families:
        try:
            case = suite.CASES[name](size)
            dtype = getattr(getattr(case, "cfg", None), "dtype", None)
            # MFU denominator: the device table where the device is known, else the matmul measured now.
            compute = "bfloat16" if size == "gpu" and name in ("diffusion", "transformer") else "float32"
            peak = table[compute] or measured[compute]
            row = suite.run_train(case, steps, peak)
            row["peak_used"] = peak
            row["compute_dtype"] = dtype or compute
            results["train"].append(row)
            print(f"  train {name:12s} {row['step_s_median'] * 1e3:9.2f} ms/step "
                  f"{row['examples_per_s']:12,.0f} {row['unit']}/s  MFU "
                  f"{(row['mfu'] or 0) * 100:5.1f}%", flush=True)
            if name in suite.SAMPLING:
                for r in suite.SAMPLING[name](size, args.quick):
                    results["sampling"].append(r)
                    print(f"  sample {name:11s} {r['what']} ({r['setting']}): {r['call_s'] * 1e3:.1f} ms, "
                          f"{r['items_per_s']:,.0f}/s", flush=True)
        except Exception as e:  # one broken case must not hide the others' numbers
            traceback.print_exc()
            results["errors"].append(f"{name}: {type(e).__name__}: {e}")
    results["notes"].append("FLOPs per step from XLA's cost analysis of the compiled step; MFU against "
                            + ("the device table's peak" if size == "gpu" else "the float32 matmul measured in this run"))
    json_path, md_path = harness.write_results(results, args.out, args.name)
    print(open(md_path).read())
    print(f"benchmarks: wrote {json_path} and {md_path}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
