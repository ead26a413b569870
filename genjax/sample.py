"""Samples from any trained genjax run.

    python -m genjax.sample WORKDIR --num 64 --out samples.npy [--seed 0]
    python -m genjax.sample WORKDIR --num 16 --out grid.png --sampler ddim --steps 50 --guidance 2 --labels 3
    python -m genjax.sample WORKDIR --prompt "def main" --length 200        # text models

Image runs write float32 (N, H, W, C) in [0, 1] to a .npy file (a .png path writes a grid instead).
The workdir's config.json says which family and model config made the run; its newest restorable
checkpoint gives the weights (the EMA weights where the run kept them).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

from genjax import config as config_lib
from genjax.checkpoint import CheckpointError, restore_raw
from genjax.config import ConfigError
from genjax.models import get as get_family


def load_run(workdir: str, use_ema: bool = True):
    """(family module, model config, params, step) of the newest restorable checkpoint in `workdir`."""
    record = config_lib.load(workdir)
    family = get_family(record["family"])
    model_cfg = config_lib.from_dict(family.Config, record["config"]["model"])
    step, raw = restore_raw(os.path.join(workdir, "checkpoints"))
    params = raw.get("ema_params") if use_ema and raw.get("ema_params") is not None else raw["params"]
    return family, model_cfg, params, step


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m genjax.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", help="a run's --workdir (holds config.json and checkpoints/)")
    p.add_argument("--num", type=int, default=64, help="number of samples (images), default 64")
    p.add_argument("--out", default=None, help="output .npy (or .png grid); default WORKDIR/samples.npy")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, default 0")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    g = p.add_argument_group("diffusion")
    g.add_argument("--sampler", default=None, help="ddpm | ddim | dpm++2m")
    g.add_argument("--steps", type=int, default=None, help="sampler steps")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    g.add_argument("--eta", type=float, default=None, help="DDIM eta")
    g.add_argument("--labels", default=None,
                   help="class labels for conditional models: one int, or a comma-separated list (cycled)")
    t = p.add_argument_group("text")
    t.add_argument("--prompt", default=None, help="text prompt (text models)")
    t.add_argument("--length", type=int, default=200, help="new tokens to generate, default 200")
    t.add_argument("--temperature", type=float, default=1.0)
    t.add_argument("--top-k", type=int, default=0)
    t.add_argument("--top-p", type=float, default=1.0)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        family, cfg, params, step = load_run(args.workdir, use_ema=not args.no_ema)
    except (FileNotFoundError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if hasattr(family, "sample_cli"):  # text families print text
        text = family.sample_cli(args.workdir, params, cfg, prompt=args.prompt or "", length=args.length,
                                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                 seed=args.seed)
        print(text)
        return 0
    options = {k: v for k, v in dict(sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                                      eta=args.eta).items() if v is not None}
    if args.labels is not None:
        labels = [int(x) for x in args.labels.split(",") if x.strip()]
        options["labels"] = np.resize(np.asarray(labels, np.int32), args.num)
    images = np.asarray(family.sample(params, jax.random.key(args.seed), args.num, cfg, **options), np.float32)
    out = args.out or os.path.join(args.workdir, "samples.npy")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if out.endswith(".png"):
        from genjax.log import save_grid

        save_grid(out, images)
    else:
        np.save(out, images)
    print(f"genjax: wrote {images.shape[0]} samples of shape {images.shape[1:]} from step {step} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
