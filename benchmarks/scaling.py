"""Step time of every family under 1, 2, 4 and 8 simulated CPU devices (data parallel and FSDP; the
transformer also with its heads and MLP split over a 2-way `model` axis).

    python -m benchmarks.scaling [--only vae] [--steps 10] [--out benchmarks/results]

On one CPU, simulated devices share the same cores: this measures the sharding machinery's overhead
and checks that every layout compiles and runs, not a speed-up. Each device count runs in its own
subprocess (the device count is fixed when JAX starts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks import harness

WORKER = r"""
import json, statistics, sys, time
import jax, jax.numpy as jnp
from benchmarks import suite
from genjax import parallel
from genjax.loop import compile_step, place_state
family, fsdp, model, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
case = suite.CASES[family]("cpu")
mesh = parallel.make_mesh(fsdp, model=model)
shards = jax.device_count() // model
batch = {k: v[: (len(v) // shards) * shards] for k, v in case.batch.items()}
rules = suite.family(family).MODEL_RULES if model > 1 else None
state, shardings = place_state(case.state, mesh, rules)
step = compile_step(case.step, shardings, mesh)
gbatch = parallel.global_batch(batch, mesh)
t0 = time.perf_counter()
state, m = step(state, gbatch)
jax.block_until_ready(m)
compile_s = time.perf_counter() - t0
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    state, m = step(state, gbatch)
    jax.block_until_ready(m)  # also keeps simulated-device collectives from piling up
    times.append(time.perf_counter() - t0)
print(json.dumps({"family": family, "devices": jax.device_count(), "fsdp": fsdp, "model": model,
                  "step_s_median": statistics.median(times), "compile_s": compile_s}))
"""


def run(family: str, devices: int, fsdp: int, model: int, steps: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    out = subprocess.run([sys.executable, "-c", WORKER, family, str(fsdp), str(model), str(steps)],
                         env=env,
                         capture_output=True, text=True, timeout=900,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode:
        return {"family": family, "devices": devices, "fsdp": fsdp, "model": model, "error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def layout(row: dict) -> str:
    """'data 2 x fsdp 2 x model 2', leaving out axes of size 1."""
    fsdp, model = row["fsdp"], row.get("model", 1)
    sizes = {"data": row["devices"] // (fsdp * model), "fsdp": fsdp, "model": model}
    return " x ".join(f"{k} {v}" for k, v in sizes.items() if v > 1) or "1 device"


def table(rows: list[dict]) -> list[str]:
    lines = ["| family | devices | layout | step ms | compile s |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['devices']} | {layout(r)} | "
                     + (f"{r['step_s_median'] * 1e3:.2f} | {r['compile_s']:.1f} |" if "error" not in r
                        else "error | - |"))
    return lines + ["", "Simulated devices share this machine's cores: the rows measure each layout's "
                    "overhead and check that it compiles and runs, not a speed-up."]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", help="families (default: all)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    families = args.only or ["vae", "gan", "diffusion", "transformer"]
    rows = []
    for family in families:
        for devices in (1, 2, 4, 8):
            layouts = [(fsdp, 1) for fsdp in sorted({1, devices})]
            if family == "transformer" and devices > 1:
                layouts.append((1, 2))
            for fsdp, model in layouts:
                row = run(family, devices, fsdp, model, args.steps)
                rows.append(row)
                print(json.dumps(row), flush=True)
    lines = table(rows)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"scaling-{harness.device_slug()}")
    with open(stem + ".json", "w") as f:
        json.dump({"environment": harness.environment(), "rows": rows}, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
