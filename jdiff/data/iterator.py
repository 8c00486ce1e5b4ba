"""Deterministic, resumable, per-process-sharded minibatches of in-memory arrays.

The batch at integer `position` p (batches consumed so far) is a pure function of
(seed, p): with S = N // batch_size steps per epoch, epoch e = p // S is shuffled by a
permutation drawn from numpy's PCG64 seeded with (seed, e), and global batch i = p % S is
that permutation's slice [i B, (i + 1) B). Process k of K takes the k-th of K equal
contiguous slices of every global batch, so processes see disjoint examples whose union
is the global batch. The N mod B examples left over by an epoch's permutation are skipped
in that epoch (a different few each epoch), so every batch has the same shape and a
jitted step never recompiles.

Saving the single int `position` in a checkpoint and building a new iterator with it
resumes exactly where the old one stopped, on any number of processes whose global batch
size is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["BatchIterator", "DataIterator", "holdout_split"]


@runtime_checkable
class BatchIterator(Protocol):
    """What a train loop needs of an input pipeline (DataIterator, jdiff.data.GrainIterator).

    `next(it)` is this process's share of the next global batch (a dict of numpy arrays with
    `local_batch_size` rows); `position` counts the batches consumed and is all a checkpoint must
    store: an iterator built with `position=p` (or given `set_state(get_state())`) continues with
    exactly the batches the old one would have produced.
    """

    batch_size: int
    local_batch_size: int

    @property
    def position(self) -> int: ...

    def batch(self, position: int) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...

    def __next__(self) -> dict[str, np.ndarray]: ...


def _check_sharding(batch_size: int, seed: int, process_index: int, process_count: int, position: int) -> None:
    """The arguments every iterator shares: this process among process_count, a global batch that
    splits evenly over them, a non-negative seed and position (a ValueError naming them otherwise)."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= `process_index` < `process_count`; got {process_index}, {process_count}")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"`batch_size` (global) must be a positive multiple of process_count={process_count}; got {batch_size}"
        )
    if seed < 0 or position < 0:
        raise ValueError(f"`seed` and `position` must be non-negative ints; got {seed}, {position}")


def _as_arrays(arrays, name="arrays") -> dict[str, np.ndarray]:
    if hasattr(arrays, "_asdict"):  # a Dataset (NamedTuple) from a jdiff.data loader
        arrays = arrays._asdict()
    if not isinstance(arrays, Mapping) or not arrays:
        raise TypeError(f"`{name}` must be a non-empty mapping of arrays (or a jdiff.data Dataset); got {type(arrays)}")
    out = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    sizes = {k: v.shape[0] if v.ndim else None for k, v in out.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"every array in `{name}` needs the same leading (example) axis; got sizes {sizes}")
    return out


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class DataIterator:
    """Endless shuffled minibatches {"x": ..., "label": ...} of numpy arrays.

    arrays: mapping name -> array with a shared leading axis of N examples (a Dataset
        from a loader works: its None label is dropped). Each batch is a dict with the
        same keys.
    batch_size: the *global* batch size B, over all processes; must divide by
        process_count. Each process gets B / process_count examples per batch.
    seed: non-negative int; fixes every epoch's permutation.
    process_index, process_count: this process's index and the number of processes
        (jax.process_index(), jax.process_count() on a multi-host job).
    position: number of batches already consumed (the int to checkpoint); iteration
        continues from there.
    shuffle: False keeps the data order (epochs repeat the same batches).

    `next(it)` returns the batch at `it.position` and increments it; `it.batch(p)` reads
    any position without moving.
    """

    def __init__(
        self,
        arrays,
        batch_size: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        position: int = 0,
        *,
        shuffle: bool = True,
    ):
        self.arrays = _as_arrays(arrays)
        self.num_examples = next(iter(self.arrays.values())).shape[0]
        _check_sharding(batch_size, seed, process_index, process_count, position)
        if batch_size > self.num_examples:
            raise ValueError(f"`batch_size`={batch_size} exceeds the {self.num_examples} examples in `arrays`")
        self.batch_size = batch_size
        self.local_batch_size = batch_size // process_count
        self.seed = int(seed)
        self.process_index = process_index
        self.process_count = process_count
        self.position = int(position)
        self.shuffle = shuffle
        self.steps_per_epoch = self.num_examples // batch_size
        self._cached_epoch, self._cached_perm = None, None

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self.position // self.steps_per_epoch

    def indices(self, position: int) -> np.ndarray:
        """The example indices of this process's share of global batch `position`."""
        epoch, step = divmod(position, self.steps_per_epoch)
        if epoch != self._cached_epoch:
            perm = _permutation(self.seed, epoch, self.num_examples) if self.shuffle else np.arange(self.num_examples)
            self._cached_epoch, self._cached_perm = epoch, perm
        start = step * self.batch_size + self.process_index * self.local_batch_size
        return self._cached_perm[start : start + self.local_batch_size]

    def batch(self, position: int) -> dict[str, np.ndarray]:
        """This process's batch at `position` (pure in (seed, position, process)), position unchanged."""
        idx = self.indices(position)
        return {k: v[idx] for k, v in self.arrays.items()}

    def get_state(self) -> dict:
        """{"next_index": position}, the same state as GrainIterator's."""
        return {"next_index": self.position}

    def set_state(self, state: dict) -> None:
        """Continue from a `get_state()` dict."""
        position = int(state["next_index"])
        if position < 0:
            raise ValueError(f"`state['next_index']` must be a non-negative int; got {position}")
        self.position = position

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        out = self.batch(self.position)
        self.position += 1
        return out

    def __repr__(self):
        return (
            f"DataIterator(N={self.num_examples}, batch_size={self.batch_size}, seed={self.seed}, "
            f"process={self.process_index}/{self.process_count}, position={self.position})"
        )


def holdout_split(arrays, holdout: float | int, seed: int = 0):
    """Split into (train, held_out) dicts deterministically from `seed`.

    holdout: a fraction in (0, 1) of the examples, or an int count, to hold out. The same
    (data, holdout, seed) always gives the same split, on every process.
    """
    arrays = _as_arrays(arrays)
    n = next(iter(arrays.values())).shape[0]
    k = int(round(holdout * n)) if isinstance(holdout, float) else int(holdout)
    if not 0 < k < n:
        raise ValueError(f"`holdout` must be a fraction in (0, 1) or a count in [1, N); got {holdout} with N={n}")
    # Seed stream distinct from DataIterator's (seed, epoch) so a split never equals a batch order.
    perm = np.random.default_rng([seed, 2**31 - 1, 7]).permutation(n)
    held, train = np.sort(perm[:k]), np.sort(perm[k:])
    return {key: v[train] for key, v in arrays.items()}, {key: v[held] for key, v in arrays.items()}
