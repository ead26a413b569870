"""GPT on CPU, genjax vs the PyTorch reference, each thread count in a pinned child: training tokens/s at
nanoGPT's CPU config with gpt_text's optimizer (genjax also with scan_layers and in bf16; MFU from 6N +
attention FLOPs per token), 500 new tokens by genjax's KV cache against loops that rerun the whole
context per token, and (at the most threads) a new token's cost against context length.

    python -m benchmarks.bench_gpt            # ~5 minutes on 2 idle cores -> results/gpt_cpu.{json,md}
    python -m benchmarks.bench_gpt --quick    # fewer repetitions: a smoke test (gpt_cpu_quick)
"""

from __future__ import annotations

import argparse
import functools

from benchmarks import pinned, report

NEW_TOKENS = 500


def train_rows(ref, peaks: dict, reps: int) -> dict:
    import jax
    import numpy as np

    from benchmarks import cases, timing
    from experiments import gpt_text

    hp, cfg = gpt_text.Config().train, cases.gpt()
    tokens, rng = hp.batch_size * cfg.block_size, np.random.default_rng(0)
    shape = (hp.batch_size, cfg.block_size + 1)
    batches = [rng.integers(0, cfg.vocab_size, shape, dtype=np.int32) for _ in range(8)]
    runners = {}
    for name, variant in {"genjax f32": cases.gpt(), "genjax f32 scan_layers": cases.gpt(scan_layers=True),
                          "genjax bf16": cases.gpt(dtype="bfloat16")}.items():
        run, compile_s = timing.stepper(cases.train_step("transformer", variant, hp),
                                        cases.init_state("transformer", variant, hp),
                                        [{"tokens": jax.device_put(b)} for b in batches])
        runners[name] = (run, compile_s, cases.gpt_flops_per_token(variant) * tokens, peaks[variant.dtype])
    if ref:
        step = ref.make_trainer(ref.gpt(cfg), ref.gpt_loss, hp)
        tbatches = [ref.torch.from_numpy(b.astype(np.int64)) for b in batches]
        runners["torch f32 (eager)"] = (lambda k: [step(tbatches[i % 8]) for i in range(k)], 0.0,
                                        cases.gpt_flops_per_token(cfg) * tokens, peaks["float32"])
    return pinned.compare(runners, reps, tokens, "tokens", min_steps=2)


def generation(ref, ctx: int, quick: bool) -> dict:
    """500 new tokens at batch 1 from genjax's KV cache, and from no-cache loops: genjax's jitted forward on
    the context padded to a multiple of 64, and torch's nanoGPT generate."""
    import jax
    import numpy as np

    from benchmarks import cases, timing

    cfg = cases.gpt(block_size=ctx)
    params = cases.init("transformer", cfg, seed=2)
    kv = lambda: cases.gpt_generate(params, jax.random.key(3), np.zeros((1, 1), np.int32), NEW_TOKENS,  # noqa
                                    cfg).block_until_ready()
    next_token = jax.jit(lambda p, window, n, key: jax.random.categorical(
        key, cases.gpt_logits(p, window, cfg)[0, n - 1]))

    def recompute():
        seq = [0]
        for i in range(NEW_TOKENS):
            context = seq[-ctx:]
            window = np.zeros((1, min(ctx, -(-len(context) // 64) * 64)), np.int32)
            window[0, :len(context)] = context
            seq.append(int(next_token(params, window, len(context), jax.random.key(i))))

    for width in range(64, ctx + 1, 64):  # compile every window width before timing
        next_token(params, np.zeros((1, width), np.int32), 1, jax.random.key(0)).block_until_ready()
    row = {"kv_compile_s": timing.once(kv)[1]}
    row["kv_cache_tokens_per_s"] = NEW_TOKENS / timing.median_time(kv, 1 if quick else 3)
    row["recompute_tokens_per_s"] = NEW_TOKENS / timing.median_time(recompute, 1)
    row["speedup_vs_recompute"] = row["kv_cache_tokens_per_s"] / row["recompute_tokens_per_s"]
    if ref:
        model, idx = ref.gpt(cfg).eval(), ref.torch.zeros((1, 1), dtype=ref.torch.long)
        row["torch_recompute_tokens_per_s"] = NEW_TOKENS / timing.median_time(
            lambda: model.generate(idx, NEW_TOKENS), 1)
        row["speedup_vs_torch"] = row["kv_cache_tokens_per_s"] / row["torch_recompute_tokens_per_s"]
    return row


def token_cost(ref, ctx: int) -> dict:
    """A new token's cost at context `ctx`: KV-cache decode ((time for n + 1 tokens - time for 1) / n from a
    prompt of half the context, no window slide) against a full forward of the context."""
    import jax
    import numpy as np

    from benchmarks import cases, timing

    cfg, n = cases.gpt(block_size=ctx), ctx // 2 - 8
    params, prompt = cases.init("transformer", cfg, seed=2), np.zeros((1, ctx // 2), np.int32)
    window = np.zeros((1, ctx), np.int32)
    gen = lambda k: cases.gpt_generate(params, jax.random.key(3), prompt, k, cfg).block_until_ready()  # noqa
    forward = jax.jit(functools.partial(cases.gpt_logits, cfg=cfg))
    t1, tn = timing.median_time(lambda: gen(1), 7), timing.median_time(lambda: gen(n + 1), 7)
    full_s = timing.median_time(lambda: forward(params, window).block_until_ready())
    row = {"kv_decode_ms_per_token": 1e3 * (tn - t1) / n, "prefill_ms": 1e3 * t1, "new_tokens": n,
           "recompute_ms_per_token": 1e3 * full_s}
    row["ratio"] = row["recompute_ms_per_token"] / row["kv_decode_ms_per_token"]
    if ref:
        model, tokens = ref.gpt(cfg).eval(), ref.torch.zeros((1, ctx), dtype=ref.torch.long)
        with ref.torch.no_grad():
            row["torch_recompute_ms_per_token"] = 1e3 * timing.median_time(lambda: model(tokens))
    return row


def measure(threads: int, quick: bool, cost: bool) -> dict:
    from benchmarks import timing

    ref = pinned.torch_reference(threads)
    out = {"peak_gflops_f32": timing.matmul_peak("float32", 2048) / 1e9,
           "peak_gflops_bf16": timing.matmul_peak("bfloat16", 2048) / 1e9}
    if ref:
        out["torch_peak_gflops_f32"] = timing.torch_matmul_peak(ref.torch) / 1e9
    peaks = {"float32": out["peak_gflops_f32"], "bfloat16": out["peak_gflops_bf16"]}
    out["train"] = train_rows(ref, peaks, 3 if quick else 7)
    out["generate"] = {f"ctx{ctx}": generation(ref, ctx, quick) for ctx in (512, 64)}
    if cost:
        out["cost_vs_context"] = {str(ctx): token_cost(ref, ctx) for ctx in (64, 256, 1024)}
    return out


def markdown(data: dict) -> str:
    runs, nan, versions = data["runs"], float("nan"), data["versions"]
    peaks = "; ".join(f"{r['threads']} thread(s): f32 {r['peak_gflops_f32']:.0f}, bf16->f32 "
                      f"{r['peak_gflops_bf16']:.0f}" + pinned.torch_peak(r, ", torch f32") for r in runs)
    train = report.table(pinned.train_rows(runs, "torch f32 (eager)", "tokens"), {
        "threads": "{threads}", "implementation": "{name}", "ms/step": "{step_ms:.1f}",
        "tokens/s": "{tokens_per_s:,.0f}", "GFLOP/s": "{gflops:.1f}", "MFU": pinned.percent("mfu"),
        "vs torch": "{ratio}"})
    gen_rows = [{"threads": r["threads"], "ctx": ctx[3:], "torch_recompute_tokens_per_s": nan,
                 "speedup_vs_torch": nan, **g} for r in runs for ctx, g in r["generate"].items()]
    generation = report.table(gen_rows, {
        "threads": "{threads}", "context": "{ctx}", "genjax KV cache tok/s": "{kv_cache_tokens_per_s:,.0f}",
        "genjax no-cache tok/s": "{recompute_tokens_per_s:,.0f}", "torch no-cache tok/s":
        "{torch_recompute_tokens_per_s:,.0f}", "KV vs no-cache": "{speedup_vs_recompute:.1f}x",
        "KV vs torch": "{speedup_vs_torch:.1f}x"})
    lines = [f"# GPT on CPU: genjax vs PyTorch ({data['hardware']})", "",
             f"jax {versions.get('jax')}, torch {versions.get('torch')}; {data['date']}; medians of "
             "interleaved repetitions. Model: 4 layers, 4 heads, 128 dims, vocab 65 (0.80M params).", "",
             "## Training (batch 12, context 64)", "", *train, "",
             f"Peaks (GFLOP/s, 2048^2 matmul): {peaks}. MFU of bf16 rows is against the bf16 peak.", "",
             "## Generation: 500 new tokens, batch 1", "", *generation, "",
             "Context 64 holds fewer than 500 tokens: genjax slides its cache window (drops the oldest "
             "half and prefills the rest again when full), the no-cache loops crop the context for each "
             "token.", ""]
    for r in (r for r in runs if "cost_vs_context" in r):
        rows = [{"ctx": c, "torch_recompute_ms_per_token": nan, **x} for c, x in r["cost_vs_context"].items()]
        title = f"## Cost per new token vs context length ({r['threads']} threads)"
        lines += [title, "", *report.table(rows, {
            "context": "{ctx}", "KV-cache decode ms/token": "{kv_decode_ms_per_token:.3f}",
            "genjax full forward ms": "{recompute_ms_per_token:.2f}",
            "torch forward ms": "{torch_recompute_ms_per_token:.2f}", "ratio": "{ratio:.0f}x"}), "",
            "KV-cache cost: (time for n + 1 new tokens - time for 1) / n, from a prompt of half the "
            "context. The no-cache cost of a token is one forward pass over the context. genjax's decode "
            "attends over the whole preallocated cache (block_size positions, masked), so its cost per token "
            "depends on the window size, not on how full it is.", ""]
    return "\n".join(lines + [
        "Measured on a shared VM: other processes' load (below) slows both implementations, and torch's "
        "multi-threaded runs far more (its threads spin-wait for a core). Rerun on an idle machine before "
        "quoting the 2-thread ratios.", "", pinned.load_line(runs), ""])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", default=report.RESULTS)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cost", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return pinned.child(args.worker, lambda: measure(args.worker, args.quick, args.cost))
    threads = [int(t) for t in args.threads.split(",")]
    cost = lambda n: ["--cost"] if n == max(threads) and not args.quick else []  # noqa: E731
    runs = [run for n in threads
            for run in pinned.run_children("benchmarks.bench_gpt", [n], ["--quick"] * args.quick + cost(n))]
    data = {**report.machine(), "runs": runs}
    report.write(args.out, "gpt_cpu_quick" if args.quick else "gpt_cpu", data, markdown(data))


if __name__ == "__main__":
    main()
