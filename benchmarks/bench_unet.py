"""The digits U-Net's train step on CPU, genjax vs the PyTorch reference, at 1 and 2 threads: the step of
experiments/diffusion_digits.py (benchmarks/cases.py's diffusion 'cpu' case with the experiment's
optimizer) against torch_ref's eager step of the same algorithm from the same weights, each thread count
in a pinned worker, repetitions interleaved. FLOPs per step: XLA's count of genjax's step, for every row.
Writes results/unet_cpu.{json,md} (unet_cpu_quick with --quick).

    python -m benchmarks.bench_unet            # ~3 minutes on 2 cores; needs torch==2.13.0 (.[torch])
    python -m benchmarks.bench_unet --quick    # 1 thread, 2 repetitions: a smoke test (about a minute)
    python -m benchmarks.bench_unet --check    # only: torch forward == genjax forward on the same params
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from benchmarks import cases, report, timing
from experiments.diffusion_digits import Config as Experiment
from genjax.models import diffusion

CHECKS = {"digits": {}, "padded 7x9x2, 3 levels, conditional": dict(
    image_shape=(7, 9, 2), num_classes=3, channel_mults=(1, 2, 2), attn_resolutions=(2, 8))}


def forward_check(cfg=None, batch: int = 4, scale: float = 0.2, seed: int = 0) -> dict:
    """Random parameters (zero-initialized layers made non-zero too) copied into the torch U-Net: the
    parameter counts and the largest |genjax - torch| output difference (float32, no dropout)."""
    import torch

    from benchmarks import torch_ref

    cfg, rng = cfg or cases.unet(), np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: diffusion.init(jax.random.key(0), cfg))
    params = jax.tree.map(lambda s: scale * rng.standard_normal(s.shape).astype(np.float32), shapes)
    model = torch_ref.UNet(cfg, params).eval()
    x = rng.standard_normal((batch, *cfg.image_shape)).astype(np.float32)
    t = rng.uniform(0.0, 1.0, batch).astype(np.float32)
    labels = (np.arange(batch) % (cfg.num_classes + 1)).astype(np.int32)
    ours = np.asarray(jax.jit(diffusion.apply, static_argnums=4)(params, x, t, labels, cfg))
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t),
                    torch.from_numpy(labels).long() if cfg.num_classes else None).permute(0, 2, 3, 1).numpy()
    return {"params_genjax": int(sum(a.size for a in jax.tree.leaves(params))),
            "params_torch": int(sum(p.numel() for p in model.parameters())),
            "max_abs_diff": float(np.abs(ours - ref).max()), "max_abs_out": float(np.abs(ours).max())}


def measure(threads: int, quick: bool) -> dict:
    from benchmarks import torch_ref as ref  # torch only here: the reports render without it

    ref.at_threads(threads)
    t, case = ref.torch, dataclasses.replace(cases.CASES["diffusion"]["cpu"], train=Experiment().train)
    out = {"cores": sorted(os.sched_getaffinity(0)),
           "peak_gflops_f32": timing.matmul_peak("float32", 2048, repeats=3 if quick else 5) / 1e9,
           "torch_threads": t.get_num_threads(), "torch_interop_threads": t.get_num_interop_threads(),
           "torch_peak_gflops_f32": timing.torch_matmul_peak(t) / 1e9}
    run, compile_s, flops, init, batch = cases.timed_step(case)
    out.update(params=sum(a.size for a in jax.tree.leaves(init)), batch=case.batch_size, flops_per_step=flops)
    step = ref.make_trainer(ref.UNet(case.model, init).train(), ref.diffusion_loss(case.model), case.train)
    images = t.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))  # genjax's batch
    torch_run = lambda k: [step(images) for _ in range(k)]  # noqa: E731
    runners = {"genjax (compiled)": (run, compile_s), "torch (eager)": (torch_run, 0.0)}
    out["train"] = timing.compare({name: (*r, flops, out["peak_gflops_f32"]) for name, r in runners.items()},
                                  2 if quick else 7, case.batch_size, "images")
    return out


def markdown(data: dict) -> str:
    runs, first, v = data["runs"], data["runs"][0], data["versions"]
    lines = [f"# Diffusion U-Net (8x8 digits) on CPU: genjax vs PyTorch ({data['hardware']})", "",
             f"jax {v['jax']}, flax {v['flax']}, torch {v['torch']}; {data['date']}; medians of interleaved "
             f"repetitions. Model: `diffusion.SIZES['digits']` ({first['params']:,} params), batch "
             f"{first['batch']} of 8x8x1, {first['flops_per_step'] / 1e9:.3f} GFLOP per train step (XLA's "
             "count of genjax's step).", "",
             *report.table(report.train_rows(runs, "torch (eager)", "images"), {
                 "threads": "{threads}", "implementation": "{name}", "ms/step": "{step_ms:.1f}",
                 "images/s": "{images_per_s:,.0f}", "GFLOP/s": "{gflops:.2f}", "MFU": "{mfu:.1%}",
                 "vs torch eager": "{ratio}", "compile s": "{compile_s:.1f}"}), ""]
    peaks = "; ".join("{threads} thread(s): jax {peak_gflops_f32:.0f}, torch {torch_peak_gflops_f32:.0f}"
                      .format(**r) for r in runs)
    threads = ", ".join("{torch_threads} intra-op / {torch_interop_threads} inter-op".format(**r)
                        for r in runs)
    return "\n".join(lines + [
        f"Peaks (GFLOP/s, 2048^2 float32 matmul): {peaks}. MFU is against the jax peak.", "",
        "Every row trains the same network on the same batch with the algorithm of experiments/"
        "diffusion_digits.py (eps prediction, cosine schedule, t = i/1000, unweighted MSE; AdamW at weight "
        "decay 0 with warmup + cosine, global-norm clip 1, EMA 0.999). genjax's step is benchmarks/"
        "cases.py's diffusion 'cpu' case with that optimizer; torch starts from its initial weights "
        f"(`torch_ref.load`); its forward matches genjax's to {data['check']['max_abs_diff']:.1e} "
        "(`--check`).",
        "", "Threads: each child is pinned to its N cores; XLA sizes its pool from the affinity mask, torch "
        f"runs {threads} threads.", "", report.load_line(runs) + f" (before the run: "
        f"{data['load_avg_before']:.2f}). Measured on a shared VM: other processes' load slows both "
        "implementations, multi-threaded runs most.", ""])


def main(argv=None) -> None:
    p = report.parser("benchmarks.bench_unet", __doc__, quick="1 thread, 2 repetitions", worker=True)
    p.add_argument("--check", action="store_true", help="only compare the torch and genjax forwards")
    args = p.parse_args(argv)
    if args.worker:
        threads = int(args.worker[0])
        return timing.pinned_result(threads, lambda: measure(threads, args.quick))
    jax.config.update("jax_platforms", "cpu")  # the forward checks too: a CPU comparison
    load, machine = os.getloadavg()[0], report.machine()
    print(f"bench_unet: {machine['hardware']}, load average {load:.2f}; {machine['versions']}", flush=True)
    checks = {name: forward_check(cases.unet(**cfg)) for name, cfg in list(CHECKS.items())[:1 + args.check]}
    for name, check in checks.items():
        print(f"forward check, {name}: {check}", flush=True)
        if check["params_genjax"] != check["params_torch"] or not check["max_abs_diff"] < 1e-4:
            raise SystemExit(f"bench_unet: the torch U-Net does not match genjax's: {check}")
    if not args.check:
        runs = timing.pinned_runs("benchmarks.bench_unet", (1, 2)[:2 - args.quick], ["--quick"] * args.quick)
        data = {**machine, "load_avg_before": load, "check": checks["digits"], "runs": runs}
        report.write(args.out, "unet_cpu_quick" if args.quick else "unet_cpu", data, markdown(data))


if __name__ == "__main__":
    main()
