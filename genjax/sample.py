"""Samples from any trained genjax run.

    python -m genjax.sample WORKDIR --num 64 --out samples.npy [--seed 0]
    python -m genjax.sample WORKDIR --num 16 --out grid.png --sampler ddim --steps 50 --guidance 2 --labels 3
    python -m genjax.sample WORKDIR --prompt "def main" --length 200        # text runs
    python -m genjax.sample WORKDIR --help                                  # this run's options
    python -m genjax.sample HF_DIR --prompt "Hello" --greedy true            # a Hugging Face GPT-2 / Llama checkpoint

The workdir's config.json says which family and model config made the run; its newest restorable
checkpoint gives the weights (the EMA weights where the run kept them). The sampling options are the
family's `SampleOptions` fields, typed and checked before anything compiles; runs with a tokenizer take
--prompt as text. Image runs write float32 (N, H, W, C) in [0, 1] to a .npy file or a .png grid; point
runs a .npy; text runs print the text (or write .txt / .npy token ids). Samples are drawn in compiled
batches of --batch_size with a progress bar; Ctrl-C stops at once and keeps the finished batches.
Sample i depends on the seed and --batch_size only.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np

from genjax import config as config_lib
from genjax.checkpoint import CheckpointError, restore_raw
from genjax.config import ConfigError
from genjax.models import get as get_family

TEXT_FIELDS = ("prompt", "stop_token")  # set from the run's tokenizer and --prompt
EXIT_INTERRUPTED = 130


HF_EXPERIMENT = "huggingface"  # genjax.models.hf.run_record's: a Hugging Face checkpoint directory


def _record(workdir: str) -> dict:
    """The workdir's config.json record; a Hugging Face checkpoint directory (config.json with a
    `model_type`) reads as a transformer run whose weights and tokenizer come from genjax.models.hf."""
    record = config_lib.load(workdir)
    if "model_type" not in record:
        return record
    from genjax.models import hf

    return hf.run_record(workdir)


def load_run(workdir: str, use_ema: bool = True):
    """(family module, model config, params, step) of the newest restorable checkpoint in `workdir`
    (step 0 for a Hugging Face checkpoint directory).

    Refuses (ConfigError) a checkpoint whose parameters do not have the shapes its config.json implies.
    """
    record = _record(workdir)
    family = get_family(record["family"])
    model_cfg = config_lib.from_dict(family.Config, record["config"]["model"])
    if record["experiment"] == HF_EXPERIMENT:
        from genjax.models import hf

        return family, model_cfg, hf.load_pretrained(workdir)[0], 0
    step, raw = restore_raw(os.path.join(workdir, "checkpoints"))
    params = raw.get("ema_params") if use_ema and raw.get("ema_params") is not None else raw["params"]
    expected = jax.eval_shape(lambda key: family.init(key, model_cfg), jax.random.key(0))
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)  # noqa: E731
    if shapes(params) != shapes(expected):
        merged = os.path.join(workdir, "merged")
        if os.path.exists(os.path.join(merged, "config.json")):  # e.g. gpt_finetune's LoRA runs
            raise ConfigError(f"{workdir} trains adapters, not the whole model: sample its merged model, "
                              f"python -m genjax.sample {merged}")
        raise ConfigError(f"the checkpoint at step {step} in {workdir} does not match its config.json (another "
                          "model, or a checkpoint format older than this genjax); retrain or use the run's genjax")
    return family, model_cfg, params, step


def _tokenizer(workdir: str, record: dict):
    from genjax.data import text

    if record["experiment"] == HF_EXPERIMENT:
        from genjax.models import hf

        return hf.load_tokenizer(workdir, record["config"]["model"]["vocab_size"])
    return text.load_tokenizer(workdir) if os.path.exists(os.path.join(workdir, text.TOKENIZER_FILE)) else None


def _parser(family=None, options=None, text: bool = False) -> config_lib.ArgumentParser:
    p = config_lib.ArgumentParser(prog="python -m genjax.sample", description=__doc__)
    p.add_argument("workdir", help="a run's --workdir (holds config.json and checkpoints/)")
    p.add_argument("--num", type=int, default=None, help="number of samples (default 64; text runs 1)")
    p.add_argument("--out", default=None, help=".npy or .png (images), .npy (points), .txt or .npy (text); "
                   "default WORKDIR/samples.npy (text runs print)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, default 0")
    p.add_argument("--batch_size", type=int, default=256, help="samples per compiled call, default 256")
    p.add_argument("--no_ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    if text:
        p.add_argument("--prompt", default="", help="text the samples continue (default: none)")
    if family is not None:
        fields = {k: v for k, v in config_lib.flatten(options).items() if not (text and k in TEXT_FIELDS)}
        group = p.add_argument_group(f"{family.__name__.split('.')[-1]} sampling options")
        for key, value in fields.items():
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            group.add_argument(f"--{key}", default=None, help=f"default: {shown}")
    return p


def _options(parser) -> list[str]:
    return [o for o in parser._option_string_actions if o.startswith("--")]


def _check_out(out: str, kind: str) -> None:
    suffixes = {"images": (".npy", ".png"), "points": (".npy",), "tokens": (".txt", ".npy")}[kind]
    if not out.endswith(suffixes):
        raise ConfigError(f"--out {out}: {kind} are written as {' or '.join(suffixes)}; name the file so")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ConfigError(f"--out {out}: the folder {parent} does not exist (or is a file); create it first")
    if os.path.isdir(out):
        raise ConfigError(f"--out {out} is a folder; give a file name")


def _kind(family, cfg, params) -> str:
    """'images', 'points' or 'tokens': what the family's sampler returns for this run (traced, not run)."""
    shape = jax.eval_shape(lambda p: family.sample(p, jax.random.key(0), 1, cfg), params)
    if jax.numpy.issubdtype(shape.dtype, jax.numpy.integer):
        return "tokens"
    return "images" if len(shape.shape) == 4 else "points"


class _Interrupted(Exception):
    pass


def _wait(x, stop: threading.Event) -> Any:
    """Blocks until `x` is computed, polling, so that a Ctrl-C (which sets `stop`) lands at once."""
    while not x.is_ready():
        if stop.is_set():
            raise _Interrupted
        time.sleep(0.02)
    return np.asarray(x)


def _write(out: str | None, samples: np.ndarray, kind: str, tok, prompt: str) -> str:
    if kind == "tokens" and (out is None or out.endswith(".txt")):
        texts = [prompt + tok.decode(row[row >= 0]) for row in samples] if tok is not None else \
            [" ".join(map(str, row[row >= 0])) for row in samples]
        if out is None:
            print("\n\n".join(texts))
            return "stdout"
        payload = ("\n\n".join(texts) + "\n").encode("utf-8")
        tmp = f"{out}.tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
    elif out.endswith(".png"):
        from genjax.log import save_grid

        tmp = f"{out}.tmp.png"
        save_grid(tmp, samples)
    else:
        tmp = f"{out}.tmp"
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, samples)
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    workdir = next((a for a in argv if not a.startswith("-")), None)
    if workdir is None:
        _parser().parse_args(argv)  # --help, or the missing-workdir error
    try:
        record = _record(workdir)
        family = get_family(record["family"])
        model_cfg = config_lib.from_dict(family.Config, record["config"]["model"])
        tok = _tokenizer(workdir, record)
    except (FileNotFoundError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = _parser(family, family.SampleOptions(), text=tok is not None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        name = unknown[0].partition("=")[0]
        parser.error(f"{name} is not an option of {record['family']} runs{config_lib.suggest(name, _options(parser))}")
    try:
        given = {k: v for k, v in config_lib.chosen(args, family.SampleOptions()).items()
                 if tok is None or k not in TEXT_FIELDS}  # a text run's --prompt is text, encoded below
        options = config_lib.override(family.SampleOptions(), given)
        if tok is not None:
            stop = -1 if tok.eos_id is None else tok.eos_id
            from genjax.data.text import encode_prompt

            options = config_lib.override(options, {"prompt": encode_prompt(tok, args.prompt), "stop_token": stop})
        options.validate(model_cfg)
        _, _, params, step = load_run(workdir, use_ema=not args.no_ema)
        kind = _kind(family, model_cfg, params)
        num = args.num if args.num is not None else (1 if kind == "tokens" else 64)
        for flag, value in (("--num", num), ("--batch_size", args.batch_size)):
            if value < 1:
                raise ConfigError(f"{flag} {value} must be >= 1")
        out = args.out or (None if kind == "tokens" else os.path.join(workdir, "samples.npy"))
        if out is not None:
            _check_out(out, kind)
    except (FileNotFoundError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _draw(family, model_cfg, params, step, options, num, args, out, kind, tok)


def _draw(family, cfg, params, step, options, num, args, out, kind, tok) -> int:
    from tqdm.auto import tqdm

    key = jax.random.key(args.seed)
    done: list[np.ndarray] = []
    sizes = [min(args.batch_size, num - lo) for lo in range(0, num, args.batch_size)]
    bar = tqdm(total=num, unit="sample", file=sys.stderr, disable=len(sizes) == 1 and not sys.stderr.isatty())
    # Ctrl-C only sets a flag, polled between batches and while one computes: a KeyboardInterrupt raised
    # inside tqdm's update (which holds its write lock) would deadlock the bar.close() of the handler.
    stop = threading.Event()

    def on_ctrl_c(*_):  # a second Ctrl-C (say, during a long first compile) exits without saving
        if stop.is_set():
            os._exit(EXIT_INTERRUPTED)
        stop.set()

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        print(f"genjax: compiling the sampler ({family.__name__.split('.')[-1]}, step {step})...", file=sys.stderr)
        for i, size in enumerate(sizes):
            if stop.is_set():
                raise _Interrupted
            done.append(_wait(family.sample(params, jax.random.fold_in(key, i), size, cfg, options), stop))
            bar.update(size)
        if stop.is_set():  # pressed during the last batch's bookkeeping: still an interrupted run
            raise _Interrupted
    except _Interrupted:  # the handler turns Ctrl-C into the flag: no KeyboardInterrupt inside this block
        bar.close()
        kept = f"; the {sum(len(d) for d in done)} finished samples went to " + \
            _write(out, np.concatenate(done), kind, tok, getattr(args, "prompt", "")) if done and out else ""
        print(f"genjax: interrupted{kept}", file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)  # the compiled call still running would hold the interpreter's exit
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    samples = np.concatenate(done)
    where = _write(out, samples, kind, tok, getattr(args, "prompt", ""))
    print(f"genjax: wrote {len(samples)} samples of shape {samples.shape[1:]} from step {step} to {where}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
