"""What every experiment file shares: workdir set-up, the command-line entry point, image hooks, summaries.

An experiment file is its typed `Config`, a `train_and_evaluate(config, workdir) -> dict` made of library
pieces, and `if __name__ == "__main__": experiment.main(Config(), train_and_evaluate, __doc__)`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

from genjax import config as config_lib
from genjax.checkpoint import CheckpointError
from genjax.config import ConfigError
from genjax.log import save_grid
from genjax.loop import Hook, NonFiniteError


def start(cfg, workdir: str, *, experiment: str, family: str) -> None:
    """Claims `workdir` for this experiment and writes its resolved config.json.

    A workdir that holds another experiment's run is refused: resuming it would restore the wrong
    state, and overwriting it would lose that run.
    """
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous.get("experiment") != experiment:
            raise ConfigError(
                f"--workdir {workdir} holds a {previous.get('experiment')!r} run, not {experiment!r}; "
                "use a fresh --workdir (nothing was overwritten)"
            )
    if jax.process_index() == 0:
        config_lib.save(cfg, workdir, experiment=experiment, family=family)


def main(default: Any, train_and_evaluate: Callable[[Any, str], dict], doc: str | None,
         argv: list[str] | None = None) -> dict:
    """Parses overrides of `default`, runs the experiment, and turns known failures into clear exits."""
    cfg, args = config_lib.parse_args(default, argv, description=doc or "", extra=_distributed_flags)
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


def write_summary(workdir: str, summary: dict) -> None:
    """workdir/summary.json: the final metrics of the run, for tables and comparisons."""
    if jax.process_index() != 0:
        return
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    print("genjax: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in summary.items()))


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
