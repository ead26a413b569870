"""Per-device memory of fine-tuning GPT-2 small (124M): every weight vs LoRA. Compiles the train steps,
never runs them.

    python -m benchmarks.lora_memory [--seq_len 64] [--batch_size 4] [--rank 8] [--out benchmarks/results]

The model is transformer.SIZES['gpt2'] (12 layers, 768 dims, vocab 50257, stacked layers) held as shapes
only (jax.eval_shape: nothing is initialized). Each step is the one gpt_finetune trains with (AdamW,
global-norm clipping; `train.step_for` or `lora.step_for`), placed on a 1-device mesh with the loop's
shardings and compiled by `loop.compile_step` (state donated), exactly as `loop.run` compiles it. Reported
per device: the state's bytes by part (trained params, frozen base, optimizer state), and XLA's memory
analysis of the compiled step: arguments (state + batch), outputs, the bytes outputs alias from donated
inputs, and temporaries (activations, gradients, the merged kernels of LoRA). The peak estimate is
arguments + outputs - aliased + temporaries. Writes benchmarks/results/lora_memory-<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np

from benchmarks import report
from genjax import lora, loop, parallel, train
from genjax.models import transformer

MiB = 2**20
ANALYSIS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")


def _bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
               if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


def measure(name: str, cfg: transformer.Config, lora_cfg: lora.LoraConfig | None, batch_size: int,
            seq_len: int) -> dict:
    """One row: the abstract state's bytes by part and the compiled step's memory analysis."""
    train_cfg = train.TrainConfig(lr=3e-4, weight_decay=0.1, grad_clip=1.0)  # gpt_finetune's optimizer family
    tx = train.make_optimizer(train_cfg)
    loss_fn = functools.partial(transformer.loss, cfg=cfg)
    key = jax.random.key(0)
    params = jax.eval_shape(lambda k: transformer.init(k, cfg), key)
    if lora_cfg is None:
        state = jax.eval_shape(lambda k, p: train.init_state(k, p, tx), key, params)
        step, rules, frozen = train.step_for(loss_fn, train_cfg, tx), transformer.MODEL_RULES, None
    else:
        state = jax.eval_shape(lambda k, p: lora.init_state(k, p, lora.init_adapters(k, p, lora_cfg), tx),
                               key, params)
        step, frozen = lora.step_for(loss_fn, lora_cfg, train_cfg, tx), state.base
        rules = lora.model_rules(transformer.MODEL_RULES)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    shardings = parallel.state_sharding(state, mesh, rules)
    batch = jax.ShapeDtypeStruct((batch_size, seq_len + 1), np.int32)
    start = time.perf_counter()
    compiled = loop.compile_step(step, shardings, mesh).jitted.lower(state, {"tokens": batch}).compile()
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    analysis = {k: getattr(stats, k, None) for k in ANALYSIS} if stats is not None else {}
    row = {"name": name, "trained_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
           "trained_bytes": _bytes(state.params), "frozen_bytes": _bytes(frozen),
           "optimizer_bytes": _bytes(state.opt_state), "compile_s": compile_s, **analysis}
    if analysis:
        row["peak_bytes"] = (analysis["argument_size_in_bytes"] + analysis["output_size_in_bytes"]
                             - analysis["alias_size_in_bytes"] + analysis["temp_size_in_bytes"])
    return row


def markdown(data: dict) -> str:
    env, setup = data["environment"], data["setup"]
    mib = lambda key: lambda r: "-" if r.get(key) is None else f"{r[key] / MiB:,.1f}"  # noqa: E731
    lines = [
        "# Fine-tuning memory: every weight vs LoRA (GPT-2 small, 124M)", "",
        f"{env['date']}, {env['backend']} ({env['device_kind']}), jax {env['jax']}. "
        f"Batch {setup['batch_size']} x {setup['seq_len']} tokens, AdamW + global-norm clipping, float32; "
        "`python -m benchmarks.lora_memory`. Per device, MiB; the steps are compiled, not run.", "",
        *report.table(data["rows"], {
            "run": "{name}", "trained params": lambda r: f"{r['trained_params']:,}",
            "trained": mib("trained_bytes"), "frozen base": mib("frozen_bytes"),
            "optimizer": mib("optimizer_bytes"), "step arguments": mib("argument_size_in_bytes"),
            "outputs": mib("output_size_in_bytes"), "aliased": mib("alias_size_in_bytes"),
            "temporaries": mib("temp_size_in_bytes"), "peak estimate": mib("peak_bytes"),
            "compile s": lambda r: f"{r['compile_s']:.1f}"}), "",
        "Peak estimate = arguments + outputs - aliased (donated state buffers reused by the new state) + "
        "temporaries. LoRA keeps the base in the train state (frozen, never differentiated) and merges each "
        "adapted kernel inside the step, so its temporaries hold the merged kernels and their full-size "
        "gradients besides the activations; what it saves is the base's gradients and Adam moments.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--out", default=report.RESULTS)
    args = p.parse_args(argv)
    cfg = transformer.SIZES["gpt2"]  # its 1024 learned positions stay; the step sees seq_len tokens
    if not 1 <= args.seq_len <= cfg.block_size:
        p.error(f"--seq_len {args.seq_len} must be in [1, {cfg.block_size}]")
    kernels = ("attn/qkv", "attn/proj", "mlp/fc", "mlp/proj")
    alpha = 2.0 * args.rank
    runs = [("every weight", None),
            (f"LoRA r={args.rank}, attention (qkv, proj)", lora.LoraConfig(rank=args.rank, alpha=alpha)),
            (f"LoRA r={args.rank}, every kernel", lora.LoraConfig(args.rank, alpha, targets=kernels))]
    rows = []
    for name, lora_cfg in runs:
        rows.append(measure(name, cfg, lora_cfg, args.batch_size, args.seq_len))
        print(f"{name}: compiled in {rows[-1]['compile_s']:.1f} s", flush=True)
    setup = {"model": "gpt2", "batch_size": args.batch_size, "seq_len": args.seq_len, "rank": args.rank}
    data = {"environment": report.environment(), "setup": setup, "rows": rows}
    report.write(args.out, f"lora_memory-{report.device_slug()}", data, markdown(data))
    return data


if __name__ == "__main__":
    main()
