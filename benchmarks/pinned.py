"""Side-by-side CPU benchmarks in pinned child processes, one per thread count.

A benchmark script calls `run_children(__file__, ...)` from its main process; each child runs
`script --worker N ...`, calls `pin(N)` before importing JAX or torch (so XLA's and torch's thread pools
both see N cores) and prints its result as one `RESULT {json}` line.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def pin(threads: int) -> None:
    """Restricts this process to its first `threads` cores, on CPU, with the repo importable."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    for path in (ROOT, HERE):
        if path not in sys.path:
            sys.path.insert(0, path)


def run_children(script: str, thread_counts, extra_args=(), label: str = "") -> list[dict]:
    """Runs `script --worker N *extra_args` for each N (skipping N above the core count); their results."""
    label = label or os.path.basename(script)
    cores = len(os.sched_getaffinity(0))
    runs = []
    for threads in thread_counts:
        if threads > cores:
            print(f"skipping {threads} threads: only {cores} cores")
            continue
        print(f"{label}: {threads} thread(s) ...", flush=True)
        cmd = [sys.executable, os.path.abspath(script), "--worker", str(threads), *extra_args]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"{label}: worker for {threads} threads failed")
        runs.append(json.loads(lines[-1][len("RESULT "):]))
    return runs


def timed(fn, n=5):
    """Median wall time of `fn()` over n calls, after one warm-up call."""
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return median(ts)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions(modules=("jax", "jaxlib", "flax", "optax", "torch")) -> dict:
    out = {}
    for mod in modules:
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def torch_or_none(threads: int):
    """torch with `threads` intra-op threads and seed 0, or None where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def report(runs: list[dict], **extra) -> dict:
    """The JSON report: machine, versions, date, the children's results and `extra` fields."""
    return {"hardware": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores", "versions": versions(),
            "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), **extra, "runs": runs}


def write_report(out_dir: str, name: str, data: dict, markdown: str) -> None:
    """out_dir/name.json and out_dir/name.md; prints the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(markdown)
    print(markdown)
