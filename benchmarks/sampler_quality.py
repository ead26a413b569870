"""Sample quality and speed of a trained image run per sampler and step count: Frechet distance, KID,
precision and recall of `--num` samples to the training images in the dataset's frozen feature classifier
(the experiments' metric), the predicted-class balance, and samples/s of the compiled sampler after a
warm-up call. Families without samplers (VAE, GAN) get one row. Writes WORKDIR/sampler_quality.{json,md}.

    python -m benchmarks.sampler_quality runs/diffusion_digits [--num 1000] [--settings dpm++2m:10,ddim:50]
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from benchmarks import cases, report, timing
from genjax import config as config_lib
from genjax import data, metrics
from genjax.sample import load_run

DEFAULT = "dpm++2m:10,dpm++2m:20,dpm++2m:50,ddim:10,ddim:20,ddim:50,ddpm:1000"


def options(family: str, cfg, sampler: str, steps: int, labels: tuple[int, ...]):
    """The family's SampleOptions: the sampler setting (diffusion), and `labels` for conditional models."""
    labels = labels if getattr(cfg, "num_classes", 0) else ()
    if family == "diffusion":
        return cases.diffusion.SampleOptions(sampler=sampler, steps=steps, labels=labels)
    if family not in ("vae", "gan"):
        raise SystemExit(f"sampler_quality scores image runs (vae, gan, diffusion), not a {family} run")
    return cases.gan.SampleOptions(labels=labels) if family == "gan" else cases.vae.SampleOptions()


def main(argv=None) -> int:
    p = report.parser("benchmarks.sampler_quality", __doc__, out=None)
    p.add_argument("workdir")
    p.add_argument("--num", type=int, default=1000, help="samples per setting")
    p.add_argument("--settings", default=DEFAULT, help=f"sampler:steps list (default {DEFAULT})")
    args = p.parse_args(argv)
    _, cfg, params, step = load_run(args.workdir)
    record = config_lib.load(args.workdir)
    name, family = record["config"].get("data", "digits"), record["family"]
    train, test = data.load(name, "train").all(), data.load(name, "test").all()
    net = metrics.feature_net(name, train, test, data.load(name, "train").num_classes)
    labels = tuple(int(v) for v in np.resize(train["label"], args.num))
    rows = []
    settings = [s.split(":") for s in args.settings.split(",")] if family == "diffusion" else [("-", "0")]
    for sampler, steps in settings:
        opts = options(family, cfg, sampler, int(steps), labels)
        draw = lambda: np.asarray(cases.FAMILIES[family].sample(  # noqa: E731
            params, jax.random.key(0), args.num, cfg, opts))
        draw()  # compile
        fake, seconds = timing.once(draw)
        q = metrics.sample_quality(net, train["image"], fake)
        rows.append({"sampler": sampler, "steps": int(steps), "frechet": q["frechet"], "kid": q["kid"],
                     "precision": q["precision"], "recall": q["recall"], "class_tv": q["class_tv"],
                     "samples_per_s": args.num / seconds})
        print(json.dumps(rows[-1]), flush=True)
    bars = metrics.reference_scores(net, train["image"], test["image"], args.num)
    gmm, floor = bars["frechet_gmm_baseline"], bars["frechet_test_floor"]
    lines = [f"Run {args.workdir} (step {step}), {args.num} samples per row, {jax.devices()[0].device_kind}; "
             + "10-component Gaussian mixture: Frechet {frechet_gmm_baseline:.1f}, precision "
             "{precision_gmm_baseline:.3f}, recall {recall_gmm_baseline:.3f}; held-out digits: Frechet "
             "{frechet_test_floor:.1f}, precision {real_precision:.3f}, recall {real_recall:.3f} "
             "({real_samples} digits)".format(**bars), ""]
    lines += report.table(rows, {"sampler": "{sampler}", "steps": "{steps}", "Frechet": "{frechet:.1f}",
                                 "KID": "{kid:.1f}", "precision": "{precision:.3f}", "recall": "{recall:.3f}",
                                 "class TV": "{class_tv:.3f}", "samples/s": "{samples_per_s:,.0f}"})
    report.write(args.workdir, "sampler_quality", {"rows": rows, "gmm_frechet": gmm, "floor_frechet": floor},
                 "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
