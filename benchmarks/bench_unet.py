"""Diffusion U-Net (8x8 digits) training on CPU, genjax vs a plain PyTorch reference, at 1 and 2 threads.

    python benchmarks/bench_unet.py            # ~3 minutes on 2 cores; needs torch==2.13.0 (.[torch])
    python benchmarks/bench_unet.py --quick    # 1 thread, 2 repetitions: a smoke test (about a minute)
    python benchmarks/bench_unet.py --torch-compile   # adds torch.compile rows (its compile: ~2 min a child)
    python benchmarks/bench_unet.py --check    # torch forward == genjax forward on the same params

The model is genjax's `diffusion.digits()` U-Net (widths 16/32, one residual block per level,
attention at 4x4, 0.18M parameters) at batch 64, as `benchmarks/suite.py`'s `diffusion_case('cpu')`.
Each thread count runs in a child process pinned to N cores (sched_setaffinity before JAX or torch
start, so XLA's and torch's thread pools both see N cores; torch.set_num_threads(N)), which measures:
  - the float32 matmul peak (2048^2, jnp.dot and torch) for MFU;
  - train steps/s of genjax's compiled step, built by `suite.diffusion_case('cpu')` with the optimizer
    the experiment trains with (experiments/diffusion_digits.py: AdamW at weight decay 0 under warmup +
    cosine, global-norm clip 1; EMA 0.999; non-finite guard), against `torch_unet`'s eager step with the
    same algorithm and hyperparameters, starting from genjax's initial weights
    (and, with --torch-compile, the same model under torch.compile; the optimizer and EMA stay eager.
    Cold, inductor took 113 s to compile it on one loaded core, for ~10% off the eager step).
Repetitions are interleaved so that background load hits every implementation alike; medians.
FLOPs per step are XLA's count for genjax's step (`suite.step_flops`), used for every row: the same
model and algorithm. Writes benchmarks/results/unet_cpu.json and unet_cpu.md.
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
    from benchmarks.pinned import cpu_name, median, pin, run_children, timed, torch_or_none, versions
except ImportError:  # run as a script
    import pinned
    from pinned import cpu_name, median, pin, run_children, timed, torch_or_none, versions

COMPILE_BUDGET_S = 180.0  # a torch.compile row is dropped when its first step takes longer


def forward_check(cfg=None, batch: int = 4, scale: float = 0.2, seed: int = 0) -> dict:
    """Random parameters (every zero-initialized layer made non-zero) copied into the torch U-Net:
    the parameter counts and the largest |genjax - torch| output difference (float32, no dropout)."""
    import jax
    import numpy as np
    import torch

    from benchmarks import torch_unet
    from genjax.models import diffusion

    cfg = cfg or diffusion.digits()
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(diffusion.init, jax.random.key(0), cfg)  # structure only: nothing compiles
    params = jax.tree.map(lambda s: scale * rng.standard_normal(s.shape).astype(np.float32), shapes)
    model = torch_unet.load_flax_params(torch_unet.from_config(cfg), params).eval()
    x = rng.standard_normal((batch, *cfg.image_shape)).astype(np.float32)
    t = rng.uniform(0.0, 1.0, batch).astype(np.float32)
    labels = (np.arange(batch) % (cfg.num_classes + 1)).astype(np.int32)
    fwd = jax.jit(lambda p, x, t, y: diffusion.apply(p, x, t, y, cfg))
    ours = np.asarray(fwd(params, x, t, labels))
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t),
                    torch.from_numpy(labels).long() if cfg.num_classes else None).permute(0, 2, 3, 1).numpy()
    return {"params_genjax": int(sum(a.size for a in jax.tree.leaves(params))),
            "params_torch": int(sum(p.numel() for p in model.parameters())),
            "max_abs_diff": float(np.abs(ours - ref).max()), "max_abs_out": float(np.abs(ours).max())}


# ----------------------------------------------------------------------------- worker (one thread count)


def worker(threads: int, quick: bool, torch_compile: bool = False) -> dict:
    pin(threads)
    import jax
    import numpy as np

    from benchmarks import harness, suite
    from experiments.diffusion_digits import Config as Experiment
    from genjax import train
    from genjax.models import diffusion

    torch = torch_or_none(threads)
    if torch is not None:
        from benchmarks import torch_unet

    reps = 2 if quick else 7
    out: dict = {"threads": threads, "cores": sorted(os.sched_getaffinity(0)),
                 "load_avg_start": os.getloadavg()[0]}

    # ---- matmul peak
    size = 2048
    out["peak_gflops_f32"] = harness.measure_matmul_peak("float32", n=size, repeats=3 if quick else 5) / 1e9
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        out["torch_interop_threads"] = torch.get_num_interop_threads()
        ta, tb = torch.randn(size, size), torch.randn(size, size)
        out["torch_peak_gflops_f32"] = 2.0 * size**3 / timed(lambda: ta @ tb) / 1e9

    # ---- the steps
    hp = Experiment().train
    cfg = diffusion.digits()
    case = suite.diffusion_case("cpu", tx=train.make_optimizer(hp))
    out["params"] = int(sum(a.size for a in jax.tree.leaves(case.state.params)))
    out["batch"] = case.examples_per_step
    init = jax.device_get(case.state.params)  # torch starts from these; the timed step donates them
    flops = out["flops_per_step"] = suite.step_flops(case)
    step = jax.jit(case.step, donate_argnums=0)
    batch = jax.tree.map(jax.numpy.asarray, case.batch)  # (64, 8, 8, 1) uniform in [0, 1], as the suite
    t = time.perf_counter()
    state, m = step(case.state, batch)
    jax.block_until_ready(m)
    holder = {"state": state}

    def run(k):
        s = holder["state"]
        for _ in range(k):
            s, m = step(s, batch)
        jax.block_until_ready(m)
        holder["state"] = s

    runners = {"genjax (compiled)": (run, time.perf_counter() - t)}

    if torch is not None:
        timg = torch.from_numpy(np.ascontiguousarray(case.batch["image"].transpose(0, 3, 1, 2)))
        kw = dict(timesteps=cfg.timesteps, schedule=cfg.schedule, prediction=cfg.prediction, lr=hp.lr,
                  warmup=hp.warmup_steps, steps=hp.steps, weight_decay=hp.weight_decay, b1=hp.b1, b2=hp.b2,
                  grad_clip=hp.grad_clip, ema_decay=hp.ema_decay)
        assert cfg.loss_weighting == "none" and cfg.num_classes == 0 and cfg.dtype == "float32"

        def torch_runner(compile_model: bool):
            model = torch_unet.load_flax_params(torch_unet.from_config(cfg), init).train()
            n = sum(p.numel() for p in model.parameters())
            assert n == out["params"], f"torch U-Net has {n} parameters, genjax's {out['params']}"
            tstep = torch_unet.make_trainer(torch.compile(model) if compile_model else model, **kw)

            def trun(k):
                for _ in range(k):
                    tstep(timg)

            t = time.perf_counter()
            trun(1)
            return trun, time.perf_counter() - t

        runners["torch (eager)"] = (torch_runner(False)[0], 0.0)
        if torch_compile:
            try:
                trun, compile_s = torch_runner(True)
                if compile_s <= COMPILE_BUDGET_S:
                    runners["torch (torch.compile)"] = (trun, compile_s)
                else:
                    out["torch_compile_skipped"] = f"first step took {compile_s:.0f} s"
            except Exception as e:  # no compiler, unsupported op, ...: the eager row stands alone
                out["torch_compile_skipped"] = f"{type(e).__name__}: {str(e)[:300]}"

    # Steps per repetition: about 1 s of work each (at most 20, at least 1), so a slow run (torch at 2
    # threads on a loaded machine has taken seconds per step) cannot stretch the budget. The two
    # calibration steps are also the warm-up.
    per_rep = {}
    for name, (run, _) in runners.items():
        t = time.perf_counter()
        run(2)
        per_rep[name] = int(min(20, max(1, 2.0 / max(time.perf_counter() - t, 1e-6))))
    times: dict = {name: [] for name in runners}
    for _ in range(reps):  # interleaved: background load hits every implementation alike
        for name, (run, _) in runners.items():
            t = time.perf_counter()
            run(per_rep[name])
            times[name].append((time.perf_counter() - t) / per_rep[name])
    out["train"] = {}
    for name, (_, compile_s) in runners.items():
        step_s = median(times[name])
        out["train"][name] = {
            "step_ms": 1e3 * step_s, "step_ms_min": 1e3 * min(times[name]), "steps_per_rep": per_rep[name],
            "images_per_s": out["batch"] / step_s, "gflops": flops / step_s / 1e9,
            "mfu": flops / step_s / 1e9 / out["peak_gflops_f32"], "compile_s": compile_s,
        }
    out["load_avg_end"] = os.getloadavg()[0]
    return out


# ----------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    first = report["runs"][0]
    lines = [f"# Diffusion U-Net (8x8 digits) on CPU: genjax vs PyTorch ({report['hardware']})", "",
             f"jax {report['versions'].get('jax')}, flax {report['versions'].get('flax')}, "
             f"torch {report['versions'].get('torch')}; {report['date']}; "
             "medians of interleaved repetitions. "
             f"Model: `diffusion.digits()` ({first['params']:,} params), batch {first['batch']} of 8x8x1, "
             f"{first['flops_per_step'] / 1e9:.3f} GFLOP per train step (XLA's count of genjax's step).", "",
             "| threads | implementation | ms/step | images/s | GFLOP/s | MFU | vs torch eager | compile s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["runs"]:
        ref = r["train"].get("torch (eager)", {}).get("images_per_s")
        for name, t in r["train"].items():
            ratio = f"{t['images_per_s'] / ref:.2f}x" if ref else "-"
            lines.append(f"| {r['threads']} | {name} | {t['step_ms']:.1f} | {t['images_per_s']:,.0f} | "
                         f"{t['gflops']:.2f} | {100 * t['mfu']:.1f}% | {ratio} | {t['compile_s']:.1f} |")
    lines += ["", "Peaks (GFLOP/s, 2048^2 float32 matmul): " + "; ".join(
        f"{r['threads']} thread(s): jax {r['peak_gflops_f32']:.0f}"
        + (f", torch {r['torch_peak_gflops_f32']:.0f}" if "torch_peak_gflops_f32" in r else "")
        for r in report["runs"]) + ". MFU is against the jax peak.", "",
        "Every row trains the same network on the same batch with the algorithm of "
        "experiments/diffusion_digits.py (eps prediction, cosine schedule, t = i/1000, unweighted MSE; AdamW "
        "at weight decay 0 with warmup + cosine, global-norm clip 1, EMA 0.999). genjax's step is "
        "benchmarks/suite.py's `diffusion_case('cpu')` with that optimizer; torch starts from its "
        "initial weights (`torch_unet.load_flax_params`); its forward matches genjax's to "
        f"{report.get('check', {}).get('max_abs_diff', float('nan')):.1e} (`--check`).", ""]
    skipped = [f"{r['threads']} thread(s): {r['torch_compile_skipped']}" for r in report["runs"]
               if "torch_compile_skipped" in r]
    if skipped:
        lines += ["torch.compile skipped: " + "; ".join(skipped) + ".", ""]
    lines += ["Threads: each child is pinned to its N cores; XLA sizes its pool from the affinity mask, "
              "torch runs " + ", ".join(f"{r.get('torch_threads')} intra-op / {r.get('torch_interop_threads')} "
                                  f"inter-op" for r in report["runs"]) + " threads.", "",
              "Load average at the start of each child: "
              + ", ".join(f"{r['threads']} thread(s): {r['load_avg_start']:.2f}" for r in report["runs"])
              + f" (before the run: {report['load_avg_before']:.2f}). Measured on a shared VM: other "
              "processes' load slows both implementations, multi-threaded runs most.", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check", action="store_true", help="only compare the torch and genjax forwards")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time torch.compile (slow to compile)")
    parser.add_argument("--threads", default=None, help="thread counts (default 1,2; 1 with --quick)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.quick, args.torch_compile)))
        return
    sys.path.insert(0, ROOT)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    print(f"bench_unet: {cpu_name()}, {cores} cores, load average {load:.2f}; "
          + ", ".join(f"{k} {v}" for k, v in versions().items()), flush=True)
    check = forward_check()
    print(f"forward check: {check}", flush=True)
    assert check["params_genjax"] == check["params_torch"], check
    assert check["max_abs_diff"] < 1e-4, check
    if args.check:
        from genjax.models import diffusion

        other = forward_check(diffusion.digits(image_shape=(7, 9, 2), num_classes=3, channel_mults=(1, 2, 2),
                                               attn_resolutions=(2, 8)))
        print(f"forward check, 7x9x2 padded, 3 levels, conditional: {other}")
        assert other["params_genjax"] == other["params_torch"] and other["max_abs_diff"] < 1e-4, other
        return
    thread_counts = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    runs = run_children(__file__, thread_counts,
                        ["--quick"] * args.quick + ["--torch-compile"] * args.torch_compile, "bench_unet")
    data = pinned.report(runs, load_avg_before=load, check=check)
    pinned.write_report(args.out, "unet_cpu_quick" if args.quick else "unet_cpu", data, markdown(data))

if __name__ == "__main__":
    main()
