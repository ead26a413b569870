"""The one training loop every family runs in.

    data -> global sharded batch -> compiled step (donated state) -> metrics every N steps
         -> every K steps: eval / sample hooks, async checkpoint; SIGTERM/SIGINT: checkpoint and stop

The loop only sees a pure `step(state, batch) -> (state, metrics)`, a `TrainState` pytree and a
function giving the host batches from a step on. It resumes from the newest restorable checkpoint of
the workdir; since the batches and the step keys are functions of the step number, a resumed run ends
bitwise equal (on CPU) to one that never stopped.

On several hosts every host must run the same collectives in the same order, so a decision taken from
a local event (a SIGTERM that reached one host, one host's clock saying a checkpoint is due) is first
agreed across processes (`parallel.agree`, a tiny all-gather) at the steps where the loop reads its
metrics anyway, and all hosts then save and stop at the same step. On one process nothing is agreed
and a signal is acted on after the current step.

Exit codes, for schedulers (`experiment.main` maps the exceptions to them):
      0  EXIT_DONE       trained to train.steps
      1  EXIT_DIVERGED   NaN/Inf in a loss, gradient or parameter (NonFiniteError); a plain rerun fails again
      2  EXIT_BAD_INPUT  a bad option, workdir or checkpoint (ConfigError, CheckpointError); fix it, rerun
     75  EXIT_PREEMPTED  SIGTERM/SIGINT: a checkpoint was saved, then the run stopped (Preempted, a
                         SystemExit); requeue the same command (75 is sysexits.h's EX_TEMPFAIL)
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from genjax import parallel
from genjax.checkpoint import Checkpointer, NonFiniteError
from genjax.log import MetricWriter, Progress, note
from genjax.train import TrainConfig, TrainState

EXIT_DONE = 0
EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75

__all__ = ["EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_DONE", "EXIT_PREEMPTED", "Hook", "NonFiniteError",
           "Preempted", "compile_step", "place_state", "run"]

# The wall clock behind train.ckpt_every_secs; tests replace it to give two processes clocks that disagree.
_clock = time.monotonic


class Preempted(SystemExit):
    """SIGTERM/SIGINT arrived: every process saved a checkpoint at `step` and stopped.

    A SystemExit whose code is EXIT_PREEMPTED (75), so that an uncaught one tells the scheduler to
    requeue the job; the loop has printed `message` to stderr on every process before raising it.
    """

    def __init__(self, step: int, workdir: str):
        super().__init__(EXIT_PREEMPTED)
        self.step = step
        self.message = (f"genjax: stopped by signal at step {step}; checkpoint saved in {workdir}/checkpoints. "
                        f"Run the same command again to resume (exit code {EXIT_PREEMPTED}).")

    def __str__(self) -> str:
        return self.message


@dataclasses.dataclass(frozen=True)
class Hook:
    """Calls `fn(state) -> dict | None` every `every` steps and after the last step; logs what it returns."""

    every: int
    fn: Callable[[TrainState], dict | None]
    split: str = "eval"


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (main thread only)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            # None: the previous handler was not set from Python (jax.distributed's preemption notifier);
            # it cannot be reinstated, so the default takes its place.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def compile_step(step_fn, state_sharding, mesh):
    """jit with the state's shardings in and out, the batch split over the mesh, state buffers donated.

    Calls run under `jax.set_mesh(mesh)`, so step code can pin intermediates with bare
    PartitionSpecs (`parallel.constrain_to_batch`).
    """
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )

    def call(state, batch):
        with jax.set_mesh(mesh):
            return jitted(state, batch)

    call.jitted = jitted
    return call


def place_state(state: TrainState, mesh, model_rules=None) -> tuple[TrainState, Any]:
    """Puts a state on the mesh with its (FSDP or replicated) shardings; returns (state, shardings).

    Each process holds the same full state (built from the same seed) and contributes the shards of
    its own devices, so this works across hosts; the copy also keeps the caller's buffers safe from the
    step's donation.
    """
    shardings = parallel.state_sharding(state, mesh, model_rules)

    def place(x, sharding):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(place(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, state, shardings), shardings


def _mean_metrics(rows: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


class _Interval:
    """The steps since the previous checkpoint. The checkpoint that ends it is *healthy* when all of
    them were finite; their mean loss ranks it against the other healthy ones (`Checkpointer`)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.nonfinite = 0

    def add(self, row: dict) -> None:
        self.nonfinite += row.get("nonfinite", 0.0) > 0
        if "loss" in row:
            self.losses.append(float(row["loss"]))

    def train_loss(self) -> float | None:
        """Mean loss if every step was finite, else None (an unhealthy checkpoint)."""
        if self.nonfinite or not self.losses:
            return None
        mean = float(np.mean(self.losses))
        return mean if np.isfinite(mean) else None


def run(
    *,
    state: TrainState,
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict]],
    batches_from: Callable[[int], Iterator[Any]],
    mesh,
    cfg: TrainConfig,
    workdir: str,
    hooks: tuple[Hook, ...] = (),
    progress: bool = True,
    model_rules=None,
) -> TrainState:
    """Trains `state` to `cfg.steps` steps, resuming from `workdir/checkpoints` if it holds one.

    `model_rules` (parameter path suffix -> dimension) are the family's tensor-parallel hints for a
    mesh with a `model` axis (`parallel.state_sharding`). Raises NonFiniteError (see `cfg.on_nonfinite`)
    and Preempted (after saving a checkpoint) on SIGTERM/SIGINT."""
    parallel.check_batch_size(cfg.batch_size, mesh)
    if mesh.shape.get("model", 1) > 1 and not model_rules and jax.process_index() == 0:
        print(f"genjax: warning: train.model_parallel={mesh.shape['model']} but this model names no "
              "tensor-parallel dimensions (model_rules): its devices only hold copies", file=sys.stderr)
    left = cfg.ema_decay ** cfg.steps if cfg.ema_decay and not cfg.ema_warmup else 0.0
    if left > 0.05 and jax.process_index() == 0:  # a short run's EMA is still mostly its random init
        print(f"genjax: warning: train.ema_decay={cfg.ema_decay} over train.steps={cfg.steps} leaves {left:.0%} "
              "of the initial (random) weights in the EMA that evaluation and samples use; pass "
              "--train.ema_warmup true or a smaller decay", file=sys.stderr)
    # The signal handlers go in first: a SIGTERM during the restore or the compilation still ends in a
    # checkpoint and a clean, agreed stop instead of the default handler killing one host.
    with _StopFlag() as stop:
        state, shardings = place_state(state, mesh, model_rules)
        checkpointer = Checkpointer(f"{workdir}/checkpoints", keep=cfg.keep_checkpoints)
        writer = MetricWriter(workdir)
        try:
            restored = checkpointer.restore(state, shardings)
            if restored is not None:
                state = restored
            start = int(jax.device_get(state.step))
            if jax.process_index() == 0:
                n_params = sum(x.size for x in jax.tree.leaves(state.params))
                print(f"genjax: {'resuming at step ' + str(start) if restored is not None else 'starting'}; "
                      f"{n_params:,} params on a {dict(mesh.shape)} mesh; per device: params "
                      f"{parallel.bytes_per_device(state.params) / 2**20:.1f} MiB, optimizer "
                      f"{parallel.bytes_per_device(state.opt_state) / 2**20:.1f} MiB, EMA "
                      f"{parallel.bytes_per_device(state.ema_params) / 2**20:.1f} MiB")
            if start >= cfg.steps:
                return state
            return _train(state, shardings, step_fn, batches_from, mesh, cfg, workdir, hooks, progress,
                          checkpointer, writer, stop)
        finally:
            checkpointer.close()
            writer.close()


def _train(state, shardings, step_fn, batches_from, mesh, cfg, workdir, hooks, progress, checkpointer,
           writer, stop) -> TrainState:
    start = int(jax.device_get(state.step))
    compiled = compile_step(step_fn, shardings, mesh)
    batches = batches_from(start)
    bar = Progress(cfg.steps, start, cfg.batch_size, enabled=progress)
    multihost = jax.process_count() > 1
    # Metrics are read (which blocks) every `check_every` steps: multi-device CPU collectives abort
    # when too many steps are in flight (JAX-FACTS). On several hosts the stop / save-now flags are
    # agreed at exactly these steps, so the agreement adds no extra synchronization; a preemption is
    # then acted on within `check_every` steps.
    on_cpu_mesh = mesh.devices.size > 1 and jax.default_backend() == "cpu"
    check_every = min(8, cfg.log_every) if on_cpu_mesh else cfg.log_every
    pending: list[tuple[int, dict]] = []  # dispatched steps whose metrics were not read yet
    window: list[dict] = []  # metrics read since the last logged step
    interval = _Interval()
    last_save = _clock()

    def flush(step: int) -> None:
        rows = jax.device_get([m for _, m in pending])
        for (s, _), row in zip(pending, rows):
            interval.add(row)
            if row.get("nonfinite", 0.0) > 0:
                bad = [k for k, v in row.items() if not np.isfinite(v)] or ["gradients or parameters"]
                msg = (f"non-finite {', '.join(bad)} at step {s + 1} (loss={row.get('loss')}); "
                       "the update was not applied")
                if cfg.on_nonfinite == "stop":
                    raise NonFiniteError(
                        f"{msg}. {checkpointer.describe()} Lower train.lr, enable train.grad_clip, or set "
                        "train.on_nonfinite=skip."
                    )
                bar.write("genjax: " + msg + " (skipped)")
        window.extend(rows)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = _mean_metrics(window)
            window.clear()
            rate = bar.update(step, mean)
            writer.scalars(step, {**mean, "examples_per_sec": rate})
        else:
            bar.update(step)
        pending.clear()

    def save(step: int, wait: bool) -> None:
        nonlocal last_save
        if pending:
            flush(step)  # never save a state whose steps were not checked for NaN
        checkpointer.save(state, wait=wait, train_loss=interval.train_loss())
        interval.reset()
        last_save = _clock()

    try:
        if progress:
            note("compiling the train step...")
        for step in range(start + 1, cfg.steps + 1):
            state, metrics = compiled(state, parallel.global_batch(next(batches), mesh))
            if step == start + 1:  # jit compiled inside that call; the step itself runs asynchronously
                bar.restart_clock(start)
            pending.append((step - 1, metrics))
            last = step == cfg.steps
            decide = last or step % check_every == 0 or step % cfg.log_every == 0
            if decide:
                flush(step)
            # On several hosts, a local flag acted on alone would desynchronize their collectives.
            if decide or not multihost:
                stop_now, save_now = parallel.agree(stop.requested, _clock() - last_save > cfg.ckpt_every_secs)
            else:
                stop_now = save_now = False
            if stop_now:
                save(step, wait=True)
                preempted = Preempted(step, workdir)
                prefix = f"[process {jax.process_index()}] " if multihost else ""
                print(prefix + preempted.message, file=sys.stderr, flush=True)
                raise preempted
            for hook in hooks:
                if step % hook.every == 0 or last:
                    bar.phase(f"{hook.split}...", step)
                    writer.scalars(step, hook.fn(state) or {}, split=hook.split)
                    bar.phase("", step)
            if save_now or last or step % cfg.ckpt_every == 0:
                save(step, wait=last)
    finally:
        bar.close()
    return state
