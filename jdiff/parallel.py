"""Device meshes, shardings and host-local <-> global arrays for data-parallel training.

jdiff trains data-parallel with `jax.jit` over a one-axis `jax.sharding.Mesh` named
"data": the batch is sharded along its leading axis, parameters and optimizer state are
replicated (DESIGN.md: no pmap). On a pod every process runs the same program on its own
shard of the data; `global_batch` assembles the process-local shards into one global
`jax.Array` with `jax.make_array_from_process_local_data`.

    mesh = make_mesh()                        # all devices on the "data" axis
    batch = global_batch(local_numpy_batch, mesh)
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "data_sharded",
    "global_batch",
    "initialize_distributed",
    "local_batch_size",
    "make_mesh",
    "process_info",
    "replicate",
    "replicated",
]

DATA_AXIS = "data"


def initialize_distributed(enabled: bool) -> None:
    """Call `jax.distributed.initialize()` (multi-host pods and clusters) when `enabled`.

    On TPU VMs and SLURM/Open MPI clusters jax discovers the coordinator itself; it must run
    before any other jax call touches a device. Single-process runs pass enabled=False.
    """
    if enabled:
        jax.distributed.initialize()


def process_info() -> tuple[int, int]:
    """(process_index, process_count): which data shard this host reads, out of how many."""
    return jax.process_index(), jax.process_count()


def make_mesh(num_devices: int | None = None, axis: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh over the first `num_devices` devices (all devices when None)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"`num_devices` must be in 1..{len(devices)} (the visible devices); got {num_devices}")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (axis,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh, axis: str = DATA_AXIS) -> NamedSharding:
    """The sharding of a batch: its leading (example) axis split across the `axis` devices."""
    return NamedSharding(mesh, PartitionSpec(axis))


def replicate(tree, mesh: Mesh):
    """Place every leaf of `tree` on every device of `mesh` (one global, replicated array)."""
    return jax.device_put(tree, replicated(mesh))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The examples each process contributes to a global batch; checks it divides evenly."""
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if global_batch_size % n_dev:
        raise ValueError(
            f"`batch_size` {global_batch_size} must be a multiple of the number of devices ({n_dev})"
        )
    return global_batch_size // n_proc


def global_batch(local_tree, mesh: Mesh, axis: str = DATA_AXIS):
    """Assemble each process's host-local batch (numpy leaves, leading axis = local examples)
    into global arrays sharded along `axis`; with one process this is a sharded device_put."""
    sharding = data_sharded(mesh, axis)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree)
