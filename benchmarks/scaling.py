"""Step time of every family's CPU case under 1, 2, 4 and 8 simulated CPU devices: data parallel, FSDP,
and for families with tensor-parallel rules a 2-way `model` axis. The simulated devices share this
machine's cores, so this measures each layout's overhead and checks that it compiles and runs, not a
speed-up. Each device count runs in its own process (JAX fixes the count when it starts).

    python -m benchmarks.scaling [--only vae] [--steps 10] [--out benchmarks/results]
"""

from __future__ import annotations

import json
import statistics
import sys

import jax

from benchmarks import cases, report, timing
from genjax import parallel
from genjax.loop import compile_step, place_state


def measure(family: str, fsdp: int, model: int, steps: int) -> dict:
    """One layout's step time, in a worker whose simulated devices `layout` set."""
    state, step, batch = cases.build(cases.CASES[family]["cpu"])
    mesh, shards = parallel.make_mesh(fsdp, model=model), jax.device_count() // model
    state, shardings = place_state(state, mesh, cases.FAMILIES[family].MODEL_RULES if model > 1 else None)
    step = compile_step(step, shardings, mesh)
    batch = parallel.global_batch({k: v[: len(v) // shards * shards] for k, v in batch.items()}, mesh)
    held = [state]

    def one_step():  # blocking every step also keeps simulated-device collectives from piling up
        held[0], metrics = step(held[0], batch)
        jax.block_until_ready(metrics)

    times = timing.timed(one_step, steps + 1, warmup=0)  # the first call compiles
    return {"family": family, "devices": jax.device_count(), "fsdp": fsdp, "model": model,
            "step_s_median": statistics.median(times[1:]), "compile_s": times[0]}


def layout(family: str, devices: int, fsdp: int, model: int, steps: int) -> dict:
    row = {"family": family, "devices": devices, "fsdp": fsdp, "model": model}
    flags = f"--xla_force_host_platform_device_count={devices}"
    try:
        return timing.worker("benchmarks.scaling", [family, fsdp, model, steps], timeout=900, XLA_FLAGS=flags)
    except RuntimeError as e:
        return {**row, "error": str(e)[-500:]}


def label(row: dict) -> str:
    """'data 2 x fsdp 2 x model 2', leaving out axes of size 1."""
    fsdp, model = row["fsdp"], row["model"]
    sizes = {"data": row["devices"] // (fsdp * model), "fsdp": fsdp, "model": model}
    return " x ".join(f"{k} {v}" for k, v in sizes.items() if v > 1) or "1 device"


def markdown(rows: list[dict]) -> str:
    lines = report.table(rows, {
        "family": "{family}", "devices": "{devices}", "layout": label,
        "step ms": lambda r: "error" if "error" in r else f"{r['step_s_median'] * 1e3:.2f}",
        "compile s": lambda r: "-" if "error" in r else f"{r['compile_s']:.1f}"})
    note = ("Simulated devices share this machine's cores: the rows measure each layout's overhead and check "
            "that it compiles and runs, not a speed-up.")
    return "\n".join(lines + ["", note]) + "\n"


def main(argv=None) -> int:
    p = report.parser("benchmarks.scaling", __doc__, worker=True)
    p.add_argument("--only", action="append", choices=sorted(cases.CASES), help="families (default: all)")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    if args.worker:
        family, fsdp, model, steps = args.worker
        return timing.result(measure(family, int(fsdp), int(model), int(steps)))
    rows = []
    for family in args.only or list(cases.CASES):
        for devices in (1, 2, 4, 8):
            tensor = devices > 1 and hasattr(cases.FAMILIES[family], "MODEL_RULES")
            for fsdp, model in sorted({(1, 1), (devices, 1)}) + [(1, 2)] * tensor:
                rows.append(layout(family, devices, fsdp, model, args.steps))
                print(json.dumps(rows[-1]), flush=True)
    data = {"environment": report.environment(), "rows": rows}
    report.write(args.out, f"scaling-{report.device_slug()}", data, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
