"""The benchmark suite: every family's train step (benchmarks/cases.py) and sampling speed, written to
results/<device>-<date>.{json,md}. MFU is against the device table's peak on GPU/TPU, else against a
float32 matmul measured in the same run. Rerun here rather than trusting another machine's table.

    python -m benchmarks                  # CPU-sized cases on a CPU, GPU-sized on an accelerator
    python -m benchmarks --quick          # a smoke version (under a minute on 2 CPU cores)
    python -m benchmarks --only transformer --only diffusion
    python -m benchmarks --size gpu --out $OUT   # what benchmarks/gpu.sh runs on a lent GPU
"""

from __future__ import annotations

import datetime
import statistics
import sys
import traceback

import jax

from benchmarks import cases, report, timing


def train_row(name: str, size: str, steps: int, peak: float | None) -> dict:
    case = cases.CASES[name][size]
    run, compile_s, flops, params, _ = cases.timed_step(case)
    times = timing.timed(lambda: run(1), steps, warmup=2)
    step_s, memory = statistics.median(times), getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}
    return {"family": name, "size": size, "params": sum(x.size for x in jax.tree.leaves(params)),
            "batch": case.batch_size, "unit": "tokens" if case.text else "images", "compile_s": compile_s,
            "step_s_median": step_s, "step_s_min": min(times), "flops_per_step": flops,
            "memory": memory.get("peak_bytes_in_use"), "examples_per_s": case.examples_per_step / step_s,
            "mfu": timing.mfu(flops, step_s, peak), "peak_used": peak, "compute_dtype": case.model.dtype}


def sampling_row(name: str, what: str, setting: str, items: int, calls: int, draw) -> dict:
    call_s = timing.median_time(lambda: jax.block_until_ready(draw()), calls)
    return {"family": name, "what": what, "setting": setting, "call_s": call_s, "items_per_s": items / call_s}


def markdown(results: dict) -> str:
    env, peaks = results["environment"], results.get("peaks")
    num = lambda key, scale=1: lambda r: report.fmt(r[key] and r[key] * scale)  # noqa: E731
    lines = [f"# genjax benchmarks: {env['device_kind']} x{env['device_count']} ({env['backend']}), "
             f"jax {env['jax']}, {env['date']}", ""]
    if peaks:
        lines += ["Peaks (FLOP/s): " + ", ".join(f"{k} {report.fmt(v)}" for k, v in peaks.items()), ""]
    if results.get("train"):
        lines += report.table(results["train"], {
            "family": "{family}", "size": "{size}", "params": "{params:,}", "batch": "{batch}",
            "compile s": num("compile_s"), "step ms": num("step_s_median", 1e3),
            "examples/s": num("examples_per_s"), "GFLOP/step": num("flops_per_step", 1e-9),
            "MFU": lambda r: f"{report.fmt(r['mfu'] * 100)}%" if r.get("mfu") else "-"}) + [""]
    if results.get("sampling"):
        lines += report.table(results["sampling"], {
            "family": "{family}", "what": "{what}", "setting": "{setting}", "per call ms": num("call_s", 1e3),
            "items/s": num("items_per_s")}) + [""]
    return "\n".join(lines + [f"- {note}" for note in results.get("notes", [])]) + "\n"


def main(argv=None) -> int:
    p = report.parser("benchmarks", __doc__, quick="few steps, small settings: a smoke run")
    p.add_argument("--only", action="append", choices=sorted(cases.CASES), help="families (repeatable)")
    p.add_argument("--size", choices=("auto", "cpu", "gpu"), default="auto",
                   help="model sizes: auto = cpu on a CPU backend, gpu otherwise")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (default 20, quick 5)")
    p.add_argument("--name", default=None, help="result file stem (default <device>-<date>)")
    args = p.parse_args(argv)
    size = args.size if args.size != "auto" else ("cpu" if jax.default_backend() == "cpu" else "gpu")
    env, dtypes = report.environment(), ("float32", "bfloat16")
    print(f"benchmarks: {env['device_kind']} x{env['device_count']}, jax {env['jax']}, size {size}")
    measured = {d: timing.matmul_peak(d, n=1024 if args.quick else None, repeats=7) for d in dtypes}
    table = {d: timing.table_peak(d) for d in dtypes}
    peaks = {**{f"measured_matmul_{d}": v for d, v in measured.items()},
             **{f"table_{d}": v for d, v in table.items() if v}}
    results = {"environment": env, "size": size, "quick": args.quick, "peaks": peaks, "train": [],
               "sampling": [], "errors": [], "notes": []}
    for name in args.only or list(cases.CASES):
        try:
            dtype = cases.CASES[name][size].model.dtype  # MFU against this dtype's peak
            steps = args.steps or (5 if args.quick else 20)
            results["train"].append(train_row(name, size, steps, table[dtype] or measured[dtype]))
            for sampling in cases.sampling(name, size, args.quick):
                results["sampling"].append(sampling_row(name, *sampling))
            print(markdown(results), flush=True)  # the rows so far
        except Exception as e:  # one broken case must not hide the others' numbers
            traceback.print_exc()
            results["errors"].append(f"{name}: {type(e).__name__}: {e}")
    against = "the device table's peak" if size == "gpu" else "the float32 matmul measured in this run"
    results["notes"].append(f"FLOPs per step from XLA's cost analysis of the unoptimized step; MFU against "
                            f"{against}")
    stem = args.name or f"{report.device_slug()}-{datetime.date.today().isoformat()}"
    base = report.write(args.out, stem, results, markdown(results), sort_keys=True)
    print(f"benchmarks: wrote {base}.json and {base}.md")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
