"""Every measurement of benchmarks/: wall time of calls, matmul peaks, FLOPs, MFU, and workers (a benchmark
in a fresh process pinned to N cores before Python starts: XLA and torch size their pools from that mask).

FLOPs come from XLA's cost analysis of a step's HLO before optimization (a multiply-add counts 2), not
of the compiled module: GPU backends hand convolutions, GEMMs and attention to cuDNN/cuBLAS custom calls,
which the compiled count misses (an H200 run reported a tenth of the DDPM U-Net's true MFU that way).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Dense peak FLOP/s per device by a substring of `device_kind`. "float32" is the rate of XLA's default f32
# matmul precision: TF32 tensor cores on NVIDIA (H100: SXM; PCIe is ~756/378), bf16 MXU passes on TPU.
DEVICE_PEAKS = {name: {"bfloat16": bf16, "float32": f32} for name, bf16, f32 in (
    ("H200", 989e12, 494e12), ("H100", 989e12, 494e12), ("A100", 312e12, 156e12), ("L4", 121e12, 60e12),
    ("TPU v4", 275e12, 275e12), ("TPU v5 lite", 197e12, 197e12), ("TPU v5e", 197e12, 197e12),
    ("TPU v5p", 459e12, 459e12), ("TPU v5", 459e12, 459e12), ("TPU v6 lite", 918e12, 918e12),
    ("TPU v6e", 918e12, 918e12))}


def table_peak(dtype: str = "float32") -> float | None:
    kind = jax.devices()[0].device_kind.lower()
    return next((peaks[dtype] for name, peaks in DEVICE_PEAKS.items() if name.lower() in kind), None)


def once(fn: Callable) -> tuple[Any, float]:
    """(fn(), its wall seconds). `fn` must block on its result."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def timed(fn: Callable, n: int = 5, warmup: int = 1) -> list[float]:
    """Wall seconds of each of `n` calls of `fn()`, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    return [once(fn)[1] for _ in range(n)]


def median_time(fn: Callable, n: int = 5, warmup: int = 1) -> float:
    return statistics.median(timed(fn, n, warmup))


def matmul_peak(dtype: str = "float32", n: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a jit'd n x n matmul in `dtype` accumulating in float32 (median of `repeats`)."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.dtype(dtype)) for i in (0, 1))
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    return 2 * n**3 / median_time(lambda: f(a, b).block_until_ready(), repeats)


def torch_matmul_peak(torch, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_time(lambda: a @ b)


def flops(fn: Callable, *args) -> float | None:
    """FLOPs of `jax.jit(fn)(*args)` (arguments may be abstract) from XLA's cost analysis; None if unknown."""
    lowered = jax.jit(fn).lower(*args)
    try:
        cost = lowered.cost_analysis()
    except Exception:  # a backend without cost analysis
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    value = (cost or {}).get("flops")
    return float(value) if value and value > 0 else None


def mfu(flops_per_step: float | None, step_s: float, peak: float | None) -> float | None:
    return flops_per_step / step_s / peak if flops_per_step and peak else None


def stepper(step: Callable, state, batches: list) -> tuple[Callable[[int], None], float]:
    """(run(k): k more jit'd train steps over `batches` in turn, the state donated; compile seconds)."""
    jitted, held = jax.jit(step, donate_argnums=0), {"state": state, "i": 0}

    def run(k: int) -> None:
        s, i = held["state"], held["i"]
        for i in range(i, i + k):
            s, metrics = jitted(s, batches[i % len(batches)])
        jax.block_until_ready(metrics)
        held.update(state=s, i=i + 1)

    return run, once(lambda: run(1))[1]


def interleaved(runners: dict[str, Callable[[int], None]], reps: int, min_steps: int = 1) -> dict[str, dict]:
    """Seconds per step of each `run(k)`, repetitions interleaved so that background load hits all alike.
    A repetition is ~1 s of work (at most 20 steps): a slow runner (torch at 2 threads on a loaded machine
    has taken seconds per step) cannot stretch the budget. Calibrating on 2 steps also warms up."""
    per_rep = {name: int(min(20, max(min_steps, 2.0 / max(once(lambda: run(2))[1], 1e-6))))
               for name, run in runners.items()}
    times = {name: [] for name in runners}
    for _ in range(reps):
        for name, run in runners.items():
            times[name].append(once(lambda: run(per_rep[name]))[1] / per_rep[name])
    return {name: {"step_s": statistics.median(t), "step_s_min": min(t), "steps_per_rep": per_rep[name]}
            for name, t in times.items()}


def compare(runners: dict[str, tuple], reps: int, work: int, unit: str, min_steps: int = 1) -> dict:
    """Rows of interleaved timings of runners (run(k), compile seconds, FLOPs per step, peak GFLOP/s)
    doing `work` examples (or tokens) per step."""
    times, rows = interleaved({name: r[0] for name, r in runners.items()}, reps, min_steps), {}
    for name, (_, compile_s, flops, peak) in runners.items():
        t, gflops = times[name], flops / times[name]["step_s"] / 1e9
        rows[name] = {"step_ms": 1e3 * t["step_s"], "step_ms_min": 1e3 * t["step_s_min"],
                      "steps_per_rep": t["steps_per_rep"], f"{unit}_per_s": work / t["step_s"],
                      "gflops": gflops, "mfu": gflops / peak, "compile_s": compile_s}
    return rows


def worker(module: str, args=(), cores: int = 0, timeout: float | None = None, **env) -> dict:
    """What `python -m module --worker *args`, run on the first `cores` cores (0: all) with `env` added,
    printed last as `RESULT {json}`; RuntimeError with its output's tail if it failed."""
    pin = sorted(os.sched_getaffinity(0))[:cores or None]  # pinned before any import, no fork of this process
    start = (f"import os, runpy; os.sched_setaffinity(0, {pin}); "
             f"runpy.run_module({module!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", start, "--worker", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
                          timeout=timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-5000:])
    return json.loads(lines[-1][len("RESULT "):])


def result(out: dict) -> None:
    """A worker's answer to `worker`."""
    print("RESULT " + json.dumps(out))


def pinned_runs(module: str, thread_counts, args=()) -> list[dict]:
    """`worker(module, [threads, *args], cores=threads)` for each thread count this machine has cores for."""
    runs, cores = [], len(os.sched_getaffinity(0))
    for threads in thread_counts:
        if threads > cores:
            print(f"skipping {threads} threads: only {cores} cores")
            continue
        print(f"{module}: {threads} thread(s) ...", flush=True)
        try:
            runs.append(worker(module, [threads, *args], cores=threads))
        except RuntimeError as e:
            raise SystemExit(f"{e}\n{module}: the worker for {threads} threads failed (its output is above)")
    return runs


def pinned_result(threads: int, measure: Callable[[], dict]) -> None:
    """A pinned worker's answer: `measure()` with the thread count and the load averages around it."""
    out = {"threads": threads, "load_avg_start": os.getloadavg()[0], **measure()}
    result({**out, "load_avg_end": os.getloadavg()[0]})
