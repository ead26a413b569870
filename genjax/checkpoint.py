"""Checkpoints with orbax: async save, keep the last N, resume from the newest restorable one.

Guarantees:
- a restore always goes through an abstract target, so arrays come back with the run's shardings
  (a checkpoint written on 8 devices restores on 1 or 4) and optax states keep their types;
- a checkpoint whose shapes differ from the model being built is a clear error, never a silent reshape;
- a damaged newest checkpoint is reported, moved aside to `<dir>/quarantine/` (never deleted), and the
  previous one is used.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from genjax.config import ConfigError

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No restorable checkpoint where one was needed."""


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


class Checkpointer:
    """A thin, safe wrapper around `ocp.CheckpointManager` for one run's `workdir/checkpoints`."""

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            # Named up front so metadata can be read before any save or restore in this process.
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    # --------------------------------------------------------------------------- save

    def save(self, state: Any, *, wait: bool = False) -> None:
        """Starts an async save of `state` at its step; `wait=True` blocks until it is on disk."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        try:
            self.manager.save(step, args=ocp.args.StandardSave(state))
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

    # --------------------------------------------------------------------------- restore

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def check_compatible(self, step: int, template: Any) -> None:
        """Raises ConfigError if the checkpoint at `step` does not have the template's shapes."""
        saved = _metadata_shapes(self.manager.item_metadata(step))
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
        it they land as the template's arrays are placed.
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
        for candidate in reversed(steps):
            try:
                self.check_compatible(candidate, template)
                return self.manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
            except ConfigError:
                raise
            except Exception as e:  # a damaged checkpoint: orbax raises many kinds of errors
                log.warning("checkpoint at step %d in %s cannot be restored (%s: %s)",
                            candidate, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
                if step is not None:
                    raise CheckpointError(f"checkpoint at step {step} cannot be restored: {e}") from e
                self._quarantine(candidate)
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored (damaged ones were moved to "
            f"{os.path.join(self.directory, 'quarantine')}); use a fresh --workdir"
        )

    def _quarantine(self, step: int) -> None:
        """Moves a damaged step aside so keep-N and later saves never count or overwrite it."""
        src = os.path.join(self.directory, str(step))
        dst_root = os.path.join(os.path.dirname(self.directory), "quarantine")
        os.makedirs(dst_root, exist_ok=True)
        dst = os.path.join(dst_root, f"{os.path.basename(self.directory)}-{step}")
        if os.path.exists(src):
            shutil.move(src, dst)
            print(f"genjax: checkpoint step {step} is damaged; moved to {dst}, falling back to an older one")
        self.manager.reload()


def restore_raw(directory: str, step: int | None = None) -> tuple[int, dict]:
    """Restores a checkpoint without a template, as nested dicts of arrays on one local device.

    For sampling and inspection: works whatever topology (devices, hosts) wrote the checkpoint, since the
    target is built from the checkpoint's own metadata.
    """
    manager = ocp.CheckpointManager(os.path.abspath(directory), item_handlers=ocp.StandardCheckpointHandler())
    steps = sorted(manager.all_steps())
    if not steps:
        raise CheckpointError(
            f"{directory} holds no checkpoint: train first (the experiment writes checkpoints every "
            f"train.ckpt_every steps and at the end)"
        )
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for candidate in reversed(steps if step is None else [step]):
        try:
            tree = getattr(manager.item_metadata(candidate), "tree", None)
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree,
                                  is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
            return candidate, manager.restore(candidate, args=ocp.args.StandardRestore(target))
        except Exception as e:
            log.warning("checkpoint at step %d cannot be restored: %s", candidate, e)
    raise CheckpointError(f"no checkpoint in {directory} can be restored")
