"""Benchmark plumbing: timing compiled calls, FLOPs from XLA's cost analysis, peaks, result files.

MFU = (model FLOPs per step / median step time) / peak FLOP/s of the devices used. FLOPs come from XLA's
cost analysis of the step's HLO before optimization (every multiply-add counts 2 FLOPs). Not the
compiled module's: GPU backends hand convolutions, GEMMs and attention to cuDNN/cuBLAS custom calls,
which the compiled cost analysis does not count (an H200 run reported 0.7% MFU for the DDPM U-Net that
way, a tenth of the true figure). The pre-optimization count is the same on every backend. The peak is
measured in the same run on CPU (a large jit'd matmul) and taken from `DEVICE_PEAKS` on GPU/TPU, with
the measured matmul rate reported beside it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per device (no sparsity), by a substring of `device.device_kind`. "float32" is the
# rate XLA's default f32 matmul precision reaches: TF32 tensor cores on NVIDIA Ampere and later, the
# bf16 MXU passes on TPU.
DEVICE_PEAKS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},  # SXM; PCIe is ~756/378
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},
    "TPU v6e": {"bfloat16": 918e12, "float32": 918e12},
}


def table_peak(device=None, dtype: str = "float32") -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    for name, peaks in DEVICE_PEAKS.items():
        if name.lower() in kind.lower():
            return peaks[dtype]
    return None


def block(tree):
    return jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def measure_matmul_peak(dtype: str = "float32", n: int | None = None, repeats: int = 7) -> float:
    """FLOP/s of a large jit'd square matmul (bf16 inputs accumulate in float32), median of `repeats`."""
    backend = jax.default_backend()
    n = n or (2048 if backend == "cpu" else 8192)
    dt = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    b = jax.random.normal(jax.random.key(1), (n, n), dt)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    block(f(a, b))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        block(f(a, b))
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def lowered_flops(fn: Callable, *args) -> float | None:
    """FLOPs of one call of `fn(*args)` from the unoptimized HLO: backend-independent model FLOPs."""
    return compiled_flops(jax.jit(fn).lower(*args))


def compiled_flops(compiled) -> float | None:
    """FLOPs from XLA's cost analysis of a Lowered or Compiled object (None where unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def time_compiled(fn: Callable, args: tuple, *, steps: int, warmup: int = 2, donate_first: bool = False,
                  sync_every: int = 1) -> dict:
    """Compile time and the median/min wall time per call of `jax.jit(fn)` over `args`.

    With `donate_first`, the first argument is threaded through (train steps: state -> state).
    """
    t0 = time.perf_counter()
    jitted = jax.jit(fn, donate_argnums=(0,) if donate_first else ())
    lowered = jitted.lower(*args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    state, rest = args[0], args[1:]

    def call(state):
        out = compiled(state, *rest)
        return out[0] if donate_first else state, out

    for _ in range(warmup):
        state, out = call(state)
    block(out)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, out = call(state)
        if (i + 1) % sync_every == 0:
            block(out)
        times.append(time.perf_counter() - t)
    block(out)
    if sync_every > 1:  # per-call time from the total when calls are pipelined
        times = [sum(times) / len(times)]
    return {
        "compile_s": compile_s,
        "step_s_median": statistics.median(times),
        "step_s_min": min(times),
        "flops_per_step": compiled_flops(lowered),
        "memory": peak_memory(),
    }


def peak_memory() -> int | None:
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    return (stats or {}).get("peak_bytes_in_use")


def mfu(flops_per_step: float | None, step_s: float, peak: float | None) -> float | None:
    if not flops_per_step or not peak:
        return None
    return flops_per_step / step_s / peak


def environment() -> dict:
    import flax
    import optax

    dev = jax.devices()[0]
    return {
        "date": datetime.date.today().isoformat(),
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
    }


def device_slug() -> str:
    dev = jax.devices()[0]
    kind = dev.device_kind if jax.default_backend() != "cpu" else f"cpu{os.cpu_count()}"
    return "".join(c if c.isalnum() else "-" for c in kind).strip("-").lower()


def write_results(results: dict, out_dir: str, name: str | None = None) -> tuple[str, str]:
    """Writes `<out_dir>/<device>-<date>.json` and a markdown table beside it; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = name or f"{device_slug()}-{datetime.date.today().isoformat()}"
    json_path = os.path.join(out_dir, f"{stem}.json")
    md_path = os.path.join(out_dir, f"{stem}.md")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True, default=float)
    with open(md_path, "w") as f:
        f.write(markdown(results))
    return json_path, md_path


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# genjax benchmarks: {env['device_kind']} x{env['device_count']} ({env['backend']}), "
             f"jax {env['jax']}, {env['date']}", ""]
    peaks = results.get("peaks", {})
    if peaks:
        lines += ["Peaks (FLOP/s): " + ", ".join(f"{k} {_fmt(v)}" for k, v in peaks.items()), ""]
    train = results.get("train", [])
    if train:
        lines += ["| family | size | params | batch | compile s | step ms | examples/s | GFLOP/step | MFU |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in train:
            gflop = r["flops_per_step"] / 1e9 if r.get("flops_per_step") else None
            lines.append(f"| {r['family']} | {r['size']} | {r['params']:,} | {r['batch']} | {_fmt(r['compile_s'])} | "
                         f"{_fmt(r['step_s_median'] * 1e3)} | {_fmt(r['examples_per_s'])} | {_fmt(gflop)} | "
                         f"{_fmt(r['mfu'] * 100 if r.get('mfu') else None)}{'%' if r.get('mfu') else ''} |")
        lines.append("")
    sampling = results.get("sampling", [])
    if sampling:
        lines += ["| family | what | setting | per call ms | items/s |", "| --- | --- | --- | --- | --- |"]
        for r in sampling:
            lines.append(f"| {r['family']} | {r['what']} | {r['setting']} | {_fmt(r['call_s'] * 1e3)} | "
                         f"{_fmt(r['items_per_s'])} |")
        lines.append("")
    for extra in results.get("notes", []):
        lines.append(f"- {extra}")
    return "\n".join(lines) + "\n"


def numpy_batch(shape, dtype=np.float32, seed=0, high=None):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, high, size=shape).astype(dtype)
    return rng.uniform(size=shape).astype(dtype)
