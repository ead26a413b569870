"""Sample quality and speed per sampler and step count, for a trained image run.

    python -m benchmarks.sampler_quality runs/diffusion_digits [--num 1000] [--settings dpm++2m:10,ddim:50]

For each (sampler, steps): the Frechet distance and KID of `--num` samples to the training images in
the dataset's frozen feature classifier (the experiments' own metric), the predicted-class balance, and
samples/s of the compiled sampler (timed after a warm-up call). Families without samplers (VAE, GAN)
get one row. Writes WORKDIR/sampler_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from genjax import data, metrics
from genjax import config as config_lib
from genjax.sample import load_run

DEFAULT = "dpm++2m:10,dpm++2m:20,dpm++2m:50,ddim:10,ddim:20,ddim:50,ddpm:1000"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sampler_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir")
    p.add_argument("--num", type=int, default=1000, help="samples per setting")
    p.add_argument("--settings", default=DEFAULT, help=f"sampler:steps list (default {DEFAULT})")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    family, cfg, params, step = load_run(args.workdir)
    record = config_lib.load(args.workdir)["config"]
    name = record.get("data", "digits")
    train, test = data.load(name, "train").all(), data.load(name, "test").all()
    net = metrics.feature_net(name, train, test, data.load(name, "train").num_classes)
    key = jax.random.key(args.seed)
    labels = np.resize(train["label"], args.num) if getattr(cfg, "num_classes", 0) else None
    settings = [s.split(":") for s in args.settings.split(",")] if hasattr(family, "run_sampler") else [("-", "0")]
    rows = []
    for sampler, steps in settings:
        opts = {} if sampler == "-" else {"sampler": sampler, "steps": int(steps)}
        if labels is not None:
            opts["labels"] = labels

        def draw():
            return np.asarray(family.sample(params, key, args.num, cfg, **opts))

        draw()  # compile
        t = time.perf_counter()
        fake = draw()
        seconds = time.perf_counter() - t
        q = metrics.sample_quality(net, train["image"], fake)
        rows.append({"sampler": sampler, "steps": int(steps), "frechet": q["frechet"], "kid": q["kid"],
                     "class_tv": q["class_tv"], "samples_per_s": args.num / seconds})
        print(json.dumps(rows[-1]), flush=True)
    gmm = metrics.sample_quality(net, train["image"], metrics.gaussian_mixture_baseline(train["image"], args.num))
    floor = metrics.sample_quality(net, train["image"], test["image"])
    lines = [f"Run {args.workdir} (step {step}), {args.num} samples per row, {jax.devices()[0].device_kind}; "
             f"10-component Gaussian mixture: Frechet {gmm['frechet']:.1f}; held-out digits (floor): "
             f"{floor['frechet']:.1f}", "",
             "| sampler | steps | Frechet | KID | class TV | samples/s |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['sampler']} | {r['steps']} | {r['frechet']:.1f} | {r['kid']:.1f} | {r['class_tv']:.3f} | "
              f"{r['samples_per_s']:,.0f} |" for r in rows]
    with open(os.path.join(args.workdir, "sampler_quality.json"), "w") as f:
        json.dump({"rows": rows, "gmm_frechet": gmm["frechet"], "floor_frechet": floor["frechet"]}, f, indent=2)
    with open(os.path.join(args.workdir, "sampler_quality.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
