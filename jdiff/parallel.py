"""Multi-process start-up, device meshes, logical-axis sharding rules, and host <-> global arrays.

jdiff runs one SPMD program (`jax.jit` over a global `jax.sharding.Mesh`), on one device or on a
pod: every process runs the same code and owns the devices it addresses (DESIGN.md: no pmap).
The mesh has three named axes,

    data   pure data parallelism: the batch is split, parameters are replicated;
    fsdp   fully sharded data parallelism: the batch is split *and* parameters, optimizer and
           EMA state are split along the dimension their logical axis rules map to "fsdp";
    model  tensor parallelism: parameters split along "model", the batch replicated.

Networks name the axes of their parameters with logical names (`jdiff.models` annotate their
kernels: "embed" for the model width, "mlp" for expanded feed-forward widths, "heads" for
attention projections, "vocab" for class-embedding rows); `rules` map logical names to mesh
axes. A dimension is split only when it divides by the mesh axis's size, so the same rules run
on any mesh; with fsdp = model = 1 everything is replicated.

    initialize_distributed(True)                      # multi-process: before any device is used
    mesh = make_mesh(fsdp=8)                          # data=-1 takes the devices left over
    shardings = param_shardings(params, mesh, FSDP_RULES)
    params = to_global(params, shardings)             # every process passes the same host values
    batch = global_batch(local_numpy_batch, mesh)     # each process passes its own rows

Global arrays are built from host data with `jax.make_array_from_callback` (same values on every
process) or `jax.make_array_from_process_local_data` (each process its rows), never by device_put
onto devices another process owns.
"""

from __future__ import annotations

import math
import os
import re

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "BATCH_AXES",
    "DATA_AXIS",
    "FSDP_AXIS",
    "FSDP_RULES",
    "MESH_AXES",
    "MODEL_AXIS",
    "barrier",
    "batch_shards",
    "data_sharded",
    "global_batch",
    "initialize_distributed",
    "local_batch_size",
    "logical_to_spec",
    "make_mesh",
    "param_shardings",
    "process_info",
    "replicate",
    "replicated",
    "shardings_of",
    "to_global",
    "to_host",
]

DATA_AXIS, FSDP_AXIS, MODEL_AXIS = "data", "fsdp", "model"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, MODEL_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch is split over both: FSDP is data parallelism too

# Logical axis -> mesh axis. Model widths are split over "fsdp" (ZeRO-3 style: each device stores
# 1/fsdp of a weight and the step all-gathers it where it is used); expanded widths and attention
# projections over "model" (Megatron-style tensor parallelism); class-embedding rows never.
FSDP_RULES = (("embed", FSDP_AXIS), ("mlp", MODEL_AXIS), ("heads", MODEL_AXIS), ("vocab", None))

_ENV_ADDRESS, _ENV_COUNT, _ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


# ----------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def initialize_distributed(
    enabled: bool = False,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start JAX's distributed runtime (one call per process, before any device is used).

    enabled: initialize even without any explicit setting: `jax.distributed.initialize()` then
        detects the cluster itself on Cloud TPU VMs, SLURM, Open MPI and Kubernetes.
    coordinator_address: "host:port" of process 0's coordination service (default: the
        JAX_COORDINATOR_ADDRESS environment variable).
    num_processes, process_id: the job's process count and this process's index (default:
        JAX_NUM_PROCESSES and JAX_PROCESS_ID). JAX_LOCAL_DEVICE_IDS is read by jax itself.

    A run is multi-process when `enabled` or when a process count > 1 is given (argument or
    environment), so a launcher only has to export the three variables. Values left unset are
    auto-detected. Returns whether the runtime is initialized; a second call does nothing.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get(_ENV_ADDRESS, "").strip() or None
    num_processes = _env_int(_ENV_COUNT) if num_processes is None else num_processes
    process_id = _env_int(_ENV_ID) if process_id is None else process_id
    if not (enabled or (num_processes or 1) > 1):
        return False
    if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 1):
        raise ValueError(
            f"`num_processes` must be a positive int (or None: {_ENV_COUNT} / auto-detect); got {num_processes!r}"
        )
    if process_id is not None and not (
        isinstance(process_id, int) and process_id >= 0 and (num_processes is None or process_id < num_processes)
    ):
        raise ValueError(
            f"`process_id` must be an int in [0, num_processes={num_processes}) (or None: {_ENV_ID} / "
            f"auto-detect); got {process_id!r}"
        )
    if coordinator_address is not None and not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", coordinator_address):
        raise ValueError(
            f"`coordinator_address` must be 'host:port' (or None: {_ENV_ADDRESS} / auto-detect); "
            f"got {coordinator_address!r}"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True


def process_info() -> tuple[int, int]:
    """(process_index, process_count): which data shard this process reads, out of how many."""
    return jax.process_index(), jax.process_count()


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier `name` (nothing to wait for with one process),
    e.g. so that no process reads a workdir another has started writing."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------
# Meshes
# ----------------------------------------------------------------------------------


def _mesh_devices(num_devices: int | None) -> list:
    """`num_devices` devices ordered by process (all when None): the same count from every process."""
    n_proc = jax.process_count()
    by_process = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if num_devices is None:
        return by_process
    total = len(by_process)
    if not 1 <= num_devices <= total or num_devices % n_proc:
        raise ValueError(
            f"`num_devices` must be in 1..{total} (the visible devices) and a multiple of the "
            f"{n_proc} process(es); got {num_devices}"
        )
    per = num_devices // n_proc
    return [d for p in range(n_proc) for d in [d for d in by_process if d.process_index == p][:per]]


def make_mesh(num_devices: int | None = None, *, data: int = -1, fsdp: int = 1, model: int = 1) -> Mesh:
    """A ("data", "fsdp", "model") mesh over `num_devices` devices (default: all of them).

    data, fsdp, model: the axis sizes; one of them may be -1 (the devices left over). Their
    product must be the device count. With several processes each contributes num_devices /
    process_count of its own devices, and the devices are ordered by process, so every process
    owns a contiguous block of the batch.
    """
    devices = _mesh_devices(num_devices)
    sizes = {DATA_AXIS: data, FSDP_AXIS: fsdp, MODEL_AXIS: model}
    if (
        any(not isinstance(s, (int, np.integer)) or (s < 1 and s != -1) for s in sizes.values())
        or list(sizes.values()).count(-1) > 1
    ):
        raise ValueError(f"mesh axis sizes `data`, `fsdp`, `model` must be positive ints, at most one -1; got {sizes}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
        if len(devices) % known:
            raise ValueError(f"mesh axis sizes {sizes}: {known} does not divide the {len(devices)} devices")
        sizes = {k: (len(devices) // known if s == -1 else s) for k, s in sizes.items()}
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"mesh axis sizes {sizes} (`data` x `fsdp` x `model`) must multiply to the {len(devices)} devices"
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(tuple(sizes.values())), MESH_AXES)


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_shards(mesh: Mesh) -> int:
    """How many ways a batch is split: the product of the mesh's "data" and "fsdp" sizes."""
    return math.prod(mesh.shape[a] for a in _batch_axes(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (scalars, keys, metrics; parameters under pure data parallelism)."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: its leading (example) axis split over "data" and "fsdp"."""
    return NamedSharding(mesh, PartitionSpec(_batch_axes(mesh) or None))


# ----------------------------------------------------------------------------------
# Logical axis rules
# ----------------------------------------------------------------------------------


def _check_rules(rules, mesh: Mesh) -> dict:
    out = {}
    for rule in rules or ():
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ValueError(
                f"`rules` must be (logical name, mesh axis | None | tuple of mesh axes) pairs; got {rule!r}"
            )
        name, axes = rule
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        unknown = [a for a in axes if a not in mesh.axis_names]
        if unknown:
            raise ValueError(
                f"`rules`: {name!r} maps to {unknown}, not an axis of the mesh; accepted: "
                f"{', '.join(mesh.axis_names)} or None"
            )
        out.setdefault(name, axes)  # the first rule for a name wins, as in flax
    return out


def logical_to_spec(names, shape, mesh: Mesh, rules) -> PartitionSpec:
    """The PartitionSpec of an array of `shape` whose axes have logical `names`.

    A dimension is split over the mesh axes its name maps to, unless one of them is already used
    by an earlier dimension, their size is 1, or the dimension does not divide by their size
    (then it is replicated). Unknown names and None are replicated.
    """
    table = _check_rules(rules, mesh)
    if names is None:
        return PartitionSpec()
    if len(names) != len(shape):
        raise ValueError(f"logical axis names {tuple(names)} do not match the array's shape {tuple(shape)}")
    used, spec = set(), []
    for name, dim in zip(names, shape):
        axes = tuple(a for a in table.get(name, ()) if a not in used)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or size == 1 or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def param_shardings(tree, mesh: Mesh, rules=FSDP_RULES):
    """NamedShardings for the leaves of `tree` (an nnx State, arrays or ShapeDtypeStructs) from the
    logical names its nnx Variables carry (`out_sharding` metadata, e.g. set with
    `nnx.with_partitioning` or a layer's `kernel_metadata`), resolved by `rules`. Unannotated
    leaves are replicated. Same structure as `tree`."""

    def one(x):
        if _is_variable(x):
            names = x.get_metadata().get("out_sharding")
            return x.replace(NamedSharding(mesh, logical_to_spec(names, np.shape(x.get_value()), mesh, rules)))
        return replicated(mesh)

    _check_rules(rules, mesh)
    return jax.tree.map(one, tree, is_leaf=_is_variable)


def shardings_of(tree):
    """The sharding of every array leaf of `tree` (for jit's in/out_shardings)."""
    return jax.tree.map(lambda x: x.sharding, tree)


# ----------------------------------------------------------------------------------
# Host <-> global arrays
# ----------------------------------------------------------------------------------


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _put(x, sharding):
    if _is_key(x):
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global: reshard on device
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_global(tree, shardings):
    """Global arrays of `tree`'s values laid out as `shardings` (a tree of the same structure, or
    one Sharding for every leaf). Every process must pass the same values (a state built from
    the same seed); each fills only the shards of its own devices."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: _put(x, shardings), tree)
    return jax.tree.map(_put, tree, shardings)


def replicate(tree, mesh: Mesh):
    """`to_global` with a full copy of every leaf on every device of `mesh`."""
    return to_global(tree, replicated(mesh))


def to_host(x) -> np.ndarray:
    """The whole value of a global array as numpy, on every process (a fully replicated array is
    read from a local copy; a sharded one is gathered across processes)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The examples each process contributes to a global batch; checks that the batch splits evenly
    over the mesh's batch shards ("data" x "fsdp") and the processes."""
    shards, n_proc = batch_shards(mesh), jax.process_count()
    if global_batch_size < 1 or global_batch_size % shards or global_batch_size % n_proc:
        raise ValueError(
            f"`batch_size` {global_batch_size} must be a positive multiple of the batch shards "
            f"(data x fsdp = {shards}) and of the process count ({n_proc})"
        )
    return global_batch_size // n_proc


def global_batch(local_tree, mesh: Mesh):
    """Assemble each process's host-local batch (numpy leaves, leading axis = this process's
    examples, a contiguous block of the global batch) into global arrays split over "data" and
    "fsdp"; with one process this is a sharded copy to the devices."""
    sharding = data_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree)
