"""The one training loop every family runs in.

    data -> global sharded batch -> compiled step (donated state) -> metrics every N steps
         -> every K steps: eval / sample hooks, async checkpoint; SIGTERM/SIGINT: checkpoint and stop

The loop only sees a pure `step(state, batch) -> (state, metrics)`, a `TrainState` pytree and a
function giving the host batches from a step on. It resumes from the newest restorable checkpoint of
the workdir; since the batches and the step keys are functions of the step number, a resumed run ends
bitwise equal (on CPU) to one that never stopped.
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
from genjax.checkpoint import Checkpointer
from genjax.log import MetricWriter, Progress
from genjax.train import TrainConfig, TrainState


class NonFiniteError(FloatingPointError):
    """A step produced a NaN/Inf loss or gradient; the state from before it is kept."""


class Preempted(SystemExit):
    """SIGTERM/SIGINT arrived: the loop saved a checkpoint at `step` and stopped."""

    def __init__(self, step: int, workdir: str):
        self.step = step
        super().__init__(f"genjax: stopped by signal at step {step}; checkpoint saved in {workdir}. "
                         "Run the same command again to resume.")


@dataclasses.dataclass(frozen=True)
class Hook:
    """Calls `fn(state) -> dict | None` every `every` steps and after the last step; logs what it returns."""

    every: int
    fn: Callable[[TrainState], dict | None]
    split: str = "eval"


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (main thread only)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
    mesh with a `model` axis (`parallel.state_sharding`)."""
    parallel.check_batch_size(cfg.batch_size, mesh)
    if mesh.shape.get("model", 1) > 1 and not model_rules and jax.process_index() == 0:
        print(f"genjax: warning: train.model_parallel={mesh.shape['model']} but this model names no "
              "tensor-parallel dimensions (model_rules): its devices only hold copies", file=sys.stderr)
    state, shardings = place_state(state, mesh, model_rules)
    checkpointer = Checkpointer(f"{workdir}/checkpoints", keep=cfg.keep_checkpoints)
    restored = checkpointer.restore(state, shardings)
    if restored is not None:
        state = restored
    start = int(jax.device_get(state.step))
    writer = MetricWriter(workdir)
    if jax.process_index() == 0:
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        print(f"genjax: {'resuming at step ' + str(start) if restored is not None else 'starting'}; "
              f"{n_params:,} params on a {dict(mesh.shape)} mesh; per device: params "
              f"{parallel.bytes_per_device(state.params) / 2**20:.1f} MiB, optimizer "
              f"{parallel.bytes_per_device(state.opt_state) / 2**20:.1f} MiB, EMA "
              f"{parallel.bytes_per_device(state.ema_params) / 2**20:.1f} MiB")
    if start >= cfg.steps:
        checkpointer.close()
        writer.close()
        return state

    compiled = compile_step(step_fn, shardings, mesh)
    batches = batches_from(start)
    bar = Progress(cfg.steps, start, cfg.batch_size, enabled=progress)
    # Multi-device CPU collectives abort when too many steps are in flight (JAX-FACTS): block often.
    sync_every = 8 if (mesh.devices.size > 1 and jax.default_backend() == "cpu") else cfg.log_every
    pending: list[tuple[int, dict]] = []
    last_save = time.monotonic()

    def flush(step: int) -> None:
        rows = jax.device_get([m for _, m in pending])
        for (s, _), row in zip(pending, rows):
            if row.get("nonfinite", 0.0) > 0:
                bad = [k for k, v in row.items() if not np.isfinite(v)] or ["gradients"]
                msg = (f"non-finite {', '.join(bad)} at step {s + 1} (loss={row.get('loss')}); "
                       "the update was not applied")
                if cfg.on_nonfinite == "stop":
                    raise NonFiniteError(
                        msg + f". The last good checkpoint in {workdir}/checkpoints is intact; lower "
                        "train.lr, enable train.grad_clip, or set train.on_nonfinite=skip."
                    )
                bar.write("genjax: " + msg + " (skipped)")
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = _mean_metrics(rows)
            rate = bar.update(step, mean)
            writer.scalars(step, {**mean, "examples_per_sec": rate})
        else:
            bar.update(step)
        pending.clear()

    try:
        with _StopFlag() as stop:
            for step in range(start + 1, cfg.steps + 1):
                state, metrics = compiled(state, parallel.global_batch(next(batches), mesh))
                pending.append((step - 1, metrics))
                last = step == cfg.steps
                if last or step % min(sync_every, cfg.log_every) == 0 or stop.signum is not None:
                    flush(step)
                for hook in hooks:
                    if step % hook.every == 0 or last:
                        writer.scalars(step, hook.fn(state) or {}, split=hook.split)
                if stop.signum is not None:
                    if pending:
                        flush(step)
                    checkpointer.save(state, wait=True)
                    raise Preempted(step, workdir)
                due = step % cfg.ckpt_every == 0 or time.monotonic() - last_save > cfg.ckpt_every_secs
                if due or last:
                    if pending:
                        flush(step)  # never save a state whose steps were not checked for NaN
                    checkpointer.save(state, wait=last)
                    last_save = time.monotonic()
    finally:
        bar.close()
        checkpointer.close()
        writer.close()
    return state
