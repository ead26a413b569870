"""Devices, mesh and shardings: the same compiled step runs on 1 CPU, 8 GPUs or many hosts.

The mesh has two axes, `data` and `fsdp`. The batch is split over both (every device sees different
examples); parameters, optimizer state and EMA are split over `fsdp` (each large leaf along its
largest divisible dimension) and replicated over `data`. With fsdp=1 this is plain data parallelism.
Multi-host runs call `initialize_distributed()` first; each host then feeds only its slice of the
global batch through `global_batch`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genjax.config import ConfigError

BATCH_AXES = ("data", "fsdp")
log = logging.getLogger(__name__)

# Leaves smaller than this stay replicated under FSDP: sharding them saves nothing and costs a gather.
FSDP_MIN_SIZE = 2**14


def mesh_for(cfg) -> Mesh:
    """The mesh a TrainConfig asks for."""
    return make_mesh(cfg.fsdp, num_devices=cfg.num_devices)


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


def make_mesh(fsdp: int = 1, devices=None, num_devices: int = 0) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all, or the first `num_devices`); data = n // fsdp."""
    devices = list(jax.devices() if devices is None else devices)
    if num_devices:
        if num_devices > len(devices):
            raise ConfigError(f"train.num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    if fsdp < 1 or len(devices) % fsdp:
        raise ConfigError(
            f"train.fsdp={fsdp} does not divide the {len(devices)} available devices; "
            f"use a divisor of {len(devices)}"
        )
    grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
    # Auto axes: jit propagates shardings from the in/out annotations (Explicit axes would make every
    # intermediate's sharding part of its type, which the families' code does not need).
    return Mesh(grid, BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ConfigError(
            f"{what}={global_batch} does not divide over the {n} devices of the mesh; "
            f"use a multiple of {n} (e.g. {max(n, global_batch // n * n)})"
        )
    if global_batch % jax.process_count():
        raise ConfigError(f"{what}={global_batch} does not divide over {jax.process_count()} hosts")


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest dimension that `fsdp` divides; replicate small or indivisible leaves."""
    if fsdp == 1 or math.prod(shape) < FSDP_MIN_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    log.info("fsdp: replicating a leaf of shape %s: no dimension divides by %d", shape, fsdp)
    return P()


def state_sharding(state: Any, mesh: Mesh) -> Any:
    """A NamedSharding per leaf of `state` (concrete or abstract): FSDP-split where it pays."""
    fsdp = mesh.shape["fsdp"]

    def leaf(x):
        shape = getattr(x, "shape", ())
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            return replicated(mesh)
        return NamedSharding(mesh, fsdp_spec(tuple(shape), fsdp))

    return jax.tree.map(leaf, state)


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
