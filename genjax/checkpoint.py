"""Checkpoints with orbax: async save, keep the newest N and the best healthy one, resume from the newest
restorable one.

Guarantees:
- a state holding a NaN/Inf (parameters, optimizer state or EMA) is never written: `save` raises
  `NonFiniteError` and the checkpoints already there stay as they are;
- besides the newest `keep` checkpoints, the *healthy* one with the lowest train loss is kept. The loop
  marks a checkpoint healthy when every step since the previous checkpoint was finite and records
  their mean loss; a blow-up that stays finite (loss rising for tens of steps before the first NaN)
  would otherwise rotate every good checkpoint out before the run stops;
- a restore always goes through an abstract target, so arrays come back with the run's shardings
  (a checkpoint written on 8 devices restores on 1 or 4) and optax states keep their types;
- a checkpoint whose shapes differ from the model being built is a clear error, never a silent reshape;
- a damaged checkpoint (unreadable data, missing or empty metadata) is reported on one line, moved to
  `<workdir>/quarantine/` (never deleted), and the next older one is tried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from genjax.config import ConfigError

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No restorable checkpoint where one was needed, or a save that failed."""


class NonFiniteError(FloatingPointError):
    """A step produced a NaN/Inf loss, gradient or parameter; no checkpoint holds it."""


class _Damaged(Exception):
    """A checkpoint whose files cannot be read back (as opposed to one of another model's shape)."""


def _path_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None) or "float32", jax.dtypes.prng_key)


def _stored(x):
    """What orbax stores for a leaf: typed PRNG keys are saved as their raw uint32 data."""
    return jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x


def _shapes(tree) -> dict[str, tuple]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_path_name(p): tuple(_stored(x).shape) for p, x in flat}


def _metadata_shapes(metadata) -> dict[str, tuple]:
    tree = getattr(metadata, "tree", metadata)
    flat, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    )
    return {_path_name(p): tuple(x.shape) for p, x in flat if x is not None and hasattr(x, "shape")}


@jax.jit
def _finite_flags(leaves):
    return [jnp.isfinite(x).all() for x in leaves]


def nonfinite_leaves(state: Any) -> list[str]:
    """Names of the floating-point leaves of `state` holding a NaN or Inf (one compiled reduction)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    floats = [(p, x) for p, x in flat if not _is_key(x) and jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    flags = jax.device_get(_finite_flags([x for _, x in floats]))
    return [_path_name(p) for (p, _), ok in zip(floats, flags) if not ok]


def _health_score(metrics) -> float:
    """Ranks checkpoints for the `best healthy` slot: lower train loss is better; unhealthy ones last."""
    loss = (metrics or {}).get("train_loss")
    return -float(loss) if loss is not None and math.isfinite(loss) else -math.inf


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


def _silence_closed_loop_noise() -> None:
    """A failed orbax read leaves TensorStore callbacks that fire after orbax's event loop closed, each
    printing a traceback ("Event loop is closed") that says nothing about the checkpoint; drop those
    (and only those) from then on."""
    previous = sys.unraisablehook
    if getattr(previous, "genjax_filter", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    hook.genjax_filter = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_absl():
    """orbax warns through absl about each item it cannot read; the loop reports damage itself."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print("genjax: " + msg, file=sys.stderr, flush=True)


class Checkpointer:
    """A thin, safe wrapper around `ocp.CheckpointManager` for one run's `workdir/checkpoints`."""

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.quarantine_dir = os.path.join(os.path.dirname(self.directory), "quarantine")
        self.manager = None
        self._set_aside_unreadable_metrics()
        keep_policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=_health_score, n=1,
                                          keep_checkpoints_without_metrics=False),
        ])
        self.manager = ocp.CheckpointManager(
            self.directory,
            # best_fn only makes orbax write each checkpoint's metrics (so the policy still knows them
            # after a restart); which steps stay is decided by `keep_policy` alone.
            options=ocp.CheckpointManagerOptions(preservation_policy=keep_policy, best_fn=_health_score,
                                                 best_mode="max", create=True),
            # Named up front so metadata can be read before any save or restore in this process.
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def _set_aside_unreadable_metrics(self) -> None:
        """orbax reads every step's small metrics file when it opens the folder and fails outright on
        a damaged one, so such a step is quarantined before that (process 0 moves, every host waits)."""
        damaged = []
        for name in sorted(os.listdir(self.directory) if os.path.isdir(self.directory) else []):
            path = os.path.join(self.directory, name, "metrics", "metrics")
            if name.isdigit() and os.path.exists(path):
                try:
                    with open(path) as f:
                        json.load(f)
                except (OSError, ValueError) as e:
                    damaged.append((int(name), e))
        for step, e in damaged:
            moved_to = self._quarantine(step)
            _say(f"checkpoint step {step} in {self.directory} is damaged (its metrics file cannot be read: "
                 f"{_one_line(e)}); moved to {moved_to}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("genjax: damaged checkpoints set aside")

    # --------------------------------------------------------------------------- save

    def save(self, state: Any, *, wait: bool = False, train_loss: float | None = None) -> None:
        """Starts an async save of `state` at its step; `wait=True` blocks until it is on disk.

        `train_loss`: the mean loss of the steps since the previous checkpoint if all of them were
        finite (the checkpoint is then *healthy*), else None. Raises NonFiniteError, writing nothing,
        if any float leaf of `state` is NaN/Inf.
        """
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        bad = nonfinite_leaves(state)
        if bad:
            raise NonFiniteError(
                f"refusing to checkpoint step {step}: NaN/Inf in {', '.join(bad[:4])}"
                f"{' and more' if len(bad) > 4 else ''}. {self.describe()}"
            )
        healthy = train_loss is not None and math.isfinite(train_loss)
        try:
            self.manager.save(step, args=ocp.args.StandardSave(state),
                              metrics={"train_loss": float(train_loss) if healthy else None})
            if wait:
                self.manager.wait_until_finished()
        except OSError as e:  # a full or failing disk: orbax only removes old steps after a save commits
            raise CheckpointError(
                f"saving the checkpoint of step {step} to {self.directory} failed ({e}); the checkpoints "
                f"already there (steps {self.steps()}) are intact. Free disk space and rerun to resume."
            ) from e

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # --------------------------------------------------------------------------- what is kept

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def train_loss(self, step: int) -> float | None:
        """The recorded mean train loss before `step`'s checkpoint; None if unhealthy or unknown."""
        try:
            loss = (self.manager.metrics(step) or {}).get("train_loss")
        except Exception:  # metrics of an old or damaged checkpoint: treat as unknown
            return None
        return float(loss) if loss is not None and math.isfinite(loss) else None

    def best_healthy_step(self) -> int | None:
        """The healthy checkpoint with the lowest recorded train loss (None if there is none)."""
        scored = [(loss, s) for s in self.steps() if (loss := self.train_loss(s)) is not None]
        return min(scored)[1] if scored else None

    def describe(self) -> str:
        """One sentence on what a rerun would resume from, for error messages."""
        self.manager.wait_until_finished()
        steps = self.steps()
        if not steps:
            return f"No checkpoint was written to {self.directory}: a rerun starts from step 0."
        text = (f"Checkpoints left in {self.directory}: step{'s' if len(steps) > 1 else ''} "
                f"{', '.join(map(str, steps))}; a rerun resumes from step {steps[-1]}.")
        best = self.best_healthy_step()
        if best is not None and best != steps[-1]:
            newer = " ".join(os.path.join(self.directory, str(s)) for s in steps if s > best)
            text += (f" Step {best} is the healthy one with the lowest train loss "
                     f"({self.train_loss(best):.4g}); to resume from it instead, move the newer ones "
                     f"aside first: mkdir -p {self.quarantine_dir} && mv {newer} {self.quarantine_dir}/")
        return text

    # --------------------------------------------------------------------------- restore

    def check_compatible(self, step: int, template: Any) -> None:
        """Raises ConfigError if the checkpoint at `step` does not have the template's shapes."""
        try:
            with _quiet_absl():
                saved = _metadata_shapes(self.manager.item_metadata(step))
        except Exception as e:
            raise _Damaged(f"its metadata cannot be read: {_one_line(e)}") from e
        if not saved:  # e.g. `_METADATA` missing: orbax returns an empty tree, not an error
            raise _Damaged("its array metadata (_METADATA) is missing or empty")
        wanted = _shapes(template)
        diffs = [
            f"{name}: checkpoint {saved.get(name)} vs this config {shape}"
            for name, shape in wanted.items()
            if saved.get(name) != shape
        ]
        extra = sorted(set(saved) - set(wanted))
        if diffs or extra:
            detail = "; ".join(diffs[:5] + [f"{n}: only in checkpoint" for n in extra[:3]])
            raise ConfigError(
                f"the checkpoint at step {step} in {self.directory} was written by a model of another "
                f"shape ({detail}). Train with the config that wrote it (its workdir's config.json) or "
                f"use a fresh --workdir."
            )

    def restore(self, template: Any, shardings: Any = None, step: int | None = None) -> Any | None:
        """The newest restorable state shaped like `template` (None if there is no checkpoint).

        `shardings` (a pytree of NamedSharding matching template) places the restored arrays; without
        it they land as the template's arrays are placed. With `step`, only that checkpoint is tried
        and a damaged one is an error (nothing is moved).
        """
        steps = self.steps() if step is None else [step]
        if not steps:
            return None
        if shardings is None:
            shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), template)
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(_stored(x).shape, _stored(x).dtype, sharding=s),
            template, shardings,
        )
        _silence_closed_loop_noise()
        damaged = []
        for candidate in reversed(steps):
            try:
                self.check_compatible(candidate, template)
                with _quiet_absl():
                    state = self.manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
            except ConfigError:
                raise
            except Exception as e:  # damaged: orbax and TensorStore raise many kinds of errors
                reason = str(e) if isinstance(e, _Damaged) else _one_line(e)
                if step is not None:
                    raise CheckpointError(
                        f"the checkpoint at step {step} in {self.directory} cannot be restored ({reason})"
                    ) from e
                damaged.append(candidate)
                moved_to = self._quarantine(candidate)
                older = [s for s in steps if s < candidate]
                _say(f"checkpoint step {candidate} in {self.directory} is damaged ({reason}); moved to "
                     f"{moved_to}; " + (f"trying step {older[-1]}" if older else "no older checkpoint"))
                continue
            if damaged:
                _say(f"resuming from step {candidate} (damaged: {', '.join(map(str, damaged))})")
            return state
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored: step(s) {', '.join(map(str, damaged))} "
            f"are damaged and were moved to {self.quarantine_dir} (nothing was deleted). Rerun to train "
            f"from step 0 in this workdir, or use a fresh --workdir and inspect the quarantined steps."
        )

    def _quarantine(self, step: int) -> str:
        """Moves a damaged step aside so keep-N and later saves never count or overwrite it; returns
        where it went. Only process 0 moves files (the folder is shared between hosts)."""
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.quarantine_dir, f"{os.path.basename(self.directory)}-{step}")
        n = 1
        while os.path.exists(dst):  # a step quarantined before: keep both
            dst = os.path.join(self.quarantine_dir, f"{os.path.basename(self.directory)}-{step}.{n}")
            n += 1
        if jax.process_index() == 0 and os.path.exists(src):
            os.makedirs(self.quarantine_dir, exist_ok=True)
            shutil.move(src, dst)
        if self.manager is not None:
            self.manager.reload()
        return dst


def restore_raw(directory: str, step: int | None = None) -> tuple[int, dict]:
    """Restores a checkpoint without a template, as nested dicts of arrays on one local device.

    For sampling and inspection: works whatever topology (devices, hosts) wrote the checkpoint, since the
    target is built from the checkpoint's own metadata. Read-only: a damaged step is skipped, not moved.
    """
    if not os.path.isdir(directory):  # checked first: orbax would create the folder
        steps = []
    else:
        manager = ocp.CheckpointManager(os.path.abspath(directory), item_handlers=ocp.StandardCheckpointHandler(),
                                        options=ocp.CheckpointManagerOptions(create=False))
        steps = sorted(manager.all_steps())
    if not steps:
        raise CheckpointError(
            f"{directory} holds no checkpoint: train first (the experiment writes checkpoints every "
            f"train.ckpt_every steps and at the end)"
        )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    _silence_closed_loop_noise()
    tried = []
    for candidate in reversed(steps if step is None else [step]):
        try:
            with _quiet_absl():
                tree = getattr(manager.item_metadata(candidate), "tree", None)
                if not _metadata_shapes(tree):
                    raise _Damaged("its array metadata (_METADATA) is missing or empty")
                target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree,
                                      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
                return candidate, manager.restore(candidate, args=ocp.args.StandardRestore(target))
        except Exception as e:
            tried.append(candidate)
            _say(f"checkpoint step {candidate} in {directory} cannot be restored "
                 f"({e if isinstance(e, _Damaged) else _one_line(e)})")
    raise CheckpointError(f"no checkpoint in {directory} can be restored (tried steps "
                          f"{', '.join(map(str, tried))})")


def fingerprint(params, arch: dict) -> str:
    """SHA-256 of `arch` (a JSON-able description) and every leaf's path, dtype, shape and bytes: what a
    run built on frozen weights records, so resuming it on other weights is refused."""
    h = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        x = np.ascontiguousarray(jax.device_get(x))
        h.update(f"{jax.tree_util.keystr(path)} {x.dtype} {x.shape}".encode())
        h.update(x.tobytes())
    return h.hexdigest()
