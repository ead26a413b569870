"""Devices, mesh and shardings: the same compiled step runs on 1 CPU, 8 GPUs or many hosts.

The mesh has three axes, `data`, `fsdp` and `model`. The batch is split over `data` and `fsdp` (every
device of a `model` group sees the same examples); parameters, optimizer state and EMA are split over
`fsdp` (each large leaf along its largest divisible dimension) and replicated over `data`. A family may
name, per parameter, one dimension to split over `model` (tensor parallelism: the transformer splits
attention heads and the MLP's hidden units, Megatron-style); jit's sharding propagation does the rest.
With fsdp = model = 1 this is plain data parallelism. Multi-host runs call `initialize_distributed()`
first; each host then feeds only its slice of the global batch through `global_batch`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genjax.config import ConfigError

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")
log = logging.getLogger(__name__)

# Leaves smaller than this stay replicated under FSDP: sharding them saves nothing and costs a gather.
FSDP_MIN_SIZE = 2**14


def mesh_for(cfg) -> Mesh:
    """The mesh a TrainConfig asks for."""
    return make_mesh(cfg.fsdp, num_devices=cfg.num_devices, model=cfg.model_parallel)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins a multi-host run. With no arguments JAX reads the cluster from its environment
    (SLURM, TPU metadata, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def make_mesh(fsdp: int = 1, devices=None, num_devices: int = 0, model: int = 1) -> Mesh:
    """A (data, fsdp, model) mesh over `devices` (default: all, or the first `num_devices`);
    data = n // (fsdp * model)."""
    devices = list(jax.devices() if devices is None else devices)
    if num_devices:
        if num_devices > len(devices):
            raise ConfigError(f"train.num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    for name, size in (("fsdp", fsdp), ("model_parallel", model)):
        if size < 1 or len(devices) % size:
            raise ConfigError(f"train.{name}={size} does not divide the {len(devices)} available devices; "
                              f"use a divisor of {len(devices)}")
    if len(devices) % (fsdp * model):
        raise ConfigError(f"train.fsdp * train.model_parallel = {fsdp * model} does not divide the "
                          f"{len(devices)} available devices")
    grid = np.asarray(devices).reshape(len(devices) // (fsdp * model), fsdp, model)
    # Auto axes: jit propagates shardings from the in/out annotations (Explicit axes would make every
    # intermediate's sharding part of its type, which the families' code does not need).
    return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data` and `fsdp` (replicated over `model`)."""
    return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % n:
        raise ConfigError(
            f"{what}={global_batch} does not divide over the {n} batch shards (data x fsdp) of the mesh; "
            f"use a multiple of {n} (e.g. {max(n, global_batch // n * n)})"
        )
    if global_batch % jax.process_count():
        raise ConfigError(f"{what}={global_batch} does not divide over {jax.process_count()} hosts")


def param_spec(shape: tuple[int, ...], fsdp: int, model: int = 1, model_dim: int | None = None) -> P:
    """Split `model_dim` (if given and divisible) over `model`, then the largest remaining dimension
    that `fsdp` divides over `fsdp`; small or indivisible leaves stay replicated."""
    spec: list = [None] * len(shape)
    if model > 1 and model_dim is not None:
        dim = model_dim % len(shape)
        if shape[dim] % model == 0:
            spec[dim] = "model"
        else:
            log.info("model: replicating dim %d of a leaf of shape %s: not divisible by %d", dim, shape, model)
    if fsdp > 1 and math.prod(shape) >= FSDP_MIN_SIZE:
        free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % fsdp == 0]
        if free:
            spec[max(free, key=lambda d: shape[d])] = "fsdp"
        else:
            log.info("fsdp: replicating a leaf of shape %s: no free dimension divides by %d", shape, fsdp)
    return P(*spec)


def _model_dim(path: str, rules: Mapping[str, int]) -> int | None:
    for suffix, dim in rules.items():
        if path == suffix or path.endswith("/" + suffix):
            return dim
    return None


def state_sharding(state: Any, mesh: Mesh, model_rules: Mapping[str, int] | None = None) -> Any:
    """A NamedSharding per leaf of `state` (concrete or abstract): FSDP-split where it pays.

    `model_rules` maps a parameter's path suffix ('attn/qkv/kernel') to the dimension (negative counts
    from the end, so layer-stacked leaves match too) to split over the mesh's `model` axis; it applies
    to the params, their optimizer moments and EMA alike, all of which end in the same path.
    """
    fsdp, model = mesh.shape["fsdp"], mesh.shape.get("model", 1)

    def leaf(path, x):
        shape = tuple(getattr(x, "shape", ()))
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key) or not shape:
            return replicated(mesh)
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        return NamedSharding(mesh, param_spec(shape, fsdp, model, _model_dim(name, model_rules or {})))

    return jax.tree_util.tree_map_with_path(leaf, state)


def constrain_to_batch(x: jax.Array) -> jax.Array:
    """Pins an array made inside a step (generated samples, noise) to the batch sharding.

    Needed where XLA's sharding propagation would otherwise pick a layout for it: on a 2 x 4
    (data x fsdp) mesh, a GAN discriminator's gradient on generated images came out wrong (forward
    values right, gradient norm 30% off) until the images were constrained. A no-op outside a mesh
    (the loop traces steps under `jax.set_mesh`).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """This host's slice of the batch (numpy pytree) -> global jax arrays sharded over the mesh."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a sharded pytree (its largest shard per leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        if hasattr(x, "addressable_shards") and x.addressable_shards:
            total += x.addressable_shards[0].data.nbytes
        elif hasattr(x, "nbytes"):
            total += x.nbytes
    return total


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all processes, so that every host takes the same decision.

    A decision made from local events (a SIGTERM that reached one host, one host's clock saying a
    checkpoint is due) must be agreed before acting on it: a host that saves or stops alone leaves the
    others waiting in the next collective forever. One tiny compiled all-reduce over every device; on
    one process it returns `flags` with no device work (~4 us).
    """
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    rows, any_over_rows = _agreement_fns()
    local = np.tile(np.asarray(flags, np.int32), (jax.local_device_count(), 1))  # one row per device
    agreed = any_over_rows(jax.make_array_from_process_local_data(rows, local))
    return tuple(bool(x) for x in np.asarray(agreed.addressable_data(0)))


@functools.cache
def _agreement_fns():
    """(sharding of one row of flags per device, compiled column-wise max replicated to every device)."""
    mesh = Mesh(np.asarray(jax.devices()), ("all",))
    return (NamedSharding(mesh, P("all")),
            jax.jit(lambda x: x.max(axis=0), out_shardings=NamedSharding(mesh, P())))
