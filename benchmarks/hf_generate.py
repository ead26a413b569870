"""Greedy generation from a Hugging Face GPT-2, transformers against genjax on the same weights (issue 16).

A random-init `GPT2LMHeadModel(GPT2Config())` (124M, torch seed 0) is saved with transformers'
save_pretrained and imported with `genjax.models.hf.load_pretrained`, so both run the same float32
weights. From a fixed prompt (32 token ids per row, numpy seed 0) each generates --tokens new tokens
greedily at each --batches size, in one process: transformers' `generate(do_sample=False,
max_new_tokens=N, min_new_tokens=N)` against genjax's `transformer.generate(..., greedy=True)` in float32
and with the params cast to bfloat16 (cfg.dtype bfloat16). genjax compiles once per batch size and dtype
in a warm-up call that is not timed; transformers gets a short warm-up call too. Tokens/s = batch x N /
wall seconds of one generate call (the prompt's prefill included, for both).

    python -m benchmarks.hf_generate                 # GPT-2 124M, 256 tokens, batches 1,8, 2 threads
    python -m benchmarks.hf_generate --size tiny     # 2 layers, 64 dims, 32 tokens: a smoke run

The GPT-2 run took 18 minutes on the shared 2-core VM at load average 6 (transformers at 2 threads, slowed
most by the load, 7.5 of them); the tiny one about a minute there, mostly imports and compiles.

Threads (--threads N), set before jax or torch is imported: the process is pinned to its first N cores
(os.sched_setaffinity; XLA:CPU sizes its thread pool from the affinity mask, and nothing changes when N is
every core), OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS are N, and at N = 1 XLA_FLAGS gets
the usual `--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1` (XLA has no flag for another
count); torch.set_num_threads(N).

Measured in the same run besides: the read bandwidth (numpy float32 sums over a 512 MiB array: one thread,
and N threads each summing a slice) and from it the batch-1 bound, bandwidth / the weight bytes one token
reads (every parameter once, one row of the position table); the max logits error on the prompt (genjax
float32 vs transformers, bfloat16 vs float32); how many greedy tokens genjax and transformers share (float
ties may make them diverge late: counted, never failed); and (default for gpt2, --profile) the pieces of a
genjax decode step. Results: results/hf_generate-cpu<N>.{json,md} (tiny: hf_generate-tiny-cpu<N>).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks import report  # argparse, json, platform only: safe before the thread settings

PROMPT_LEN = 32
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # jax.monitoring's event of an XLA compile
BANDWIDTH_MIB = 512
# Issue 16's goals: (label, batch, genjax row, minimum tokens/s ratio to transformers float32).
GOALS = (("batch 1, float32", 1, "genjax f32", 1.5), ("batch 1, bfloat16 weights", 1, "genjax bf16", 3.0),
         ("batch 8, float32", 8, "genjax f32", 3.0))


def set_threads(threads: int) -> dict:
    """Pins this process to its first `threads` cores and sets the thread variables, if jax and torch are
    not imported yet (in a test process only torch's count, set later, still applies)."""
    cores = sorted(os.sched_getaffinity(0))
    if threads > len(cores):
        raise SystemExit(f"--threads {threads}: this process may run on {len(cores)} cores only")
    early = "jax" not in sys.modules and "torch" not in sys.modules
    if early:
        if threads < len(cores):
            os.sched_setaffinity(0, cores[:threads])
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(threads)
        if threads == 1:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                       " intra_op_parallelism_threads=1").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return {"threads": threads, "cores": sorted(os.sched_getaffinity(0)), "set_before_import": early,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def import_transformers():
    """transformers' model modules import torchvision when it is installed, and a torchvision wheel built
    for another torch (as on the dev VM) fails that import; GPT-2 needs none of it: hidden then."""
    if "transformers" not in sys.modules and "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:
            sys.modules["torchvision"] = None
    import transformers

    return transformers


def progress(what: str) -> None:
    print(f"[hf_generate {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def read_bandwidth(threads: int, mib: int = BANDWIDTH_MIB, repeats: int = 5) -> dict:
    """GB/s of numpy float32 sums over a `mib` MiB array, best of `repeats`: on one thread, and on
    `threads` threads each summing a slice (numpy releases the GIL inside the reduction)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    x = np.ones(mib * 2**20 // 4, np.float32)
    parts = np.array_split(x, threads)

    def best(fn):
        fn()
        return x.nbytes / min(seconds(fn) for _ in range(repeats)) / 1e9

    with ThreadPoolExecutor(threads) as pool:
        out = {"array_mib": mib, "one_thread_gbs": best(lambda: float(x.sum())),
               "threads_gbs": best(lambda: sum(pool.map(lambda p: float(p.sum()), parts)))}
    return {**out, "used_gbs": max(out["one_thread_gbs"], out["threads_gbs"])}


def weight_bytes(params, cfg, itemsize: int) -> int:
    """Weight bytes one decode token reads at batch 1: every parameter once (a tied embedding as the LM
    head), one row of the position table."""
    import math

    import jax

    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    if "wpe" in params:
        n -= math.prod(params["wpe"].shape) - cfg.d_model
    return n * itemsize


def matching(a, b) -> dict:
    """Two implementations' greedy tokens (B, N): per row the tokens before their first difference, summed."""
    import numpy as np

    same = np.asarray(a) == np.asarray(b)
    prefix = [int(np.argmin(r)) if not r.all() else len(r) for r in same]
    return {"prefix_match": sum(prefix), "equal_positions": int(same.sum()), "total": int(same.size),
            "first_divergence": min((p for p in prefix if p < same.shape[1]), default=None)}


# ----------------------------------------------------------------------------- the measurement


def measure(size: str, tokens: int, batches: list[int], threads: int, reps: int, profile: bool) -> dict:
    import dataclasses
    import tempfile

    import jax
    import jax.numpy as jnp
    import numpy as np

    transformers = import_transformers()
    import torch

    from genjax.models import hf, transformer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    progress("measuring the read bandwidth")
    out: dict = {"bandwidth": read_bandwidth(threads)}
    config = transformers.GPT2Config(**({"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128}
                                        if size == "tiny" else {}))
    model = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        params, cfg, _ = hf.load_pretrained(tmp)
    if PROMPT_LEN + tokens > cfg.block_size:
        raise SystemExit(f"--tokens {tokens}: {PROMPT_LEN} prompt + new tokens exceed the context "
                         f"{cfg.block_size}")
    cfg16 = dataclasses.replace(cfg, dtype="bfloat16")
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (max(batches), PROMPT_LEN), dtype=np.int32)
    eos = model.generation_config.eos_token_id
    out["model"] = {
        "size": size, "params": sum(x.size for x in jax.tree.leaves(params)), "n_layer": cfg.n_layer,
        "d_model": cfg.d_model, "vocab_size": cfg.vocab_size, "block_size": cfg.block_size,
        "prompt_len": PROMPT_LEN, "new_tokens": tokens, "weight_bytes_f32": weight_bytes(params, cfg, 4),
        "weight_bytes_bf16": weight_bytes(params, cfg, 2), "eos_token_id": eos,
        "attn_implementation": model.config._attn_implementation,
        "genjax_kv_cache_bytes_f32_per_row": 2 * cfg.n_layer * cfg.block_size * cfg.d_model * 4}
    progress(f"{out['bandwidth']['used_gbs']:.1f} GB/s read; the model is in genjax; logits on the prompt")

    ids = prompts[:1]
    with torch.inference_mode():
        ref_logits = model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    forward = jax.jit(transformer.forward, static_argnames="cfg")
    f32, b16 = np.asarray(forward(params, ids, cfg=cfg)), np.asarray(forward(params16, ids, cfg=cfg16))
    out["logits"] = {"max_abs_logit": float(np.abs(f32).max()),
                     "max_err_genjax_f32_vs_transformers": float(np.abs(f32 - ref_logits).max()),
                     "max_err_bf16_vs_f32": float(np.abs(b16 - f32).max()),
                     "argmax_agree_bf16_vs_f32": int((b16.argmax(-1) == f32.argmax(-1)).sum()),
                     "positions": PROMPT_LEN}

    def hf_run(batch):
        x = torch.as_tensor(prompts[:batch], dtype=torch.long)

        def run(n):
            with torch.inference_mode():
                y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                   min_new_tokens=n, pad_token_id=eos)
            return y[:, PROMPT_LEN:].numpy()
        return run

    def genjax_run(p, c, batch):
        def run(n):
            toks, _ = transformer.generate(p, jax.random.key(0), prompts[:batch], None, n, c, greedy=True)
            return np.asarray(toks.block_until_ready())
        return run

    compiles: list[float] = []

    def listener(event, secs, **_):
        if event == BACKEND_COMPILE:
            compiles.append(secs)

    jax.monitoring.register_event_duration_secs_listener(listener)

    def timed(run):
        """(tokens, seconds) of run(tokens); run again if it spent over 2% of its time compiling (generate
        itself, not the small ops around it)."""
        for _ in range(2):
            compiles.clear()
            start = time.perf_counter()
            toks = run(tokens)
            elapsed = time.perf_counter() - start
            if sum(compiles) < 0.02 * elapsed:
                break
        return toks, elapsed

    rows, generated = [], {}
    try:
        for batch in batches:
            runners = {"transformers f32": hf_run(batch), "genjax f32": genjax_run(params, cfg, batch),
                       "genjax bf16": genjax_run(params16, cfg16, batch)}
            # Warm-up: genjax compiles (tokens // 2 + 1 new tokens: the same compiled output width when
            # `tokens` is a power of two; else the timed call compiles, which `timed` notices and repeats).
            progress(f"batch {batch}: warm-up calls (genjax compiles)")
            warmup = {name: seconds(lambda: run(tokens // 2 + 1 if name.startswith("genjax") else 4))
                      for name, run in runners.items()}
            progress(f"batch {batch}: timed calls")
            times = {name: [] for name in runners}
            for _ in range(reps):  # repetitions interleaved: background load hits all alike
                for name, run in runners.items():
                    generated[(name, batch)], elapsed = timed(run)
                    times[name].append(elapsed)
            for name in runners:
                s = float(np.median(times[name]))
                rows.append({"batch": batch, "name": name, "seconds": s, "seconds_all": times[name],
                             "tokens_per_s": batch * tokens / s, "ms_per_step": 1e3 * s / tokens,
                             "warmup_s": warmup[name]})
            reference = rows[-len(runners)]["tokens_per_s"]
            for r in rows[-len(runners):]:
                r["vs_transformers"] = r["tokens_per_s"] / reference
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    out["rows"] = rows
    out["match"] = {str(b): {name: matching(generated[(name, b)], generated[("transformers f32", b)])
                             for name in ("genjax f32", "genjax bf16")}
                    | {"genjax_drew_eos": int((generated[("genjax f32", b)] == eos).sum())} for b in batches}
    bandwidth = out["bandwidth"]["used_gbs"] * 1e9
    out["bound"] = {"f32_tokens_per_s": bandwidth / out["model"]["weight_bytes_f32"],
                    "bf16_tokens_per_s": bandwidth / out["model"]["weight_bytes_bf16"]}
    out["goals"] = [{"goal": label, "batch": batch, "name": name, "target": target,
                     "ratio": r["vs_transformers"], "met": r["vs_transformers"] >= target}
                    for label, batch, name, target in GOALS
                    for r in rows if r["batch"] == batch and r["name"] == name]
    if profile:
        out["profile"] = decode_profile(params, cfg, params16, cfg16, model, torch, sorted({1, max(batches)}),
                                        PROMPT_LEN + tokens // 2, rows)
    return out


def decode_profile(params, cfg, params16, cfg16, model, torch, batches, index, rows) -> list[dict]:
    """The pieces of one genjax decode step at cache index `index` (mid-generation), per batch (float32;
    also bfloat16 at batch 1), in milliseconds (median of 7 jitted calls, the cache donated and fed back as
    generate's loop does): the body (every layer on one token per row, cache update and attention
    included) over the block_size cache and over a 64-position one; the LM head as generate's loop runs it
    (one dot with the vocabulary-padded transposed embedding, a copy generate makes once per call:
    'head_copy_ms'); and the ops in the compiled body that rewrite a whole layer's K or V cache in another
    layout. Also
    transformers' model call on one new token with its cache (the whole step, without generate's loop)."""
    import dataclasses
    import re
    import statistics

    import jax
    import jax.numpy as jnp

    from genjax.models import transformer

    def ms(fn, *args):
        jax.block_until_ready(fn(*args))
        return 1e3 * statistics.median(seconds(lambda: jax.block_until_ready(fn(*args))) for _ in range(7))

    def body(p, c, batch, at):
        """(ms, cache copies) of the body over c.block_size cached positions."""
        def step(p, cache, tok, i, start):
            positions = (i - start)[:, None]
            return transformer.GPT(c).apply({"params": p}, tok[:, None], positions, cache, i, start)

        fn, held = jax.jit(step, donate_argnums=1), {"cache": transformer.init_cache(c, batch)}
        args = (jnp.zeros((batch,), jnp.int32), jnp.asarray(at, jnp.int32), jnp.zeros((batch,), jnp.int32))
        layer = (batch, c.kv_heads, c.block_size, c.d_model // c.n_head)  # one layer's K (or V) cache
        copies = 0
        text = fn.lower(p, held["cache"], *args).compile().as_text()
        entry = text[text.index("\nENTRY"):]
        entry = entry[:entry.find("\n}")]  # the top-level ops, not the insides of fusions
        for dims in re.findall(r"= \w+\[([\d,]+)\]\S* (?:fusion|copy|transpose)\(", entry):
            dims = [int(d) for d in dims.split(",")]
            big = [d for d in dims if d > 1]
            if sorted(big) == sorted(d for d in layer if d > 1) and big != [d for d in layer if d > 1]:
                copies += 1  # the cache's elements in another order: a transposed copy

        def call():
            h, held["cache"] = fn(p, held["cache"], *args)
            return h

        return ms(call), copies

    out = []
    for batch in batches:
        for label, p, c in (("f32", params, cfg), ("bf16", params16, cfg16))[:2 if batch == 1 else 1]:
            progress(f"profile: batch {batch}, {label}")
            small = dataclasses.replace(c, block_size=64)
            head_w = lambda p, c=c: jnp.pad(  # noqa: E731  (GPT.logits' padded head, hoisted out of the loop)
                p["wte"].T if c.tie_embeddings else p["lm_head"],
                ((0, 0), (0, c.padded_vocab - c.vocab_size)))
            w, h = jax.jit(head_w)(p), jnp.zeros((batch, c.d_model), c.compute_dtype)
            head = jax.jit(lambda w, h, c=c: jnp.dot(h, w.astype(c.compute_dtype),
                                                     preferred_element_type=jnp.float32))
            full, copies = body(p, c, batch, index)
            row = {"batch": batch, "dtype": label, "body_ms": full, "cache_copies": copies,
                   "cache_copy_bytes": copies * batch * c.block_size * c.d_model * w.dtype.itemsize,
                   "body_window64_ms": body({**p, "wpe": p["wpe"][:64]}, small, batch, 32)[0],
                   "head_ms": ms(head, w, h), "head_copy_ms": ms(jax.jit(head_w), p),
                   # the compiled head converts the whole weight matrix to float32 before its dot
                   "head_converts_weights": w.dtype != jnp.float32 and bool(re.search(
                       rf"f32\[{w.shape[0]},{w.shape[1]}\]\S* convert\(",
                       head.lower(w, h).compile().as_text()))}
            gen = next(r for r in rows if r["batch"] == batch and r["name"] == f"genjax {label}")
            out.append({**row, "generate_ms_per_step": gen["ms_per_step"],
                        "rest_ms": gen["ms_per_step"] - full - row["head_ms"]})
        x, nxt = torch.zeros((batch, index), dtype=torch.long), torch.zeros((batch, 1), dtype=torch.long)
        mask = torch.ones((batch, index + 1), dtype=torch.long)
        with torch.inference_mode():
            cache = model(x, use_cache=True).cache

            def one():
                model(nxt, cache=cache, attention_mask=mask, use_cache=True)
                cache.crop(-1)  # back to `index` cached positions

            one()
            step_ms = 1e3 * statistics.median(seconds(one) for _ in range(7))
        gen = next(r for r in rows if r["batch"] == batch and r["name"] == "transformers f32")
        out.append({"batch": batch, "dtype": "torch f32", "body_ms": step_ms,
                    "generate_ms_per_step": gen["ms_per_step"], "rest_ms": gen["ms_per_step"] - step_ms})
    return out


# ----------------------------------------------------------------------------- the report


def loaded(data: dict) -> bool:
    """More runnable processes than the run's threads when it started: torch's threads then wait."""
    return data["load_avg_start"] > data["threading"]["threads"]


def findings(data: dict) -> list[str]:
    """What the numbers say, as markdown bullets."""
    rows = {(r["batch"], r["name"]): r for r in data["rows"]}
    prof = {(p["batch"], p["dtype"]): p for p in data.get("profile", [])}
    bound = {k: 1e3 / data["bound"][f"{k}_tokens_per_s"] for k in ("f32", "bf16")}  # ms per batch-1 token
    threads, out = data["threading"]["threads"], []
    if loaded(data):
        out.append(
            f"- **A loaded machine**: load average {data['load_avg_start']:.1f} at the start on {threads} "
            f"cores. torch's {threads}-thread runs suffer most (at every op its threads wait for peers that "
            "are descheduled), so transformers' tokens/s here, and every ratio to it, flatter genjax. Rerun "
            "on an idle machine before quoting a ratio.")
    t1, g1, b1 = (rows.get((1, name)) for name in ("transformers f32", "genjax f32", "genjax bf16"))
    if t1 and g1 and b1:
        out.append(
            f"- Batch 1 is bound by reading the weights: {bound['f32']:.1f} ms per token in float32 at the "
            f"measured bandwidth ({bound['bf16']:.1f} ms in bfloat16). transformers takes "
            f"{t1['ms_per_step']:.1f} ms per token ({bound['f32'] / t1['ms_per_step']:.0%} of the bound's "
            f"speed), genjax float32 {g1['ms_per_step']:.1f} ms ({bound['f32'] / g1['ms_per_step']:.0%}), "
            f"genjax bfloat16 {b1['ms_per_step']:.1f} ms ({bound['bf16'] / b1['ms_per_step']:.0%} of its "
            f"bound). Even at the bound genjax meets both batch-1 goals only while transformers runs at most "
            f"{1 / 1.5:.0%} of the float32 bound's speed (1.5x in float32; 3x with bfloat16 weights at their "
            "bound, half the bytes).")
    for (batch, dtype), p in sorted(prof.items(), key=lambda kv: (kv[0][0], kv[0][1] != "f32")):
        if dtype == "torch f32":
            continue
        gen, attn = p["generate_ms_per_step"], p["body_ms"] - p["body_window64_ms"]
        out.append(
            f"- genjax {dtype}, batch {batch}: the layers take {p['body_ms']:.1f} ms per step over the "
            f"{data['model']['block_size']}-position cache and {attn:.1f} ms less over a 64-position one "
            f"({attn / p['body_ms']:.0%} of them): the decode attends over every preallocated position, and "
            f"the compiled step writes {p['cache_copies']} transposed copies of a layer's whole K or V cache "
            f"({p['cache_copy_bytes'] / 1e6:,.0f} MB per step, read again by the attention dots). The LM "
            f"head: {p['head_ms']:.1f} ms; generate: {gen:.1f} ms per step.")
    f32, b16 = prof.get((1, "f32")), prof.get((1, "bf16"))
    if f32 and b16 and g1 and b1:
        out.append(
            f"- bfloat16 weights: genjax decodes at {g1['ms_per_step'] / b1['ms_per_step']:.2f}x its float32 "
            f"speed, not 2x. A standalone bfloat16 dot at batch 1 takes {b16['head_ms']:.1f} ms for the LM "
            f"head against {f32['head_ms']:.1f} ms in float32"
            + (": XLA:CPU converts the whole bfloat16 weight matrix to float32 before the dot (a `convert` "
               "in the compiled head). Inside generate's loop XLA hoists those converts out (the weights are "
               "loop-invariant; seen in the compiled generate, jax 0.10.2), so the decode reads float32 "
               "copies: float32's bytes per token, plus the conversion at each call."
               if b16.get("head_converts_weights") else "."))
    if f32:
        out.append(f"- generate makes a vocabulary-padded transposed copy of the tied embedding once per "
                   f"call (hoisted out of the decode loop): {f32['head_copy_ms']:.0f} ms, "
                   f"{f32['head_copy_ms'] / f32['generate_ms_per_step']:.1f} tokens' worth at batch 1.")
    t8, g8 = rows.get((8, "transformers f32")), rows.get((8, "genjax f32"))
    if t8 and g8:
        out.append(f"- Batch 8: transformers {t8['ms_per_step']:.1f} ms per step (8 tokens), genjax float32 "
                   f"{g8['ms_per_step']:.1f} ms ({g8['vs_transformers']:.2f}x; goal 3x). genjax's KV cache "
                   f"is {8 * data['model']['genjax_kv_cache_bytes_f32_per_row'] / 1e6:,.0f} MB, read in place at "
                   "every step, against "
                   f"{data['model']['weight_bytes_f32'] / 1e6:,.0f} MB of weights.")
    return out


def markdown(data: dict) -> str:
    m, bw, lg, bound, t = data["model"], data["bandwidth"], data["logits"], data["bound"], data["threading"]
    fmt = report.fmt
    title = "GPT-2 124M (random init)" if m["size"] == "gpt2" else "tiny GPT-2 (2 layers, 64 dims)"
    table = report.table(data["rows"], {
        "batch": "{batch}", "implementation": "{name}", "s / call": lambda r: f"{r['seconds']:.2f}",
        "ms / step": lambda r: f"{r['ms_per_step']:.1f}", "tokens/s": lambda r: fmt(r["tokens_per_s"]),
        "vs transformers": lambda r: f"{r['vs_transformers']:.2f}x",
        "warm-up s": lambda r: f"{r['warmup_s']:.1f}"})
    goals = report.table(data["goals"], {
        "goal (issue 16)": "{goal}", "target": lambda g: f">= {g['target']:g}x",
        "measured": lambda g: f"{g['ratio']:.2f}x", "met": lambda g: "yes" if g["met"] else "**no**"})
    lines = [
        f"# Greedy generation, transformers vs genjax: {title}", "",
        f"{data['hardware']} (/proc/cpuinfo); {t['threads']} thread(s) (cores {t['cores']}); jax "
        f"{data['versions'].get('jax')}, torch {data['versions'].get('torch')}, transformers "
        f"{data['transformers']}; {data['date']}. "
        f"`python -m benchmarks.hf_generate {data['argv']}`.", "",
        f"{m['params']:,} parameters, the same float32 weights in both (transformers' save_pretrained, then "
        f"genjax.models.hf.load_pretrained). A {m['prompt_len']}-token prompt per row, {m['new_tokens']} new "
        "tokens, greedy. Tokens/s = batch x new tokens / wall time of one generate call (prefill included), "
        f"median of {data['reps']} timed call(s) after a warm-up call (genjax's compiles). transformers: "
        f"`generate` with its dynamic KV cache and `{m['attn_implementation']}` attention; genjax: "
        "`transformer.generate` in float32, and with the params cast to bfloat16 (cfg.dtype bfloat16).", "",
        *table, "",
        f"**Memory-bandwidth bound at batch 1**: {fmt(bw['used_gbs'])} GB/s read (numpy float32 sum over "
        f"{bw['array_mib']} MiB: {fmt(bw['one_thread_gbs'])} GB/s on one thread, "
        f"{fmt(bw['threads_gbs'])} GB/s on {t['threads']}) / {m['weight_bytes_f32'] / 1e6:,.0f} MB of "
        f"float32 weights per token = **{fmt(bound['f32_tokens_per_s'])} tokens/s**; with bfloat16 weights "
        f"({m['weight_bytes_bf16'] / 1e6:,.0f} MB) **{fmt(bound['bf16_tokens_per_s'])} tokens/s**. A genjax "
        f"decode step also reads its whole {m['block_size']}-position KV cache in place, masked "
        f"({m['genjax_kv_cache_bytes_f32_per_row'] / 1e6:,.0f} MB per row in float32); transformers reads the "
        "filled positions only.", "",
        *goals, "",
        *([f"**Load average {data['load_avg_start']:.1f} on {t['threads']} cores at the start**: torch's "
           f"{t['threads']}-thread runs are slowed most, so these ratios flatter genjax (see the "
           "findings).", ""]
          if loaded(data) else []),
        "## Same tokens, same logits", ""]
    for b, mt in data["match"].items():
        f, h = mt["genjax f32"], mt["genjax bf16"]
        where = ("identical" if f["first_divergence"] is None
                 else f"first divergence at new token {f['first_divergence']}")
        lines.append(f"- batch {b}: genjax float32 matches transformers on {f['prefix_match']}/{f['total']} "
                     f"tokens before each row's first difference ({where}; {f['equal_positions']} equal "
                     f"positions); genjax bfloat16 on {h['prefix_match']}/{h['total']}."
                     + (f" genjax drew the EOS token {mt['genjax_drew_eos']} time(s), which transformers' "
                        "min_new_tokens forbids." if mt["genjax_drew_eos"] else ""))
    lines += [
        f"- logits on the prompt (batch 1): genjax float32 vs transformers max |error| "
        f"{lg['max_err_genjax_f32_vs_transformers']:.1e}; bfloat16 vs float32 "
        f"{lg['max_err_bf16_vs_f32']:.1e} "
        f"(logits up to {lg['max_abs_logit']:.2f}; the same argmax at {lg['argmax_agree_bf16_vs_f32']}/"
        f"{lg['positions']} positions).", "",
        "A random-init model's greedy choice is often between nearly equal logits, so float rounding "
        "(another summation order) can flip one argmax and a row diverges from there: counted, not a "
        "failure.", ""]
    if data.get("profile"):
        lines += ["## Where a genjax decode step goes", "", *report.table(data["profile"], {
            "batch": "{batch}", "weights": "{dtype}", "layers ms": lambda r: f"{r['body_ms']:.1f}",
            "layers ms, 64-position cache": lambda r: fmt(r.get("body_window64_ms")),
            "LM head ms": lambda r: fmt(r.get("head_ms")),
            "generate ms / step": lambda r: f"{r['generate_ms_per_step']:.1f}",
            "transposed cache copies / step": lambda r: fmt(r.get("cache_copies")),
            "head copy ms / call": lambda r: fmt(r.get("head_copy_ms"))}), "",
            f"Jitted pieces of one decode step at cache index {m['prompt_len'] + m['new_tokens'] // 2}, "
            "median of 7, the cache donated as in generate's loop. Layers: every block on one token per "
            "row, cache update and attention included; LM head: the dot generate's loop runs, on a "
            "vocabulary-padded transposed copy of the embedding that generate makes once per call outside "
            "the loop ('head copy'); transposed cache copies: ops of the compiled step that rewrite a "
            "layer's whole K or V cache in another layout. 'torch f32': transformers' model call on one "
            "token with its cache (the whole step, head included). A standalone call pays a dispatch and "
            "thread wake-ups that generate's loop does not (and with bfloat16 weights their conversion to "
            "float32, which the loop hoists), so the pieces can sum above generate's step: compare within a "
            "column.", ""]
    lines += ["## Findings", "", *findings(data), ""]
    lines += [f"Load average: {data['load_avg_start']:.2f} at the start, {data['load_avg_end']:.2f} at "
              "the end (a shared VM: other processes' load slows both, and torch's threads more).", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = report.parser("benchmarks.hf_generate", __doc__)
    p.add_argument("--size", choices=("gpt2", "tiny"), default="gpt2")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per row (default 256; tiny: 32)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=1, help="timed calls per implementation (median)")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="time the pieces of a genjax decode step (default: gpt2 only)")
    args = p.parse_args(argv)
    threading = set_threads(args.threads)
    tokens = args.tokens or (256 if args.size == "gpt2" else 32)
    batches = sorted({int(b) for b in args.batches.split(",")})
    load_start = os.getloadavg()[0]
    profile = args.size == "gpt2" if args.profile is None else args.profile
    data = measure(args.size, tokens, batches, args.threads, args.reps, profile)
    data = {**report.machine(), "threading": threading, "reps": args.reps,
            "transformers": sys.modules["transformers"].__version__,
            "argv": " ".join(sys.argv[1:] if argv is None else argv), "load_avg_start": load_start,
            "load_avg_end": os.getloadavg()[0], **data}
    stem = f"hf_generate-{'tiny-' if args.size == 'tiny' else ''}cpu{args.threads}"
    report.write(args.out, stem, data, markdown(data))
    return data


if __name__ == "__main__":
    main()
