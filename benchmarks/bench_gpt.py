"""GPT on CPU, genjax vs a plain PyTorch reference, at 1 and 2 threads, in one run.

    python benchmarks/bench_gpt.py          # ~5 minutes on 2 idle cores; torch==2.13.0 for the torch rows
    python benchmarks/bench_gpt.py --quick         # fewer repetitions, for a smoke test

Measures, each in a child process pinned to N cores (sched_setaffinity before JAX or torch start, so
XLA's and torch's thread pools both see N cores; torch.set_num_threads(N)):
  - a matmul peak (float32 and bfloat16-in/float32-accumulate jnp.dot at 2048^2) for MFU;
  - training tokens/s at nanoGPT's CPU config (4 layers, 4 heads, 128 dims, context 64, batch 12,
    vocab 65): genjax's full compiled step (AdamW, warmup+cosine, clipping, non-finite guard) against
    torch eager with the same model, init, optimizer and schedule; repetitions interleaved so that
    background load hits both alike; MFU = (6 N + 12 L T d) FLOPs/token x tokens/s / peak;
  - generation of 500 new tokens at batch 1 with the same model dims and a 512-token context: genjax's
    KV-cache generate (one compiled call) against a no-cache loop that re-runs the whole context for
    every token (genjax: jitted forward on the context padded to a multiple of 64; torch: nanoGPT's
    generate), and the same at the 64-token context of the CPU config (genjax slides its cache window);
  - cost per new token against context length (2 threads): KV-cache decode vs a full forward of c tokens.
Writes benchmarks/results/gpt_cpu.json and gpt_cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
try:
    from benchmarks import pinned
    from benchmarks.pinned import median, pin, run_children, timed, torch_or_none
except ImportError:  # run as a script
    import pinned
    from pinned import median, pin, run_children, timed, torch_or_none

TRAIN = dict(n_layer=4, n_head=4, d_model=128, block_size=64, vocab_size=65, batch=12)


# ----------------------------------------------------------------------------- worker (one thread count)


def worker(threads: int, quick: bool) -> dict:
    pin(threads)
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from genjax import train
    from genjax.models import transformer as T

    torch = torch_or_none(threads)
    if torch is not None:
        import torch_gpt

    reps = 3 if quick else 7
    out: dict = {"threads": threads, "load_avg_start": os.getloadavg()[0]}

    # ---- matmul peak
    size = 2048
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    f32 = jax.jit(lambda x, y: jnp.dot(x, y))
    bf16 = jax.jit(lambda x, y: jnp.dot(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16),
                                        preferred_element_type=jnp.float32))
    flops = 2.0 * size**3
    out["peak_gflops_f32"] = flops / timed(lambda: f32(a, b).block_until_ready()) / 1e9
    out["peak_gflops_bf16"] = flops / timed(lambda: bf16(a, b).block_until_ready()) / 1e9
    if torch is not None:
        ta, tb = torch.randn(size, size), torch.randn(size, size)
        out["torch_peak_gflops_f32"] = flops / timed(lambda: ta @ tb) / 1e9

    # ---- training throughput
    c = TRAIN
    tokens_per_step = c["batch"] * c["block_size"]
    rng = np.random.default_rng(0)
    shape = (c["batch"], c["block_size"] + 1)
    batches = [rng.integers(0, c["vocab_size"], shape).astype(np.int32) for _ in range(8)]
    tcfg = train.TrainConfig(steps=2000, lr=1e-3, warmup_steps=100, schedule="cosine", weight_decay=0.1,
                             b2=0.99, grad_clip=1.0)
    tx = train.make_optimizer(tcfg)
    model_kw = {k: c[k] for k in ("n_layer", "n_head", "d_model", "block_size", "vocab_size")}
    variants = {"genjax f32": {}, "genjax f32 scan_layers": {"scan_layers": True},
                "genjax bf16": {"dtype": "bfloat16"}}
    runners = {}
    for name, kw in variants.items():
        cfg = T.Config(**model_kw, **kw)
        state = train.init_state(jax.random.key(0), T.init(jax.random.key(1), cfg), tx)
        step = jax.jit(train.make_step(functools.partial(T.loss, cfg=cfg), tx), donate_argnums=0)
        dev_batches = [{"tokens": jnp.asarray(x)} for x in batches]
        t = time.perf_counter()
        state, m = step(state, dev_batches[0])
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t
        holder = {"state": state}

        def run(k, step=step, holder=holder, dev_batches=dev_batches):
            s = holder["state"]
            for i in range(k):
                s, m = step(s, dev_batches[i % 8])
            jax.block_until_ready(m)
            holder["state"] = s

        run(3)
        runners[name] = (run, T.flops_per_token(cfg), compile_s)
    if torch is not None:
        model = torch_gpt.GPT(c["vocab_size"], c["block_size"], c["n_layer"], c["n_head"], c["d_model"])
        tstep = torch_gpt.make_trainer(model, lr=1e-3, warmup=100, steps=2000)
        tbatches = [torch.from_numpy(x.astype(np.int64)) for x in batches]

        def trun(k):
            for i in range(k):
                tstep(tbatches[i % 8])

        trun(3)
        runners["torch f32 (eager)"] = (trun, T.flops_per_token(T.Config(**model_kw)), 0.0)
    # Steps per repetition: about 1 s of work each (at most 20), so a slow run (torch at 2 threads under
    # background load has taken seconds per step) cannot stretch the benchmark past its budget.
    per_rep = {}
    for name, (run, _, _) in runners.items():
        t = time.perf_counter()
        run(2)
        per_rep[name] = int(min(20, max(2, 2.0 / max(time.perf_counter() - t, 1e-6))))
    times: dict = {name: [] for name in runners}
    for _ in range(reps):  # interleaved: background load hits every implementation alike
        for name, (run, _, _) in runners.items():
            t = time.perf_counter()
            run(per_rep[name])
            times[name].append((time.perf_counter() - t) / per_rep[name])
    out["train"] = {}
    for name, (_, fpt, compile_s) in runners.items():
        step_s = median(times[name])
        tps = tokens_per_step / step_s
        peak = out["peak_gflops_bf16"] if "bf16" in name else out["peak_gflops_f32"]
        out["train"][name] = {
            "step_ms": 1e3 * step_s, "step_ms_min": 1e3 * min(times[name]), "tokens_per_s": tps,
            "gflops": fpt * tps / 1e9, "mfu": fpt * tps / 1e9 / peak, "compile_s": compile_s,
        }

    # ---- generation: 500 new tokens at batch 1
    new_tokens = 500
    out["generate"] = {}
    for ctx in (512, 64):
        cfg = T.Config(**{**model_kw, "block_size": ctx})
        params = T.init(jax.random.key(2), cfg)
        prompt = np.zeros((1, 1), np.int32)

        def kv():
            toks, _ = T.generate(params, jax.random.key(3), prompt, None, new_tokens, cfg)
            toks.block_until_ready()

        t = time.perf_counter()
        kv()
        kv_compile = time.perf_counter() - t
        kv_s = timed(kv, n=3 if not quick else 1)

        @jax.jit
        def next_token(params, window, length, key):
            logits = T.forward(params, window, cfg)[0, length - 1]
            return jax.random.categorical(key, logits)

        def recompute():
            seq = [0]
            key = jax.random.key(4)
            for i in range(new_tokens):
                context = seq[-ctx:]
                width = min(ctx, -(-len(context) // 64) * 64)
                window = np.zeros((1, width), np.int32)
                window[0, : len(context)] = context
                seq.append(int(next_token(params, window, len(context), jax.random.fold_in(key, i))))

        for width in range(64, ctx + 1, 64):  # compile every bucket before timing
            next_token(params, np.zeros((1, width), np.int32), 1, jax.random.key(0)).block_until_ready()
        recompute_s = timed(recompute, n=1)
        row = {"kv_cache_tokens_per_s": new_tokens / kv_s, "kv_compile_s": kv_compile,
               "recompute_tokens_per_s": new_tokens / recompute_s}
        row["speedup_vs_recompute"] = row["kv_cache_tokens_per_s"] / row["recompute_tokens_per_s"]
        if torch is not None:
            tmodel = torch_gpt.GPT(c["vocab_size"], ctx, c["n_layer"], c["n_head"], c["d_model"]).eval()
            idx = torch.zeros((1, 1), dtype=torch.long)
            torch_s = timed(lambda: tmodel.generate(idx, new_tokens), n=1)
            row["torch_recompute_tokens_per_s"] = new_tokens / torch_s
            row["speedup_vs_torch"] = row["kv_cache_tokens_per_s"] / row["torch_recompute_tokens_per_s"]
        out["generate"][f"ctx{ctx}"] = row

    # ---- cost per new token against context length (KV decode vs a full forward of c tokens)
    if threads == max(ARGS_THREADS) and not quick:
        out["cost_vs_context"] = {}
        for ctx in (64, 256, 1024):
            cfg = T.Config(**{**model_kw, "block_size": ctx})
            params = T.init(jax.random.key(2), cfg)
            prompt = np.zeros((1, ctx // 2), np.int32)
            n = ctx // 2 - 8  # new tokens at positions ctx/2 .. ctx - 8: no window slide

            def gen(k):
                toks, _ = T.generate(params, jax.random.key(3), prompt, None, k, cfg)
                toks.block_until_ready()

            gen(1)
            t1, tn = timed(lambda: gen(1), 7), timed(lambda: gen(n + 1), 7)
            kv_ms = 1e3 * (tn - t1) / n
            fwd = jax.jit(functools.partial(T.forward, cfg=cfg))
            window = jnp.zeros((1, ctx), jnp.int32)
            fwd(params, window).block_until_ready()
            full_ms = 1e3 * timed(lambda: fwd(params, window).block_until_ready())
            row = {"kv_decode_ms_per_token": kv_ms, "prefill_ms": 1e3 * t1, "recompute_ms_per_token": full_ms,
                   "new_tokens": n,
                   "ratio": full_ms / kv_ms}
            if torch is not None:
                tmodel = torch_gpt.GPT(c["vocab_size"], ctx, c["n_layer"], c["n_head"], c["d_model"]).eval()
                tw = torch.zeros((1, ctx), dtype=torch.long)
                with torch.no_grad():
                    row["torch_recompute_ms_per_token"] = 1e3 * timed(lambda: tmodel(tw))
            out["cost_vs_context"][str(ctx)] = row
    out["load_avg_end"] = os.getloadavg()[0]
    return out


ARGS_THREADS = (1, 2)


# ----------------------------------------------------------------------------- GPU (cuDNN attention, bf16)


def gpu(out_dir: str, quick: bool) -> dict:
    """GPT-2 small (124M) on the default JAX GPU: train step tokens/s and MFU with cuDNN vs XLA attention
    in bfloat16, and KV-cache generation tokens/s. Writes gpt_gpu.json / .md into out_dir."""
    sys.path.insert(0, ROOT)
    import dataclasses
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from genjax import train
    from genjax.models import transformer as T

    report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
              "backend": jax.default_backend()}
    print(report, flush=True)

    dry = jax.default_backend() == "cpu"  # a smoke test of this function on CPU with toy sizes
    size = 512 if dry else 8192
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
    mm = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    report["peak_tflops_bf16"] = 2.0 * size**3 / timed(lambda: mm(a, a).block_until_ready(), 10) / 1e12
    print("peak", report["peak_tflops_bf16"], flush=True)

    batch_size, steps = (2, 2) if dry else (16, 5 if quick else 10)
    base = T.config_for("gpt2", dtype="bfloat16")
    if dry:
        base = dataclasses.replace(base, n_layer=2, d_model=64, n_head=2, block_size=64, vocab_size=500)
    tx = train.make_optimizer(train.TrainConfig(lr=6e-4, warmup_steps=100, schedule="cosine", steps=5000,
                                                weight_decay=0.1, b2=0.95, grad_clip=1.0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, base.vocab_size, (batch_size, base.block_size + 1)), jnp.int32)
    report["train"] = {}
    losses = {}

    def train_one(impl):
        cfg = dataclasses.replace(base, attention=impl)
        params = T.init(jax.random.key(1), cfg)
        losses[impl] = float(jax.jit(functools.partial(T.loss, cfg=cfg))(params, {"tokens": tokens}, None)[0])
        state = train.init_state(jax.random.key(0), params, tx)
        step = jax.jit(train.make_step(functools.partial(T.loss, cfg=cfg), tx), donate_argnums=0)
        t = time.perf_counter()
        state, m = step(state, {"tokens": tokens})
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t
        holder = [state]

        def run():
            s = holder[0]
            for _ in range(steps):
                s, m = step(s, {"tokens": tokens})
            jax.block_until_ready(m)
            holder[0] = s

        step_s = timed(run, 3) / steps
        tps = batch_size * base.block_size / step_s
        fpt = T.flops_per_token(cfg)
        report["train"][impl] = {"step_ms": 1e3 * step_s, "tokens_per_s": tps, "tflops": fpt * tps / 1e12,
                                 "mfu_vs_measured_peak": fpt * tps / 1e12 / report["peak_tflops_bf16"],
                                 "compile_s": compile_s, "loss_at_init": losses[impl]}
        print(impl, report["train"][impl], flush=True)
        del state

    for impl in ("xla",) if dry else ("cudnn", "xla"):
        try:
            train_one(impl)
        except Exception as e:  # report and go on: one attention backend failing should not hide the rest
            report["train"][impl] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            print(impl, report["train"][impl], flush=True)
    report["loss_cudnn_minus_xla"] = losses.get("cudnn", float("nan")) - losses.get("xla", float("nan"))

    report["generate"] = {}
    params = T.init(jax.random.key(1), base)
    for bsz in (1, 16):
        prompt = np.zeros((bsz, 16), np.int32)

        def gen():
            toks, _ = T.generate(params, jax.random.key(3), prompt, None, 50 if dry else 500, base,
                                 temperature=0.8, top_k=50)
            toks.block_until_ready()

        t = time.perf_counter()
        gen()
        compile_s = time.perf_counter() - t
        s = timed(gen, 3)
        report["generate"][f"batch{bsz}"] = {"tokens_per_s": bsz * 500 / s, "ms_per_step": 1e3 * s / 500,
                                             "compile_s": compile_s}
        print(bsz, report["generate"][f"batch{bsz}"], flush=True)

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "gpt_gpu.json"), "w") as f:
        json.dump(report, f, indent=2)
    tr, ge = report["train"], report["generate"]
    md = [f"# GPT-2 small (124M) on {report['device']} (jax {report['jax']}, bf16 compute, f32 params)", "",
          f"Measured bf16 matmul peak (8192^2, f32 accumulation): {report['peak_tflops_bf16']:.0f} TFLOP/s.",
          "",
          "| attention | batch x context | ms/step | tokens/s | TFLOP/s | MFU (measured peak) | compile s |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for impl, r in tr.items():
        md.append(f"| {impl} | {batch_size} x {base.block_size} | {r['step_ms']:.1f} | "
                  f"{r['tokens_per_s']:,.0f} | "
                  f"{r['tflops']:.0f} | {100 * r['mfu_vs_measured_peak']:.1f}% | {r['compile_s']:.0f} |")
    md += ["", f"Loss at init, cuDNN minus XLA: {report['loss_cudnn_minus_xla']:.2e}.", "",
           "| generation (500 new tokens, KV cache, top-k 50) | tokens/s | ms per decode step |",
           "| --- | --- | --- |"]
    for k, r in ge.items():
        md.append(f"| {k} | {r['tokens_per_s']:,.0f} | {r['ms_per_step']:.2f} |")
    with open(os.path.join(out_dir, "gpt_gpu.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return report


# ----------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    lines = [f"# GPT on CPU: genjax vs PyTorch ({report['hardware']})", "",
             f"jax {report['versions'].get('jax')}, torch {report['versions'].get('torch')}; "
             f"{report['date']}; medians of interleaved repetitions. Model: 4 layers, 4 heads, 128 dims, "
             "vocab 65 (0.80M params).", ""]
    lines += ["## Training (batch 12, context 64)", "",
              "| threads | implementation | ms/step | tokens/s | GFLOP/s | MFU | vs torch |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["runs"]:
        torch_tps = r["train"].get("torch f32 (eager)", {}).get("tokens_per_s")
        for name, t in r["train"].items():
            ratio = f"{t['tokens_per_s'] / torch_tps:.2f}x" if torch_tps else "-"
            lines.append(f"| {r['threads']} | {name} | {t['step_ms']:.1f} | {t['tokens_per_s']:,.0f} | "
                         f"{t['gflops']:.1f} | {100 * t['mfu']:.1f}% | {ratio} |")
    lines += ["", "Peaks (GFLOP/s, 2048^2 matmul): " + "; ".join(
        f"{r['threads']} thread(s): f32 {r['peak_gflops_f32']:.0f}, bf16->f32 {r['peak_gflops_bf16']:.0f}"
        + (f", torch f32 {r['torch_peak_gflops_f32']:.0f}" if "torch_peak_gflops_f32" in r else "")
        for r in report["runs"]) + ". MFU of bf16 rows is against the bf16 peak.", ""]
    lines += ["## Generation: 500 new tokens, batch 1", "",
              "| threads | context | genjax KV cache tok/s | genjax no-cache tok/s | torch no-cache tok/s | "
              "KV vs no-cache | KV vs torch |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["runs"]:
        for ctx, g in r["generate"].items():
            torch_tps = g.get("torch_recompute_tokens_per_s", float("nan"))
            lines.append(
                f"| {r['threads']} | {ctx[3:]} | {g['kv_cache_tokens_per_s']:,.0f} | "
                f"{g['recompute_tokens_per_s']:,.0f} | {torch_tps:,.0f} | {g['speedup_vs_recompute']:.1f}x | "
                f"{g.get('speedup_vs_torch', float('nan')):.1f}x |")
    lines += ["", "Context 64 holds fewer than 500 tokens: genjax slides its cache window (drops the "
              "oldest half and prefills the rest again when full), the no-cache loops crop the context "
              "for each token.", ""]
    for r in report["runs"]:
        if "cost_vs_context" in r:
            lines += [f"## Cost per new token vs context length ({r['threads']} threads)", "",
                      "| context | KV-cache decode ms/token | genjax full forward ms | torch forward ms "
                      "| ratio |",
                      "| --- | --- | --- | --- | --- |"]
            for ctx, row in r["cost_vs_context"].items():
                torch_ms = row.get("torch_recompute_ms_per_token", float("nan"))
                lines.append(f"| {ctx} | {row['kv_decode_ms_per_token']:.3f} | "
                             f"{row['recompute_ms_per_token']:.2f} | {torch_ms:.2f} | {row['ratio']:.0f}x |")
            lines += ["", "KV-cache cost: (time for n + 1 new tokens - time for 1) / n, from a prompt of "
                      "half the context. The no-cache cost of a token is one forward pass over the context. "
                      "genjax's decode attends over the whole preallocated cache (block_size positions, "
                      "masked), so its cost per token depends on the window size, not on how full it is.",
                      ""]
    lines += ["Measured on a shared VM: other processes' load (below) slows both implementations, and "
              "torch's multi-threaded runs far more (its threads spin-wait for a core). Rerun on an idle "
              "machine before quoting the 2-thread ratios.", "",
              "Load average at the start of each child: "
              + ", ".join(f"{r['threads']} thread(s): {r['load_avg_start']:.2f}" for r in report["runs"]), ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--gpu", action="store_true",
                        help="GPT-2 small on the JAX GPU instead (cuDNN vs XLA attention)")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpu:
        gpu(args.out, args.quick)
        return
    if args.worker:
        global ARGS_THREADS
        ARGS_THREADS = tuple(int(t) for t in args.threads.split(","))
        print("RESULT " + json.dumps(worker(args.worker, args.quick)))
        return
    runs = run_children(__file__, [int(t) for t in args.threads.split(",")],
                        ["--threads", args.threads] + ["--quick"] * args.quick, "bench_gpt")
    data = pinned.report(runs)
    pinned.write_report(args.out, "gpt_cpu_quick" if args.quick else "gpt_cpu", data, markdown(data))

if __name__ == "__main__":
    main()
