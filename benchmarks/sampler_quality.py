"""Sample quality and speed of a trained image run per sampler and step count: Frechet distance, KID,
precision and recall of `--num` samples to the training images in the dataset's frozen feature classifier (the experiments'
metric), the predicted-class balance, and samples/s of the compiled sampler after a warm-up call.
Families without samplers (VAE, GAN) get one row. Writes WORKDIR/sampler_quality.{json,md}.

    python -m benchmarks.sampler_quality runs/diffusion_digits [--num 1000] [--settings dpm++2m:10,ddim:50]
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from benchmarks import cases, report, timing
from genjax import config as config_lib
from genjax import data, metrics
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

    _, cfg, params, step = load_run(args.workdir)
    record = config_lib.load(args.workdir)
    name = record["config"].get("data", "digits")
    train, test = data.load(name, "train").all(), data.load(name, "test").all()
    net = metrics.feature_net(name, train, test, data.load(name, "train").num_classes)
    labels = tuple(int(v) for v in np.resize(train["label"], args.num))
    samplers = record["family"] in cases.SAMPLER_FAMILIES
    settings = [s.split(":") for s in args.settings.split(",")] if samplers else [("-", "0")]
    rows = []
    for sampler, steps in settings:
        draw = cases.image_sampler(record["family"], params, cfg, sampler, int(steps), labels)
        draw(jax.random.key(args.seed), args.num)  # compile
        fake, seconds = timing.once(lambda: draw(jax.random.key(args.seed), args.num))
        q = metrics.sample_quality(net, train["image"], fake)
        rows.append({"sampler": sampler, "steps": int(steps), "frechet": q["frechet"], "kid": q["kid"],
                     "precision": q["precision"], "recall": q["recall"], "class_tv": q["class_tv"],
                     "samples_per_s": args.num / seconds})
        print(json.dumps(rows[-1]), flush=True)
    bars = metrics.reference_scores(net, train["image"], test["image"], args.num)
    gmm, floor = bars["frechet_gmm_baseline"], bars["frechet_test_floor"]
    lines = [f"Run {args.workdir} (step {step}), {args.num} samples per row, {jax.devices()[0].device_kind}; "
             f"10-component Gaussian mixture: Frechet {gmm:.1f}, precision {bars['precision_gmm_baseline']:.3f}, "
             f"recall {bars['recall_gmm_baseline']:.3f}; held-out digits: Frechet {floor:.1f}, precision "
             f"{bars['real_precision']:.3f}, recall {bars['real_recall']:.3f} ({bars['real_samples']} digits)", ""]
    lines += report.table(rows, {"sampler": "{sampler}", "steps": "{steps}", "Frechet": "{frechet:.1f}",
                                 "KID": "{kid:.1f}", "precision": "{precision:.3f}", "recall": "{recall:.3f}",
                                 "class TV": "{class_tv:.3f}",
                                 "samples/s": "{samples_per_s:,.0f}"})
    report.write(args.workdir, "sampler_quality", {"rows": rows, "gmm_frechet": gmm, "floor_frechet": floor},
                 "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
