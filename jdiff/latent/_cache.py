"""A latent dataset cache: a data set encoded once into normalized latents, in per-process shards.

    ds = latent.latent_cache(directory, ae, dataset,                       # every process calls it
                             process_index=jax.process_index(), process_count=jax.process_count())
    it = data.DataIterator(ds, batch_size, seed=0, ...)                     # training never runs the encoder

Process k of K encodes the k-th of K contiguous slices of the data set (rows [k N / K, (k + 1) N / K))
and writes it as `shard-0000k-of-0000K.npz` (written to a temporary name and renamed, so a shard file
is either complete or absent); after a barrier every process reads all shards in order, so the cache
is the whole data set's latents in the data set's order, whatever K was. Each shard carries the
cache's identity (a hash of the data, a hash of the autoencoder's weights and latent normalization,
the posterior mode or sample, N, K): a rerun reuses every shard that is already there and encodes
only the missing ones (an encoding job stopped half way resumes), and a shard of another data set or
autoencoder is an error that names it instead of silently training on stale latents.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from jdiff.data import Dataset
from jdiff.latent._scale import encode_dataset
from jdiff.models.autoencoder import AutoencoderKL

__all__ = [
    "CACHE_FORMAT",
    "autoencoder_fingerprint",
    "dataset_fingerprint",
    "latent_cache",
    "read_latent_cache",
    "shard_bounds",
    "write_latent_shard",
]

CACHE_FORMAT = 1
_SHARD = "shard-{:05d}-of-{:05d}.npz"
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.npz$")


def dataset_fingerprint(dataset) -> str:
    """A sha256 of a Dataset's arrays (shapes, dtypes and every byte of x and label)."""
    h = hashlib.sha256()
    for name, a in (("x", dataset.x), ("label", dataset.label)):
        if a is None:
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def autoencoder_fingerprint(autoencoder: AutoencoderKL) -> str:
    """A sha256 of an autoencoder's parameters and latent normalization (scale, shift)."""
    h = hashlib.sha256()
    state = nnx.state(autoencoder, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        a = np.ascontiguousarray(jax.device_get(var[...]))
        h.update(f"{path}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    h.update(np.asarray([autoencoder.scale[...], autoencoder.shift[...]], np.float64).tobytes())
    return h.hexdigest()


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of process `process_index`'s contiguous share of `num_examples` rows."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= `process_index` < `process_count`; got {process_index}, {process_count}")
    return num_examples * process_index // process_count, num_examples * (process_index + 1) // process_count


def _identity(autoencoder, dataset, process_count, key, dtype) -> dict:
    return {
        "format": CACHE_FORMAT,
        "num_examples": int(np.shape(dataset.x)[0]),
        "process_count": int(process_count),
        "dataset": dataset_fingerprint(dataset),
        "autoencoder": autoencoder_fingerprint(autoencoder),
        "posterior": "mode" if key is None else f"sample:{np.asarray(jax.random.key_data(key)).tolist()}",
        "latent_shape": list(autoencoder.latent_shape(np.shape(dataset.x)[1:])),
        "dtype": np.dtype(dtype).name,
        "scale": float(autoencoder.scale[...]),
        "shift": float(autoencoder.shift[...]),
    }


def _shard_meta(path) -> dict:
    with np.load(path) as f:
        return json.loads(str(f["meta"]))


def _atomic_savez(path, **arrays):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _mismatch(path, have: dict, want: dict) -> ValueError:
    fields = [k for k in want if have.get(k) != want[k]]
    return ValueError(
        f"latent cache shard {path} was written for another {' / '.join(fields) or 'format'} "
        f"(fields that differ: {', '.join(fields)}); delete the cache directory or point the cache "
        f"elsewhere"
    )


def write_latent_shard(
    directory: str,
    autoencoder: AutoencoderKL,
    dataset,
    *,
    process_index: int = 0,
    process_count: int = 1,
    batch_size: int = 256,
    key=None,
    dtype=np.float32,
) -> bool:
    """Encode this process's share of `dataset` into `directory` unless that shard is already there.

    dataset: a `jdiff.data.Dataset` (x images, label or None); every process passes the same one.
    key: None caches the posterior modes; a key caches one posterior sample per image (the same
        draw on a rerun: batch i of shard k uses fold_in(fold_in(key, k), i)).
    dtype: the stored latents' dtype (np.float16 halves the cache).
    Returns True if it encoded the shard, False if a matching shard existed (raises ValueError if
    a shard of another data set / autoencoder / posterior is there).
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"`dataset` must be a jdiff.data.Dataset (x, label); got {type(dataset).__name__}")
    start, stop = shard_bounds(int(np.shape(dataset.x)[0]), process_index, process_count)
    meta = _identity(autoencoder, dataset, process_count, key, dtype)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, _SHARD.format(process_index, process_count))
    if os.path.exists(path):
        have = _shard_meta(path)
        if {k: have.get(k) for k in meta} != meta:
            raise _mismatch(path, have, meta)
        return False
    # Every writer puts the same meta.json (atomically): the cache's identity, read back by every process.
    tmp = os.path.join(directory, f"meta.json.tmp{process_index}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(directory, "meta.json"))
    kshard = None if key is None else jax.random.fold_in(key, process_index)
    z = encode_dataset(autoencoder, np.asarray(dataset.x)[start:stop], batch_size=batch_size, key=kshard, dtype=dtype)
    arrays = {"x": z, "meta": np.asarray(json.dumps({**meta, "start": start, "stop": stop}))}
    if dataset.label is not None:
        arrays["label"] = np.asarray(dataset.label)[start:stop]
    _atomic_savez(path, **arrays)
    return True


def read_latent_cache(directory: str) -> tuple[Dataset, dict]:
    """(Dataset of every cached latent and label in the data set's order, the cache's meta dict).

    Raises FileNotFoundError listing the shards that are missing (processes that have not
    finished), and ValueError if a shard belongs to another cache.
    """
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: `directory` is not a latent cache (write_latent_shard)")
    with open(meta_path) as f:
        meta = json.load(f)
    k = meta["process_count"]
    paths = [os.path.join(directory, _SHARD.format(i, k)) for i in range(k)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"latent cache {directory} is incomplete: missing {', '.join(map(os.path.basename, missing))}"
            f" (the processes that write them have not finished)"
        )
    xs, labels, stop_prev = [], [], 0
    for p in paths:
        with np.load(p) as f:
            have = json.loads(str(f["meta"]))
            if {key: have.get(key) for key in meta} != meta or have["start"] != stop_prev:
                raise _mismatch(p, have, meta)
            stop_prev = have["stop"]
            xs.append(f["x"])
            labels.append(f.get("label", None))
    label = None if labels[0] is None else np.concatenate(labels)
    return Dataset(np.concatenate(xs), label), meta


def latent_cache(
    directory: str,
    autoencoder: AutoencoderKL,
    dataset,
    *,
    process_index: int = 0,
    process_count: int = 1,
    batch_size: int = 256,
    key=None,
    dtype=np.float32,
    barrier: Callable[[], None] | None = None,
) -> tuple[Dataset, dict]:
    """Encode this process's shard if missing, wait for every process, read the whole cache.

    barrier: called between writing and reading; default: nothing for one process,
        `jax.experimental.multihost_utils.sync_global_devices` for several.
    Returns (Dataset of latents and labels, meta dict with the scale and shift it was built with).
    """
    write_latent_shard(
        directory,
        autoencoder,
        dataset,
        process_index=process_index,
        process_count=process_count,
        batch_size=batch_size,
        key=key,
        dtype=dtype,
    )
    if barrier is not None:
        barrier()
    elif process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jdiff latent cache {os.path.abspath(directory)}")
    return read_latent_cache(directory)
