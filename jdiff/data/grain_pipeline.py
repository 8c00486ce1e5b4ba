"""A grain input pipeline of per-process batches, behind the same interface as `DataIterator`.

    it = GrainIterator(load_mnist5k(), batch_size=256, seed=0,
                       process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)                               # {"x": (256/K, 28, 28, 1), "label": (256/K,)}
    state.data_position == it.position             # what a checkpoint stores; resume:
    GrainIterator(..., position=saved)             # the same batches from there on

The pipeline is grain's random-access `MapDataset`:

    MapDataset.range(N)[k::K]          process k's share of the example indices (grain's slicing)
      .shuffle(seed)                   a seeded permutation of that share ...
      .batch(B / K, drop_remainder)    ... cut into local batches of indices (the few left over
      .repeat()                        are skipped), reshuffled every epoch (grain reseeds per epoch)
      .map(gather [+ transform])       the examples of a batch, one vectorized gather
      .to_iter_dataset(ReadOptions)    read ahead by `num_threads` threads, `prefetch` batches

Batch p of a process is a pure function of (seed, p, process_index, process_count), so grain's
iterator state is the single number {"next_index": p}: `position` (the int the train state
checkpoints as data_position) is that state, `get_state()`/`set_state()` exchange it with grain,
and a run resumed from a checkpoint continues with exactly the batches it would have seen.
Unlike DataIterator, each process shuffles its own share of the data, so the batch order depends
on the process count: resume with the same number of processes for identical batches.

`transform` (optional) maps a batch dict of numpy arrays to a batch dict (augmentation, decoding);
it runs in grain's reader threads.
"""

from __future__ import annotations

from collections.abc import Callable

import grain
import numpy as np

from jdiff.data.iterator import BatchIterator, DataIterator, _as_arrays, _check_sharding

__all__ = ["PIPELINES", "GrainIterator", "make_iterator"]

PIPELINES = ("auto", "grain", "memory")


class GrainIterator:
    """Endless shuffled minibatches {"x": ..., "label": ...} of numpy arrays, read by grain.

    arrays, batch_size, seed, process_index, process_count, position, shuffle: as DataIterator
        (batch_size is the global batch; each process gets batch_size / process_count examples).
    transform: optional batch dict -> batch dict, applied in the reader threads.
    num_threads: grain reader threads (0: read in the calling thread).
    prefetch: batches read ahead.

    `next(it)` returns the next local batch and increments `position`; `it.batch(p)` reads any
    position without moving; `get_state()` is grain's iterator state ({"next_index": position}).
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
        transform: Callable[[dict], dict] | None = None,
        num_threads: int = 2,
        prefetch: int = 4,
    ):
        self.arrays = _as_arrays(arrays)
        self.num_examples = next(iter(self.arrays.values())).shape[0]
        _check_sharding(batch_size, seed, process_index, process_count, position)
        local = batch_size // process_count
        n_local = len(range(process_index, self.num_examples, process_count))
        if local > n_local:
            raise ValueError(
                f"`batch_size`={batch_size} exceeds the {self.num_examples} examples in `arrays` "
                f"({n_local} for each of {process_count} processes, {local} per local batch)"
            )
        if num_threads < 0 or prefetch < 0:
            raise ValueError(f"`num_threads` and `prefetch` must be >= 0; got {num_threads}, {prefetch}")
        self.batch_size, self.local_batch_size = batch_size, local
        self.seed, self.shuffle = int(seed), shuffle
        self.process_index, self.process_count = process_index, process_count
        self.steps_per_epoch = n_local // local

        indices = grain.MapDataset.range(self.num_examples)[process_index::process_count]
        if shuffle:
            indices = indices.shuffle(seed=self.seed)
        arrays_ = self.arrays

        def gather(idx):
            out = {k: v[idx] for k, v in arrays_.items()}
            return transform(out) if transform is not None else out

        self._dataset = indices.batch(local, drop_remainder=True).repeat().map(gather)
        self._read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        self._iter = None
        self._position = int(position)

    @property
    def position(self) -> int:
        """Batches consumed so far (grain's next_index)."""
        return self._position

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self._position // self.steps_per_epoch

    def batch(self, position: int) -> dict[str, np.ndarray]:
        """This process's batch at `position` (random access), position unchanged."""
        return self._dataset[int(position)]

    def get_state(self) -> dict:
        """grain's iterator state: {"next_index": position}."""
        return {"next_index": self._position}

    def set_state(self, state: dict) -> None:
        """Continue from a `get_state()` dict (e.g. read back from a checkpoint)."""
        position = int(state["next_index"])
        if position < 0:
            raise ValueError(f"`state['next_index']` must be a non-negative int; got {position}")
        self._position, self._iter = position, None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iter is None:
            self._iter = iter(self._dataset.to_iter_dataset(self._read))
            self._iter.set_state({"next_index": self._position})
        out = next(self._iter)
        self._position += 1
        return out

    def __repr__(self):
        return (
            f"GrainIterator(N={self.num_examples}, batch_size={self.batch_size}, seed={self.seed}, "
            f"process={self.process_index}/{self.process_count}, position={self.position})"
        )


def make_iterator(
    arrays,
    batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    position: int = 0,
    *,
    pipeline: str = "auto",
    **grain_options,
) -> BatchIterator:
    """The input pipeline of `arrays`: a GrainIterator ("grain"), a DataIterator ("memory"), or for
    "auto" grain for images (examples of rank 3, (H, W, C)) and DataIterator for vectors (the toy
    2-D sets, where a batch is a few microseconds of numpy). `grain_options` go to GrainIterator."""
    if pipeline not in PIPELINES:
        raise ValueError(f"`pipeline` must be one of {', '.join(PIPELINES)}; got {pipeline!r}")
    if pipeline == "auto":
        named = _as_arrays(arrays)
        pipeline = "grain" if named.get("x", next(iter(named.values()))).ndim == 4 else "memory"
    if pipeline == "grain":
        return GrainIterator(arrays, batch_size, seed, process_index, process_count, position, **grain_options)
    if grain_options:
        raise ValueError(f"{', '.join(grain_options)}: options of the grain pipeline; `pipeline` is {pipeline!r}")
    return DataIterator(arrays, batch_size, seed, process_index, process_count, position)
