"""The one report writer of benchmarks/: command lines, the machine, markdown tables, and
`<stem>.json` + `<stem>.md`."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from typing import Callable, Iterable

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parser(module: str, doc: str, out: str | None = RESULTS, quick: str = "", worker: bool = False):
    """`python -m <module>`'s options: --out (unless None), --quick where `quick` says what it does, and a
    hidden --worker for the benchmarks that run in workers (timing.worker)."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if out:
        p.add_argument("--out", default=out, help="where the results go")
    if quick:
        p.add_argument("--quick", action="store_true", help=quick)
    if worker:
        p.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    return p


def versions(modules=("jax", "jaxlib", "flax", "optax", "torch")) -> dict:
    def version(name):
        try:
            return __import__(name).__version__
        except ImportError:
            return None

    return {name: version(name) for name in modules}


def machine() -> dict:
    """The header of a side-by-side report (bench_gpt, bench_unet): the CPU and the libraries."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    return {"hardware": f"{cpu}, {len(os.sched_getaffinity(0))} cores", "versions": versions(),
            "date": datetime.date.today().isoformat(), "python": platform.python_version()}


def environment() -> dict:
    """The header of a JAX-only report (the suite, scaling): the devices and the libraries."""
    import jax

    return {"date": datetime.date.today().isoformat(), "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            **versions(("jax", "flax", "optax")), "python": platform.python_version()}


def device_slug() -> str:
    """'cpu2' (a CPU backend on 2 cores) or the accelerator's kind, e.g. 'nvidia-h200': result file stems."""
    import jax

    kind = jax.devices()[0].device_kind if jax.default_backend() != "cpu" else f"cpu{os.cpu_count()}"
    return "".join(c if c.isalnum() else "-" for c in kind).strip("-").lower()


def fmt(v, digits: int = 3) -> str:
    """3 significant digits, or thousands separated from 100 to 1e5; '-' for a missing value."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 100 or abs(v) >= 1e5 else f"{v:,.0f}"
    return str(v)


def table(rows: Iterable[dict], columns: dict[str, str | Callable]) -> list[str]:
    """A markdown table: each column a format string over a row's fields, or a function of the row."""
    cell = lambda c, r: c(r) if callable(c) else c.format(**r)  # noqa: E731
    return (["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
            + ["| " + " | ".join(cell(c, r) for c in columns.values()) + " |" for r in rows])


def train_rows(runs: list[dict], reference: str, unit: str) -> list[dict]:
    """The train rows of pinned runs (bench_gpt, bench_unet), with the speed ratio to `reference`."""
    return [{**t, "threads": r["threads"], "name": name,
             "ratio": f"{t[f'{unit}_per_s'] / r['train'][reference][f'{unit}_per_s']:.2f}x"}
            for r in runs for name, t in r["train"].items()]


def load_line(runs: list[dict]) -> str:
    return "Load average at the start of each child: " + ", ".join(
        f"{r['threads']} thread(s): {r['load_avg_start']:.2f}" for r in runs)


def write(out_dir: str, stem: str, data: dict | None, markdown: str, sort_keys: bool = False,
          json_text: str | None = None) -> str:
    """Writes out_dir/stem.json (`data`, or `json_text` as given; none without either) and out_dir/stem.md,
    prints the markdown; returns out_dir/stem."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    if data is not None or json_text:
        with open(base + ".json", "w") as f:
            f.write(json_text or json.dumps(data, indent=2, sort_keys=sort_keys, default=float))
    with open(base + ".md", "w") as f:
        f.write(markdown)
    print(markdown)
    return base
