"""What every experiment file shares: the entry point, workdir set-up, evaluation over batches, summaries.

An experiment file is its typed `Config`, a `train_and_evaluate(config, workdir) -> dict` made of library
pieces, and `if __name__ == "__main__": experiment.main(Config(), train_and_evaluate, __doc__)`.

Exit codes of `main` (for schedulers; also in the README):
    0   done                         1   diverged (a non-finite step; the last healthy checkpoint stays)
    2   bad input, refused run       75  preempted (SIGTERM/SIGINT): a checkpoint was saved, requeue me
A refused run (exit 2) leaves every file of its workdir as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np

from genjax import config as config_lib
from genjax import data, parallel
from genjax.checkpoint import CheckpointError
from genjax.config import ConfigError
from genjax.log import save_grid
from genjax.loop import Hook, NonFiniteError

# Keys that may change when a run resumes: its length, its cadence and its devices. Every other model,
# optimizer, schedule or data setting is part of the trajectory the checkpoint continues.
RESUMABLE = ("train.steps", "train.log_every", "train.eval_every", "train.sample_every", "train.ckpt_every",
             "train.ckpt_every_secs", "train.keep_checkpoints", "train.num_devices", "train.fsdp",
             "train.model_parallel", "train.on_nonfinite", "train.grad_accum")


# ----------------------------------------------------------------------------- the workdir


def _kind(key: str) -> str:
    if key.startswith("model."):
        return "model"
    if key.startswith("train."):
        return "optimizer, schedule or batch"
    return "data or experiment setting"


def check_workdir(config, workdir: str, *, experiment: str) -> None:
    """Refuses, without writing anything, a workdir this run cannot resume.

    A workdir of another experiment, or one whose checkpointed run was made with other model,
    optimizer, schedule or data settings than `config`, is refused naming the first differing key.
    Fields listed in the experiment config's `RESUMABLE` (evaluation options) and `RESUMABLE` above
    may change; its `DERIVED` fields (set from the data) are checked by the data itself.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        if os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(os.path.join(workdir, "checkpoints")):
            raise ConfigError(f"--workdir {workdir} holds checkpoints but no config.json; use a fresh --workdir")
        return
    record = config_lib.load(workdir)
    if record.get("experiment") != experiment:
        raise ConfigError(f"--workdir {workdir} holds a {record.get('experiment')!r} run, not {experiment!r}; "
                          "use a fresh --workdir (nothing was changed)")
    checkpoints = os.path.join(workdir, "checkpoints")
    if not (os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))):
        return  # nothing to resume: the new config replaces the old one
    allowed = (*RESUMABLE, *getattr(config, "RESUMABLE", ()), *getattr(config, "DERIVED", ()))
    saved = config_lib.flatten(config_lib.from_dict(type(config), record["config"]))
    for key, value in config_lib.flatten(config).items():
        # an allowed name covers the field itself and, for a nested config such as `sample`, all of it
        if not any(key == a or key.startswith(a + ".") for a in allowed) and saved.get(key) != value:
            raise ConfigError(
                f"--workdir {workdir} holds a run trained with {key}={saved.get(key)!r}, not {value!r}: resuming "
                f"cannot change its {_kind(key)}. Rerun with --config {path} (plus --train.steps to extend it) "
                "or use a fresh --workdir (nothing was changed)")


def claim(config, workdir: str, *, experiment: str, family: str) -> None:
    """Writes the workdir's config.json (process 0), after every check has passed."""
    if jax.process_index() == 0:
        config_lib.save(config, workdir, experiment=experiment, family=family)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What `setup` hands an experiment: its resolved config, mesh and named keys."""

    config: Any
    mesh: Any
    keys: dict[str, jax.Array]


def setup(config, workdir: str, *, experiment: str, family: str, keys: Iterable[str],
          examples: int | None = None) -> Setup:
    """Validates `config` (its model config too), checks the workdir and the batch against the mesh and
    the dataset size (`examples`), then claims the workdir. Nothing is written before every check passes.

    `keys` names the random keys the experiment draws from `train.seed`, split once in this order.
    """
    config.model.validate()
    check_workdir(config, workdir, experiment=experiment)
    if examples is not None:
        data.check_batch_fits(config.train.batch_size, examples)
    mesh = parallel.mesh_for(config.train)
    parallel.check_batch_size(config.train.batch_size, mesh)
    claim(config, workdir, experiment=experiment, family=family)
    names = list(keys)
    split = jax.random.split(jax.random.key(config.train.seed), len(names))
    return Setup(config, mesh, dict(zip(names, split)))


def image_data(config) -> tuple[Any, Any, Any]:
    """(config with model.image_shape from the data, train source, test source) for `config.data`, each
    image resized and centre-cropped to `config.image_size` and converted to `config.channels` where set.

    A conditional model (model.num_classes > 0) must match the data's classes.
    """
    load = functools.partial(data.load, config.data, data_dir=config.data_dir or None,
                             image_size=config.image_size, channels=config.channels)
    train_src, test_src = load("train"), load("test")
    num_classes = getattr(config.model, "num_classes", 0)
    if num_classes not in (0, train_src.num_classes):
        raise ConfigError(f"model.num_classes={num_classes}: {config.data} has {train_src.num_classes} classes; "
                          f"use 0 (unconditional) or {train_src.num_classes}")
    model = dataclasses.replace(config.model, image_shape=tuple(train_src.shape))
    return dataclasses.replace(config, model=model), train_src, test_src


# ----------------------------------------------------------------------------- the entry point


def main(default: Any, train_and_evaluate: Callable[[Any, str], dict], doc: str | None,
         argv: list[str] | None = None) -> dict:
    """Parses overrides of `default`, runs the experiment, and turns known failures into clear exits.

    The config's `DERIVED` keys (set by the experiment from its data) are refused on the command line.
    """
    cfg, args = config_lib.parse_args(default, argv, description=doc or "", extra=_distributed_flags,
                                      derived=getattr(default, "DERIVED", ()))
    if args.coordinator or args.num_processes or "JAX_COORDINATOR_ADDRESS" in os.environ:
        from genjax.parallel import initialize_distributed

        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    try:
        return train_and_evaluate(cfg, args.workdir)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _distributed_flags(parser) -> None:
    g = parser.add_argument_group("multi-host (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    g.add_argument("--coordinator", default=None, help="host:port of process 0, e.g. 10.0.0.1:1234")
    g.add_argument("--num_processes", type=int, default=None, help="number of processes (hosts)")
    g.add_argument("--process_id", type=int, default=None, help="this process's index, 0..num_processes-1")


# ----------------------------------------------------------------------------- evaluation and outputs


def evaluate_batches(evaluate: Callable[[Any, dict, jax.Array], dict], params, batches: Iterable[dict],
                     key: jax.Array) -> dict[str, float]:
    """Per-example (or per-token) means of a family's `evaluate` sums over `batches`; batch i gets
    fold_in(key, i)."""
    totals: dict[str, float] = {}
    for i, batch in enumerate(batches):
        for k, v in jax.device_get(evaluate(params, batch, jax.random.fold_in(key, i))).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count")
    return {k: v / count for k, v in totals.items()}


def per_step(evaluate_state: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """`evaluate_state(state)` remembered for the latest step: the evaluation the last step's hook ran
    serves the final summary too instead of running again (evaluations draw from fixed keys)."""
    last: dict[int, dict] = {}

    def fn(state) -> dict:
        step = int(jax.device_get(state.step))
        if step not in last:
            last.clear()
            last[step] = evaluate_state(state)
        return last[step]

    return fn


def batches_from(source, train_cfg) -> Callable[[int], Iterable[dict]]:
    """The loop's `batches_from(start_step)` over an image source: seeded, resumable, this host's rows."""
    return functools.partial(data.batches, source.fetch, source.size, train_cfg.batch_size, train_cfg.seed)


def chunks(arrays: dict[str, np.ndarray], size: int) -> Iterable[dict[str, np.ndarray]]:
    """Consecutive batches of at most `size` rows of a dict of equally long arrays."""
    n = len(next(iter(arrays.values())))
    for lo in range(0, n, size):
        yield {k: v[lo:lo + size] for k, v in arrays.items()}


def finish(workdir: str, summary: dict, *, timer: "Timer", state, mesh) -> dict:
    """The run's summary with its wall time, steps and devices added, written to workdir/summary.json."""
    summary = {**summary, "wall_seconds": timer.seconds(), "steps": int(jax.device_get(state.step)),
               "devices": int(mesh.devices.size)}
    write_summary(workdir, summary)
    return summary


def write_summary(workdir: str, summary: dict) -> None:
    """workdir/summary.json: the final metrics of the run, for tables and comparisons."""
    if jax.process_index() != 0:
        return
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    print("genjax: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in summary.items() if not isinstance(v, list)))


def image_hook(workdir: str, every: int, make: Callable[[Any], dict[str, np.ndarray]]) -> Hook:
    """A hook saving `workdir/samples/<name>_<step>.png` grids of the images `make(state)` returns."""

    def fn(state) -> None:
        step = int(jax.device_get(state.step))
        for name, images in make(state).items():
            save_grid(os.path.join(workdir, "samples", f"{name}_{step:06d}.png"), np.asarray(images))
        return None

    return Hook(every, fn, split="samples")


class Timer:
    """Wall time since construction, for summaries."""

    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
