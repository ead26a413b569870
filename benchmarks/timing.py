"""Every measurement of benchmarks/: wall time of calls, matmul peaks, FLOPs from XLA, MFU.

FLOPs come from XLA's cost analysis of a step's HLO before optimization (a multiply-add counts 2), not
of the compiled module: GPU backends hand convolutions, GEMMs and attention to cuDNN/cuBLAS custom calls,
which the compiled count misses (an H200 run reported a tenth of the DDPM U-Net's true MFU that way).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

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
