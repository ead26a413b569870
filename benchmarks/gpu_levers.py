"""GPT-2 124M's train step over the known speed levers on one GPU, one row per lever combination, plus the
CIFAR-10 U-Net's step (bf16, batch 128) and GPT-2's KV-cache decode at batch 1. What `bash
benchmarks/gpu.sh` runs; writes <out>/gpu-levers-<device>-<date>.{json,md}.

Every row runs in its own subprocess (its XLA_FLAGS set there) under a timeout, so a failure (cuDNN
missing, out of memory, an XLA flag this jaxlib lacks) is a row with its error; rows past the overall
deadline are skipped and the report is still written (after every row, too). Each row first runs
CHECK_STEPS identical steps from identical weights and data and records their losses: a lever must leave
the loss of the reference row (the first row of its family and batch that ran) unchanged, to float
tolerance (bf16 rows: to bf16 tolerance). Decode rows check the teacher-forced loss of their greedy tokens.

Throughput: median of repetitions of `steps` back-to-back steps. MFU: the model's useful FLOPs (GPT:
6N + attention at the unpadded vocabulary, whatever remat recomputes; U-Net: XLA's count of the
unoptimized step) against the device table's bf16 peak (H200: 989 TFLOP/s) and against a bf16 matmul
measured in the same run. Parameters are always float32 (bf16 rows cast at each matmul).

    bash benchmarks/gpu.sh                       # one H200, under 8 minutes
    bash benchmarks/gpu.sh --tiny --out /tmp/x   # the same code paths, tiny models, on CPU (GPU-only rows skipped)
    python -m benchmarks.gpu_levers --tiny --only bf16   # rows whose name contains 'bf16'
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from benchmarks import report, timing

LHS = "--xla_gpu_enable_latency_hiding_scheduler=true"
NO_CMDBUF = "--xla_gpu_enable_command_buffer="  # an empty list: no CUDA graphs
GPT = dict(dtype="bfloat16", batch=16, attention="einsum", scan_layers=True, pad_vocab_to=64, remat=False)
# (name, overrides of the family's base row, XLA flags). Priority order: the deadline cuts from the end.
ROWS = [
    ("peak matmul", dict(family="peak"), ""),
    ("gpt2 f32", dict(dtype="float32"), ""),
    ("gpt2 bf16", {}, ""),
    ("bf16 vocab unpadded", dict(pad_vocab_to=1), ""),
    ("bf16 cudnn", dict(attention="cudnn"), ""),
    ("bf16 unrolled", dict(scan_layers=False), ""),
    ("bf16 remat", dict(remat=True), ""),
    ("bf16 latency-hiding", {}, LHS),
    ("bf16 no command buffers", {}, NO_CMDBUF),
    ("unet cifar10 bf16", dict(family="unet"), ""),
    ("decode bf16", dict(family="decode"), ""),
    ("bf16 cudnn unrolled", dict(attention="cudnn", scan_layers=False), ""),
    ("bf16 cudnn unrolled latency-hiding", dict(attention="cudnn", scan_layers=False), LHS),
    ("b32 bf16", dict(batch=32), ""),
    ("b32 bf16 accum 2", dict(batch=32, grad_accum=2), ""),
    ("b32 bf16 cudnn unrolled", dict(batch=32, attention="cudnn", scan_layers=False), ""),
    ("b32 bf16 cudnn unrolled remat", dict(batch=32, attention="cudnn", scan_layers=False, remat=True), ""),
    ("decode bf16 unrolled", dict(family="decode", scan_layers=False), ""),
    ("unet cifar10 f32", dict(family="unet", dtype="float32"), ""),
]
BASE = {"peak": {}, "gpt": GPT, "unet": dict(dtype="bfloat16", batch=128),
        "decode": dict(dtype="bfloat16", batch=1, scan_layers=True)}
TIMEOUT = {"peak": 60, "gpt": 100, "unet": 150, "decode": 90}  # seconds per row on the GPU (tiny: 150)
CHECK_STEPS = 3
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # relative, on the last check loss


def spec(name: str, overrides: dict, flags: str, tiny: bool) -> dict:
    family = overrides.get("family", "gpt")
    return {"name": name, "family": family, "xla_flags": flags, "tiny": tiny,
            **BASE[family], **{k: v for k, v in overrides.items() if k != "family"}}


def gpu_only(row: dict) -> bool:
    return row.get("attention") == "cudnn" or "--xla_gpu" in row["xla_flags"]


# ----------------------------------------------------------------------------- in the worker


def _models(s: dict):
    """(GPT config, U-Net config, decode new tokens, timed steps) at GPU size or tiny."""
    from genjax.models import diffusion, transformer

    gpt, unet = transformer.SIZES["gpt2"], diffusion.SIZES["cifar10"]
    if s["tiny"]:
        gpt = dataclasses.replace(gpt, n_layer=2, n_head=2, d_model=64, block_size=32, vocab_size=101)
        unet = dataclasses.replace(unet, image_shape=(8, 8, 3), channels=8, channel_mults=(1,),
                                   attn_resolutions=(8,), num_res_blocks=1, num_groups=4)
    fields = {f.name for f in dataclasses.fields(gpt)}
    gpt = dataclasses.replace(gpt, **{k: v for k, v in s.items() if k in fields})
    unet = dataclasses.replace(unet, dtype=s["dtype"])
    return gpt, unet, gpt.block_size - 16, 2 if s["tiny"] else 10


def _layout(params: dict, scan: bool, n_layer: int) -> dict:
    """GPT params (initialized scanned) in the row's layer layout: identical weights either way."""
    import jax
    import numpy as np

    if scan:
        return params
    blocks = params["blocks"]["block"]
    layers = {f"layer_{i}": {"block": jax.tree.map(lambda x, i=i: np.asarray(x[i]), blocks)}
              for i in range(n_layer)}
    return {**params, "blocks": layers}


def _gpt_params(cfg):
    import jax

    from genjax.models import transformer

    canonical = dataclasses.replace(cfg, scan_layers=True, remat=False)
    return _layout(transformer.init(jax.random.key(0), canonical), cfg.scan_layers, cfg.n_layer)


def measure(s: dict) -> dict:
    """One row, in this process: what the row measured (items/s, FLOPs, losses, ...)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import cases
    from genjax import train
    from genjax.models import diffusion, transformer

    if s["family"] == "peak":
        n = 256 if s["tiny"] else 8192
        return {"environment": report.environment(), "bfloat16": timing.matmul_peak("bfloat16", n, 7),
                "float32": timing.matmul_peak("float32", n, 7), "table_bfloat16": timing.table_peak("bfloat16")}
    gpt, unet, new_tokens, steps = _models(s)
    if s["family"] == "decode":
        params, prompt = _gpt_params(gpt), np.zeros((s["batch"], 8), np.int32)
        gen = lambda: transformer.generate(params, jax.random.key(1), prompt, None, new_tokens, gpt,  # noqa: E731
                                           greedy=True)[0].block_until_ready()
        out, compile_s = timing.once(gen)
        seq = jnp.concatenate([jnp.asarray(prompt), out], axis=1)
        check = float(transformer.loss(params, {"tokens": seq}, None, gpt)[0])
        call_s = timing.median_time(gen, 3, warmup=0)
        return {"unit": "tokens", "items_per_s": s["batch"] * new_tokens / call_s, "step_ms": 1e3 * call_s,
                "compile_s": compile_s, "losses": [check], "check": check, "flops_per_step": None,
                "setting": f"{new_tokens} new tokens, greedy"}
    family = "transformer" if s["family"] == "gpt" else "diffusion"
    tcfg = dataclasses.replace(cases.CASES[family]["gpu"].train, grad_accum=s.get("grad_accum", 1))
    rng, b = np.random.default_rng(0), s["batch"]
    if s["family"] == "gpt":
        model, unit, items = gpt, "tokens", b * gpt.block_size
        params = _gpt_params(gpt)
        batches = [{"tokens": rng.integers(0, gpt.vocab_size, (b, gpt.block_size + 1), dtype=np.int32)}
                   for _ in range(2)]
        flops = transformer.flops_per_token(dataclasses.replace(gpt, pad_vocab_to=1)) * items
    else:
        model, unit, items = unet, "images", b
        params = diffusion.init(jax.random.key(0), unet)
        batches = [{"image": rng.uniform(size=(b, *unet.image_shape)).astype(np.float32),
                    "label": rng.integers(0, 10, b, dtype=np.int32)} for _ in range(2)]
        flops = timing.flops(*cases.step_flops_args(cases.Case("diffusion", unet, b, tcfg)))
    state = train.init_state(jax.random.split(jax.random.key(0))[1], params, train.make_optimizer(tcfg),
                             ema=tcfg.ema_decay > 0)
    step = jax.jit(cases.train_step(family, model, tcfg), donate_argnums=0)
    batches, held, seen = [jax.device_put(x) for x in batches], {"state": state, "i": 0}, []

    def run(k: int):
        for _ in range(k):
            held["state"], metrics = step(held["state"], batches[held["i"] % len(batches)])
            held["i"] += 1
            seen.append(metrics["loss"])
        jax.block_until_ready(metrics)

    compile_s = timing.once(lambda: run(1))[1]
    run(CHECK_STEPS - 1)
    losses = [float(x) for x in seen]
    times = timing.timed(lambda: run(steps), 3, warmup=0)
    step_s = statistics.median(times) / steps
    memory = (getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}).get("peak_bytes_in_use")
    return {"unit": unit, "items_per_s": items / step_s, "step_ms": 1e3 * step_s, "compile_s": compile_s,
            "flops_per_step": flops, "losses": losses, "check": losses[-1], "peak_memory_gb": memory and memory / 1e9,
            "setting": f"batch {b}" + (f" as {tcfg.grad_accum} x {b // tcfg.grad_accum}" if tcfg.grad_accum > 1
                                       else "") + (f" x {gpt.block_size}" if unit == "tokens" else "")}


# ----------------------------------------------------------------------------- the parent


def run_row(s: dict, timeout: float) -> dict:
    """`measure(s)` in a fresh process with the row's XLA_FLAGS; an error or a timeout becomes the row's
    status instead of an exception."""
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {s['xla_flags']}".strip()}
    cmd = [sys.executable, "-m", "benchmarks.gpu_levers", "--worker", json.dumps(s)]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=timing.ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s", "wall_s": time.monotonic() - start}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()][-1:] or ["no output"]
        return {"status": "error", "error": f"exit {proc.returncode}: {tail[0][:300]}",
                "log_tail": (proc.stdout[-1500:] + proc.stderr[-3000:]), "wall_s": time.monotonic() - start}
    return {"status": "ok", **json.loads(lines[-1][len("RESULT "):]), "wall_s": time.monotonic() - start}


def finish(rows: list[dict], peaks: dict) -> None:
    """MFU columns and each row's loss against its reference (the first row that ran of its family and batch)."""
    refs = {}
    for r in rows:
        if r["status"] != "ok" or r["family"] == "peak" or "step_ms" not in r:
            continue
        step_s = r["step_ms"] / 1e3
        r["tflops"] = r["flops_per_step"] and r["flops_per_step"] / step_s / 1e12
        r["mfu_table"] = timing.mfu(r["flops_per_step"], step_s, peaks.get("table_bfloat16"))
        r["mfu_matmul"] = timing.mfu(r["flops_per_step"], step_s, peaks.get("bfloat16"))
        ref = refs.setdefault((r["family"], r["batch"]), r)
        tol = max(TOLERANCE[r["dtype"]], TOLERANCE[ref["dtype"]])
        r.update(ref=ref["name"], tolerance=tol, check_rel_diff=abs(r["check"] - ref["check"]) / abs(ref["check"]))
        r["check_ok"] = r["check_rel_diff"] <= tol


def markdown(data: dict) -> str:
    env, peaks = data.get("environment") or {}, data["peaks"]
    pct = lambda key: lambda r: f"{100 * r[key]:.1f}%" if r.get(key) else "-"  # noqa: E731
    num = lambda key, scale=1: lambda r: report.fmt(r.get(key) and r[key] * scale)  # noqa: E731
    lines = [f"# GPU levers{' (tiny)' if data['tiny'] else ''}: {env.get('device_kind', '?')} "
             f"({env.get('backend', '?')}), jax {env.get('jax', '?')}, {data['date']}", "",
             f"Peaks: table bf16 {report.fmt(peaks.get('table_bfloat16'))} FLOP/s, measured bf16 matmul "
             f"{report.fmt(peaks.get('bfloat16'))}, f32 matmul {report.fmt(peaks.get('float32'))}. "
             f"Wall {data['wall_s']:.0f} s of a {data['deadline_s']:.0f} s deadline.", ""]
    rows = [r for r in data["rows"] if r["family"] != "peak"]
    lines += report.table(rows, {
        "row": "{name}", "status": lambda r: r["status"] if r["status"] != "error" else f"error: {r['error']}",
        "setting": lambda r: r.get("setting", "-"),
        "XLA flags": lambda r: f"`{r['xla_flags']}`" if r["xla_flags"] else "-",
        "items/s": lambda r: f"{report.fmt(r['items_per_s'])} {r['unit']}/s" if r.get("items_per_s") else "-",
        "ms": num("step_ms"), "compile s": num("compile_s"), "TFLOP/s": num("tflops"),
        "MFU (table)": pct("mfu_table"), "MFU (bf16 matmul)": pct("mfu_matmul"), "mem GB": num("peak_memory_gb"),
        f"loss after {CHECK_STEPS}": lambda r: f"{r['check']:.6g}" if r.get("check") is not None else "-",
        "vs ref": lambda r: (f"{r['check_rel_diff']:.1e} {'ok' if r['check_ok'] else 'MISMATCH'} ({r['ref']})"
                             if "ref" in r else "-")})
    return "\n".join(lines + ["", "- ms: per train step; decode rows: per generate call (batch 1)",
                              "- MFU: useful model FLOPs (GPT: 6N + attention at the unpadded vocabulary, "
                              "no remat recompute; U-Net: XLA's count of the unoptimized step) per second "
                              "over the bf16 peak, whatever the row's dtype",
                              "- vs ref: relative difference of the loss after identical steps from the "
                              "reference row (f32 tolerance 1e-4, bf16 3e-2)"]) + "\n"


def run_rows(rows, tiny: bool, deadline_s: float, out: str | None = None, gpu: bool | None = None,
             jobs: int = 1) -> dict:
    """Every row (name, overrides, flags) within `deadline_s`, `jobs` at a time after the peak row (whose
    backend says whether GPU-only rows run, unless `gpu` is given: the parent never starts a backend);
    writes the report after each row when `out` is given."""
    start, lock = time.monotonic(), threading.Lock()
    results = [{**spec(*row, tiny), "status": "pending"} for row in rows]
    data = {"tiny": tiny, "deadline_s": deadline_s, "date": datetime.date.today().isoformat(), "peaks": {},
            "environment": None, "rows": results, "wall_s": 0.0}

    def one(i: int) -> None:
        nonlocal gpu
        s, left = results[i], deadline_s - (time.monotonic() - start)
        if gpu is False and gpu_only(s):
            outcome = {"status": "skipped: no GPU"}
        elif left < (5 if tiny else 20):
            outcome = {"status": "skipped: deadline"}
        else:
            print(f"gpu_levers: {s['name']} ...", flush=True)
            outcome = run_row(s, min(150 if tiny else TIMEOUT[s["family"]], left))
        with lock:
            if s["family"] == "peak" and outcome["status"] == "ok":
                data["environment"] = outcome.pop("environment")
                data["peaks"] = {k: outcome[k] for k in ("bfloat16", "float32", "table_bfloat16")}
                gpu = data["environment"]["backend"] == "gpu" if gpu is None else gpu
            s.update(outcome)
            finish(results, data["peaks"])
            data["wall_s"] = time.monotonic() - start
            print(f"gpu_levers: {s['name']}: {s['status']} {s.get('error', '')}".rstrip(), flush=True)
            if out:
                write(data, out, quiet=True)

    first = [i for i, s in enumerate(results) if s["family"] == "peak"]
    for i in first:
        one(i)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, [i for i in range(len(results)) if i not in first]))
    return data


def write(data: dict, out: str, quiet: bool = False) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in (data["environment"] or {}).get("device_kind", "unknown"))
    stem = f"gpu-levers-{'tiny-' if data['tiny'] else ''}{slug.strip('-').lower()}-{data['date']}"
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, stem)
    with open(base + ".json", "w") as f:
        json.dump(data, f, indent=2, default=float)
    if quiet:
        with open(base + ".md", "w") as f:
            f.write(markdown(data))
        return base
    return report.write(out, stem, None, markdown(data))


def main(argv=None) -> int:
    p = report.parser("benchmarks.gpu_levers", __doc__, worker=True)
    p.add_argument("--tiny", action="store_true", help="tiny models on CPU, GPU-only rows skipped")
    p.add_argument("--deadline", type=float, default=None, help="seconds for all rows (default 440, tiny 420)")
    p.add_argument("--jobs", type=int, default=None, help="rows at a time (default 1; tiny 2: CPU only)")
    p.add_argument("--only", action="append", help="rows whose name contains this (repeatable; peak always)")
    args = p.parse_args(argv)
    if args.worker:
        timing.result(measure(json.loads(args.worker[0])))
        return 0
    rows = [r for r in ROWS if r[1].get("family") == "peak" or not args.only or any(o in r[0] for o in args.only)]
    data = run_rows(rows, args.tiny, args.deadline or (420 if args.tiny else 440), args.out,
                    jobs=args.jobs or (2 if args.tiny else 1))
    base = write(data, args.out)
    print(f"gpu_levers: wrote {base}.json and {base}.md in {data['wall_s']:.0f} s")
    bad = [r["name"] for r in data["rows"] if r["status"] == "error" or r.get("check_ok") is False]
    return 1 if bad or not data["environment"] else 0


if __name__ == "__main__":
    sys.exit(main())
