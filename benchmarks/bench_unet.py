"""The digits U-Net's train step on CPU, genjax vs the PyTorch reference, at 1 and 2 threads: the step of
experiments/diffusion_digits.py (benchmarks/cases.py's diffusion 'cpu' case with the experiment's
optimizer) against torch_ref's eager step of the same algorithm from the same weights, each thread count
in a pinned child (benchmarks/pinned.py), repetitions interleaved. FLOPs per step: XLA's count of
genjax's step, for every row. Writes results/unet_cpu.{json,md} (unet_cpu_quick with --quick).

    python -m benchmarks.bench_unet            # ~3 minutes on 2 cores; needs torch==2.13.0 (.[torch])
    python -m benchmarks.bench_unet --quick    # 1 thread, 2 repetitions: a smoke test (about a minute)
    python -m benchmarks.bench_unet --torch-compile   # adds torch.compile rows (cold, inductor took 113 s
                                                      # on one loaded core, for ~10% off the eager step)
    python -m benchmarks.bench_unet --check    # only: torch forward == genjax forward on the same params
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from benchmarks import pinned, report

COMPILE_BUDGET_S = 180.0  # a torch.compile row is dropped when its first step takes longer


def forward_check(cfg=None, batch: int = 4, scale: float = 0.2, seed: int = 0) -> dict:
    """Random parameters (zero-initialized layers made non-zero too) copied into the torch U-Net: the
    parameter counts and the largest |genjax - torch| output difference (float32, no dropout)."""
    import jax
    import numpy as np
    import torch

    from benchmarks import cases, torch_ref

    cfg, rng = cfg or cases.unet(), np.random.default_rng(seed)
    params = jax.tree.map(lambda s: scale * rng.standard_normal(s.shape).astype(np.float32),
                          cases.param_shapes("diffusion", cfg))
    model = torch_ref.load(torch_ref.UNet(cfg), params).eval()
    x = rng.standard_normal((batch, *cfg.image_shape)).astype(np.float32)
    t = rng.uniform(0.0, 1.0, batch).astype(np.float32)
    labels = (np.arange(batch) % (cfg.num_classes + 1)).astype(np.int32)
    ours = np.asarray(jax.jit(cases.unet_apply, static_argnums=4)(params, x, t, labels, cfg))
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t),
                    torch.from_numpy(labels).long() if cfg.num_classes else None).permute(0, 2, 3, 1).numpy()
    return {"params_genjax": int(sum(a.size for a in jax.tree.leaves(params))),
            "params_torch": int(sum(p.numel() for p in model.parameters())),
            "max_abs_diff": float(np.abs(ours - ref).max()), "max_abs_out": float(np.abs(ours).max())}


def measure(threads: int, quick: bool, torch_compile: bool) -> dict:
    import jax
    import numpy as np

    from benchmarks import cases, timing
    from experiments.diffusion_digits import Config as Experiment

    ref = pinned.torch_reference(threads)
    out = {"cores": sorted(os.sched_getaffinity(0)),
           "peak_gflops_f32": timing.matmul_peak("float32", 2048, repeats=3 if quick else 5) / 1e9}
    if ref:
        t = ref.torch
        out.update(torch_threads=t.get_num_threads(), torch_interop_threads=t.get_num_interop_threads(),
                   torch_peak_gflops_f32=timing.torch_matmul_peak(t) / 1e9)
    case = dataclasses.replace(cases.CASES["diffusion"]["cpu"], train=Experiment().train)
    flops = out["flops_per_step"] = timing.flops(*cases.step_flops_args(case))
    state, step, batch = cases.build(case)
    init = jax.device_get(state.params)  # torch starts from these; the timed steps donate them
    out.update(params=int(sum(a.size for a in jax.tree.leaves(init))), batch=case.batch_size)
    run, compile_s = timing.stepper(step, state, [jax.device_put(batch)])
    runners = {"genjax (compiled)": (run, compile_s, flops, out["peak_gflops_f32"])}
    variants = ([("torch (eager)", False)] + [("torch (torch.compile)", True)] * torch_compile) if ref else []
    for name, compiled in variants:
        images = ref.torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
        model = ref.load(ref.UNet(case.model), init).train()
        model = ref.torch.compile(model) if compiled else model
        step = ref.make_trainer(model, ref.diffusion_loss(case.model), case.train)
        run = lambda k, step=step: [step(images) for _ in range(k)]  # noqa: E731
        try:  # torch.compile compiles in the first step
            first_s = timing.once(lambda: run(1))[1]
            if first_s > COMPILE_BUDGET_S:
                raise TimeoutError(f"first step took {first_s:.0f} s")
        except Exception as e:  # no compiler, an unsupported op, too slow...: the eager row stands alone
            if not compiled:
                raise
            why = str(e) if isinstance(e, TimeoutError) else f"{type(e).__name__}: {str(e)[:300]}"
            out["torch_compile_skipped"] = why
            continue
        runners[name] = (run, first_s if compiled else 0.0, flops, out["peak_gflops_f32"])
    out["train"] = pinned.compare(runners, 2 if quick else 7, case.batch_size, "images")
    return out


def markdown(data: dict) -> str:
    runs, first = data["runs"], data["runs"][0]
    lines = [f"# Diffusion U-Net (8x8 digits) on CPU: genjax vs PyTorch ({data['hardware']})", "",
             f"jax {data['versions'].get('jax')}, flax {data['versions'].get('flax')}, torch "
             f"{data['versions'].get('torch')}; {data['date']}; medians of interleaved repetitions. Model: "
             f"`diffusion.SIZES['digits']` ({first['params']:,} params), batch {first['batch']} of 8x8x1, "
             f"{first['flops_per_step'] / 1e9:.3f} GFLOP per train step (XLA's count of genjax's step).", ""]
    lines += report.table(pinned.train_rows(runs, "torch (eager)", "images"), {
        "threads": "{threads}", "implementation": "{name}", "ms/step": "{step_ms:.1f}",
        "images/s": "{images_per_s:,.0f}",
        "GFLOP/s": "{gflops:.2f}", "MFU": lambda r: f"{100 * r['mfu']:.1f}%", "vs torch eager": "{ratio}",
        "compile s": "{compile_s:.1f}"})
    lines += ["", "Peaks (GFLOP/s, 2048^2 float32 matmul): " + "; ".join(
        f"{r['threads']} thread(s): jax {r['peak_gflops_f32']:.0f}"
        + (f", torch {r['torch_peak_gflops_f32']:.0f}" if "torch_peak_gflops_f32" in r else "") for r in runs)
        + ". MFU is against the jax peak.", "",
        "Every row trains the same network on the same batch with the algorithm of "
        "experiments/diffusion_digits.py (eps prediction, cosine schedule, t = i/1000, unweighted MSE; AdamW "
        "at weight decay 0 with warmup + cosine, global-norm clip 1, EMA 0.999). genjax's step is "
        "benchmarks/cases.py's diffusion 'cpu' case with that "
        "optimizer; torch starts from its initial weights (`torch_ref.load`); its forward matches "
        f"genjax's to {data.get('check', {}).get('max_abs_diff', float('nan')):.1e} (`--check`).", ""]
    skipped = [f"{r['threads']} thread(s): {r['torch_compile_skipped']}" for r in runs
               if "torch_compile_skipped" in r]
    if skipped:
        lines += ["torch.compile skipped: " + "; ".join(skipped) + ".", ""]
    torch_threads = ", ".join(f"{r.get('torch_threads')} intra-op / {r.get('torch_interop_threads')} inter-op"
                              for r in runs)
    return "\n".join(lines + [
        "Threads: each child is pinned to its N cores; XLA sizes its pool from the affinity mask, torch runs "
        f"{torch_threads} threads.", "", pinned.load_line(runs) + f" (before the run: "
        f"{data['load_avg_before']:.2f}). Measured on a shared VM: other processes' load slows both "
        "implementations, multi-threaded runs most.", ""])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_unet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check", action="store_true", help="only compare the torch and genjax forwards")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow)")
    parser.add_argument("--threads", default=None, help="thread counts (default 1,2; 1 with --quick)")
    parser.add_argument("--out", default=report.RESULTS)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return pinned.child(args.worker, lambda: measure(args.worker, args.quick, args.torch_compile))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    load, machine = os.getloadavg()[0], report.machine()
    print(f"bench_unet: {machine['hardware']}, load average {load:.2f}; {machine['versions']}", flush=True)
    checks = [forward_check()]
    if args.check:
        from benchmarks import cases

        checks.append(forward_check(cases.unet(image_shape=(7, 9, 2), num_classes=3, channel_mults=(1, 2, 2),
                                               attn_resolutions=(2, 8))))
    for check in checks:  # the digits U-Net; with --check also a padded 7x9x2, 3-level, conditional one
        print(f"forward check: {check}", flush=True)
        if check["params_genjax"] != check["params_torch"] or not check["max_abs_diff"] < 1e-4:
            raise SystemExit(f"bench_unet: the torch U-Net does not match genjax's: {check}")
    if args.check:
        return
    threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    runs = pinned.run_children("benchmarks.bench_unet", threads,
                               ["--quick"] * args.quick + ["--torch-compile"] * args.torch_compile)
    data = {**machine, "load_avg_before": load, "check": checks[0], "runs": runs}
    report.write(args.out, "unet_cpu_quick" if args.quick else "unet_cpu", data, markdown(data))


if __name__ == "__main__":
    main()
