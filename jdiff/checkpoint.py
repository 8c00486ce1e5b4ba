"""Checkpoints of the whole train state with orbax (the one module that imports orbax).

    ckpt = Checkpointer(workdir + "/checkpoints", save_every=1000, max_to_keep=3)
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)          # `state` gives the structure, dtypes, shardings
    ...
    ckpt.save(step, state)                   # async; only every `save_every` steps unless force
    ckpt.close()                             # waits for the last async save

A state with a non-finite floating-point value is never written (`save` raises). On
preemptible machines `PreemptionFlag` turns SIGTERM into a decision the train loop polls,
`flag.reached(step)`, so it writes a final checkpoint and exits cleanly instead of dying
mid-step. In a multi-process job the decision is agreed: a SIGTERM to any one process makes every
process stop after the same step (JAX's preemption sync point), so no process waits forever in a
collective another one has left.

Directories go through `etils.epath`: local paths are made absolute, `gs://bucket/run` and other
cloud URLs pass through untouched (`as_path`, `is_url`); `write_atomic` writes a workdir file on either.
"""

from __future__ import annotations

import signal
import threading

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jdiff._files import as_path, is_url, write_atomic

__all__ = [
    "Checkpointer",
    "NonFiniteCheckpointError",
    "PreemptionFlag",
    "abstract_like",
    "as_path",
    "is_url",
    "write_atomic",
]


class NonFiniteCheckpointError(ValueError):
    """Raised instead of writing a checkpoint that contains NaN or infinity."""


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _keys_to_data(tree):
    """Typed PRNG keys (nnx RNG streams hold them) as their raw uint32 data: orbax stores plain arrays."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree, like):
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x, tree, like
    )


def abstract_like(tree):
    """Shapes, dtypes and shardings of `tree` (the restore target), without its values."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, _keys_to_data(tree))


@jax.jit
def _all_finite(leaves):
    return [jnp.all(jnp.isfinite(x)) for x in leaves]


def _nonfinite_leaves(tree) -> list[str]:
    """Key paths of the floating-point leaves with a NaN or inf (one program for the whole tree,
    whose scalar results every process can read, however the leaves are sharded)."""
    flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if jnp.issubdtype(x.dtype, jnp.inexact)]
    finite = jax.device_get(_all_finite([x for _, x in flat]))
    return [jax.tree_util.keystr(p) for (p, _), ok in zip(flat, finite) if not ok]


class Checkpointer:
    """An orbax CheckpointManager over `directory` for one pytree (the train state).

    directory: where step directories are written (a local path, made absolute, or a gs:// URL;
        created on first save).
    save_every: `save(step, ...)` writes only when step is a multiple of this (or force=True).
    max_to_keep: keep the K most recent checkpoints.
    async_save: write in a background thread while training continues.
    """

    def __init__(self, directory: str, *, save_every: int = 1000, max_to_keep: int = 3, async_save: bool = True):
        if save_every < 1:
            raise ValueError(f"`save_every` must be a positive number of steps; got {save_every}")
        self.directory = as_path(directory)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._last_saved = self._manager.latest_step()

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None for a fresh directory."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Save `state` at `step` if due (or `force`) and not saved yet; returns whether a save was started.

        Raises NonFiniteCheckpointError (naming the leaves) rather than write NaN/inf.
        """
        # Our own interval rule: orbax's should_save also saves the first step it sees.
        if not (force or step % self.save_every == 0) or step == self._last_saved:
            return False
        bad = _nonfinite_leaves(state)
        if bad:
            raise NonFiniteCheckpointError(
                f"refusing to write checkpoint {step}: non-finite values in {', '.join(bad[:5])}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            )
        self._last_saved = step
        return self._manager.save(int(step), args=ocp.args.StandardSave(_keys_to_data(state)), force=True)

    def restore(self, target, step: int | None = None):
        """Restore the checkpoint at `step` (default: the latest) into `target`'s structure.

        target: a pytree like the saved one (arrays or jax.ShapeDtypeStruct); the restored
            arrays get its dtypes and shardings.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        restored = self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract_like(target)))
        return _data_to_keys(restored, target)

    def wait(self) -> None:
        """Block until the pending async save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class PreemptionFlag:
    """Context manager that turns SIGTERM into a stop decision, `reached(step)`, for the train loop.

    Preemptible TPU VMs and most schedulers send SIGTERM some seconds before killing a job; the
    loop then saves a checkpoint and returns. Call `reached(step)` once after every step, with
    the step count, on every process.

    One process (no `jax.distributed` runtime): SIGTERM sets `.requested` (a Python handler,
    restored on exit) and `reached` returns it. Outside the main thread, where Python cannot
    install signal handlers, only `request()` sets it.

    Several processes: JAX's coordination service catches SIGTERM in whichever process gets it
    and tells the others; `reached(step)` is `multihost_utils.reached_preemption_sync_point`,
    True on every process at the same step (one after the largest step any process had reached
    when the notice arrived), so all save that step and leave the loop together. No Python
    handler is installed then: it would replace the runtime's.
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.requested = False
        self._previous = {}

    @staticmethod
    def _agreed() -> bool:
        return jax.distributed.is_initialized()

    def request(self, *_):
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether the loop should save and stop after `step` (the same answer on every process)."""
        if self._agreed():  # only the agreed answer: a process stopping alone would hang the others
            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        return self.requested

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and not self._agreed():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self.request)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False
