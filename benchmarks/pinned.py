"""Side-by-side CPU benchmarks (genjax vs the PyTorch references) in child processes pinned to N cores.

The main process calls `run_children(module, thread_counts)`; each child runs `python -m <module>
--worker N ...` and calls `child(N, measure)`, which pins it before JAX or torch are imported (both size
their thread pools from the affinity mask) and prints `RESULT {json}`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_children(module: str, thread_counts, extra_args=()) -> list[dict]:
    """Each child's result, for the thread counts this machine has cores for."""
    cores, runs = len(os.sched_getaffinity(0)), []
    for threads in thread_counts:
        if threads > cores:
            print(f"skipping {threads} threads: only {cores} cores")
            continue
        print(f"{module}: {threads} thread(s) ...", flush=True)
        cmd = [sys.executable, "-m", module, "--worker", str(threads), *extra_args]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"{module}: the worker for {threads} threads failed (its output is above)")
        runs.append(json.loads(lines[-1][len("RESULT "):]))
    return runs


def child(threads: int, measure) -> None:
    """Pins this process to its first `threads` cores, then prints `measure()` with the load averages."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    out = {"threads": threads, "load_avg_start": os.getloadavg()[0], **measure()}
    print("RESULT " + json.dumps({**out, "load_avg_end": os.getloadavg()[0]}))


def torch_reference(threads: int):
    """benchmarks.torch_ref with torch at `threads` intra-op threads and seed 0; None without torch."""
    try:
        from benchmarks import torch_ref
    except ImportError:
        return None
    torch_ref.torch.set_num_threads(threads)
    torch_ref.torch.manual_seed(0)
    return torch_ref


def compare(runners: dict[str, tuple], reps: int, work: int, unit: str, min_steps: int = 1) -> dict:
    """Rows of interleaved timings (`timing.interleaved`) of runners (run(k), compile seconds, FLOPs per
    step, peak GFLOP/s) doing `work` examples (or tokens) per step."""
    from benchmarks import timing  # after `child` pinned the process: timing imports JAX

    times = timing.interleaved({name: r[0] for name, r in runners.items()}, reps, min_steps)
    rows = {}
    for name, (_, compile_s, flops, peak) in runners.items():
        t, gflops = times[name], flops / times[name]["step_s"] / 1e9
        rows[name] = {"step_ms": 1e3 * t["step_s"], "step_ms_min": 1e3 * t["step_s_min"],
                      "steps_per_rep": t["steps_per_rep"], f"{unit}_per_s": work / t["step_s"],
                      "gflops": gflops, "mfu": gflops / peak, "compile_s": compile_s}
    return rows


def train_rows(runs: list[dict], reference: str, unit: str) -> list[dict]:
    """Every child's train rows, flattened, with the speed ratio to `reference` ('-' without it)."""
    rows = []
    for r in runs:
        ref = r["train"].get(reference, {}).get(f"{unit}_per_s")
        for name, t in r["train"].items():
            rows.append({**t, "threads": r["threads"], "name": name,
                         "ratio": f"{t[f'{unit}_per_s'] / ref:.2f}x" if ref else "-"})
    return rows


def torch_peak(run: dict, label: str) -> str:
    return f"{label} {run['torch_peak_gflops_f32']:.0f}" if "torch_peak_gflops_f32" in run else ""


def percent(key: str):
    return lambda row: f"{100 * row[key]:.1f}%"


def load_line(runs: list[dict]) -> str:
    return "Load average at the start of each child: " + ", ".join(
        f"{r['threads']} thread(s): {r['load_avg_start']:.2f}" for r in runs)
