"""Train state, the jitted data-parallel train step, EMA, and run logging.

A flax.nnx model is split once into a static graph definition and array state,

    graphdef, state = init_train_state(model, tx, key, mesh=mesh)
    step = make_train_step(loss_fn, graphdef, tx, mesh=mesh)
    state, metrics = step(state, batch)          # donates the old state

and training is a pure function of the `TrainState` pytree (params, optimizer state, EMA
params, any other nnx state, step, PRNG key, data position, non-finite counters), so a
checkpoint of that pytree resumes a run exactly. The sampling model is the graph merged
with the EMA parameters: `ema_model(graphdef, state)`.

`loss_fn(model, batch, key)` is any function returning one loss per example (shape (B,)),
e.g. a closure over a `jdiff.losses` function; the step takes the mean over the global batch.
A loss that also needs the step index or a target network (consistency training's curriculum,
an EMA teacher) is wrapped in `ContextLoss` and is then called with `step=` and `target=`.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from jdiff import _files, parallel, posthoc_ema

__all__ = [
    "ContextLoss",
    "MetricWriter",
    "NonFiniteError",
    "Progress",
    "TrainState",
    "check_nonfinite",
    "ema_decay",
    "ema_model",
    "image_grid",
    "init_train_state",
    "make_train_step",
    "model_from_state",
    "save_image_grid",
    "tree_all_finite",
]


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue exactly; every field is an array pytree.

    step: number of train steps taken (int32 scalar), skipped non-finite steps included.
    params: the nnx.Param state being optimized.
    opt_state: the optax state of `params`.
    ema_params: exponential moving average of `params` (the sampling weights).
    rest: every other nnx state of the model (RNG streams, batch statistics; often empty).
    key: the run's base PRNG key; step s uses jax.random.fold_in(key, s).
    data_position: the data iterator's resumable position (see jdiff.data.DataIterator).
    nonfinite_run: consecutive steps skipped because the loss or a gradient was not finite.
    nonfinite_total: all steps skipped so far.
    power_ema: the post-hoc EMA profiles (a `jdiff.posthoc_ema.PowerEMA`), or () when not tracked.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rest: Any
    key: jax.Array
    data_position: jax.Array
    nonfinite_run: jax.Array
    nonfinite_total: jax.Array
    power_ema: Any = ()


class ContextLoss(struct.PyTreeNode):
    """Marks a loss that needs the train step's index and the target (EMA) network.

    `make_train_step(ContextLoss(fn), ...)` calls

        fn(model, batch, key, *, step, target) -> (B,)

    step: `state.step` before the update (int32 scalar, traced: a new step does not recompile).
    target: the graph merged with `state.ema_params` under stop_gradient (and `state.rest`); it
        is a constant of the gradient, so its parameters follow the EMA (decay `ema`), never
        the optimizer. Changes a call makes to the target's non-parameter state are dropped.

    A marker type rather than a flag of `make_train_step`: the loss says what it needs where it
    is defined, and plain `loss_fn(model, batch, key)` losses pay nothing for the target merge.
    """

    fn: Callable = struct.field(pytree_node=False)

    def __call__(self, model, batch, key, *, step, target):
        return self.fn(model, batch, key, step=step, target=target)


class NonFiniteError(FloatingPointError):
    """Raised by the host loop after too many consecutive non-finite steps."""


def ema_decay(step, decay: float, warmup: bool = True):
    """EMA decay at `step`: min(decay, (1 + step) / (10 + step)) with warmup, else `decay`.

    The warmup (TensorFlow's ExponentialMovingAverage num_updates rule, used by the DDPM and
    score_sde codebases) lets early averages follow the fast-moving initial weights instead of
    remembering the random initialization for ~1 / (1 - decay) steps.
    """
    decay = jnp.asarray(decay, jnp.float32)
    if not warmup:
        return decay
    s = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + s) / (10.0 + s))


def tree_all_finite(tree) -> jax.Array:
    """True when every floating-point leaf of `tree` is finite (integer leaves are ignored)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _split(model: nnx.Module):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def init_train_state(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    key,
    *,
    mesh=None,
    rules=parallel.FSDP_RULES,
    data_position: int = 0,
    power_ema: tuple[float, ...] = (),
) -> tuple[Any, TrainState]:
    """Split `model` and build the initial TrainState (EMA = the initial params).

    key: the run's base PRNG key (raw uint32 key, e.g. jax.random.PRNGKey(seed)).
    mesh: when given, the state becomes global arrays on it: parameters and EMA laid out by
        their logical axis names under `rules` (jdiff.parallel.param_shardings), the optimizer
        state like the parameters it tracks (optax.tree_map_params), everything else
        replicated. Every process must pass the same `model` (same seed). Only the parameters
        pass through the host; the optimizer and EMA state are created sharded on the devices.
    rules: logical axis name -> mesh axis pairs (jdiff.parallel.FSDP_RULES; () replicates all).
    power_ema: relative stds of power-function EMA profiles to track for post-hoc EMA
        (jdiff.posthoc_ema; e.g. (0.05, 0.10)), laid out like the parameters; () tracks none.
    Returns (graphdef, state); the graphdef is static and shared by every later call.
    """
    graphdef, params, rest = _split(model)

    # Distinct buffers for every leaf: the step donates its input, and XLA refuses to
    # donate one buffer twice.
    def zero():
        return jnp.zeros((), jnp.int32)

    scalars = {
        "step": zero(),
        "key": jnp.array(key),
        "data_position": jnp.asarray(data_position, jnp.int32),
        "nonfinite_run": zero(),
        "nonfinite_total": zero(),
    }
    if mesh is None:
        profiles = posthoc_ema.PowerEMA.init(params, power_ema) if power_ema else ()
        return graphdef, TrainState(
            params=params,
            opt_state=tx.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
            rest=rest,
            power_ema=profiles,
            **scalars,
        )
    p_sharding = parallel.param_shardings(params, mesh, rules)
    params = parallel.to_global(params, p_sharding)
    o_sharding = optax.tree_map_params(
        tx,
        lambda _, s: s,
        jax.eval_shape(tx.init, params),
        p_sharding,
        transform_non_params=lambda _: parallel.replicated(mesh),
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    state = TrainState(
        params=params,
        opt_state=jax.jit(tx.init, out_shardings=o_sharding)(params),
        ema_params=jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=p_sharding)(params),
        rest=parallel.replicate(rest, mesh),
        power_ema=posthoc_ema.PowerEMA.init(
            params, power_ema, copy=jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=p_sharding)
        )
        if power_ema
        else (),
        **parallel.replicate(scalars, mesh),
    )
    return graphdef, state


def model_from_state(graphdef, state: TrainState, *, ema: bool = False) -> nnx.Module:
    """The nnx model with the current (or, with ema=True, the EMA) parameters."""
    return nnx.merge(graphdef, state.ema_params if ema else state.params, state.rest, copy=True)


def ema_model(graphdef, state: TrainState) -> nnx.Module:
    """The sampling/evaluation model: the graph merged with the EMA parameters."""
    return model_from_state(graphdef, state, ema=True)


def make_train_step(
    loss_fn: Callable,
    graphdef,
    tx: optax.GradientTransformation,
    *,
    mesh=None,
    ema: float = 0.999,
    ema_warmup: bool = True,
    grad_clip_norm: float | None = 1.0,
    learning_rate_fn: Callable | None = None,
    donate: bool = True,
    state_sharding=None,
):
    """Build the jitted train step `step(state, batch) -> (state, metrics)`.

    loss_fn: `loss_fn(model, batch, key) -> (B,)` per-example losses; `model` is the nnx
        model merged from the state, `batch` the global batch pytree, `key` this step's key.
        A `ContextLoss` is also given `step=state.step` and `target=` the EMA model. It may
        also return `(losses, extra)` with a dict of (B,) or scalar arrays, whose means join
        the metrics (the two players' losses of a GAN, `jdiff.adversarial`).
    graphdef: the model's static graph from `init_train_state`.
    tx: the optax optimizer (its state lives in `state.opt_state`).
    mesh: a jdiff.parallel.make_mesh mesh: the batch is split along its leading axis over
        "data" and "fsdp". None: no sharding constraints.
    state_sharding: the shardings of the state (jdiff.parallel.shardings_of(state) of a state from
        `init_train_state(..., mesh=mesh)`), kept by the step; None: replicated.
    ema: EMA decay; `ema_warmup` applies `ema_decay`'s warmup.
    grad_clip_norm: clip the gradient to this global L2 norm before `tx` (None: no clipping).
    learning_rate_fn: optional schedule step -> lr, only to log the learning rate.
    donate: donate the input state's buffers (the caller must not reuse `state`).

    A step whose loss, gradient or updated parameters are not finite changes nothing but `step` (so the next step
    draws fresh randomness) and the counters `nonfinite_run` / `nonfinite_total`; the host
    loop decides when to stop (`check_nonfinite`). Metrics: loss (mean over the batch),
    grad_norm (before clipping), finite, nonfinite_run, nonfinite_total[, learning_rate].
    """
    clip = optax.clip_by_global_norm(grad_clip_norm) if grad_clip_norm else None

    def step_fn(state: TrainState, batch):
        key = jax.random.fold_in(state.key, state.step)

        def objective(params):
            # copy=True: fresh Variables at this trace level, so stateful layers (dropout's
            # RNG counter, batch statistics) may update them inside the gradient trace.
            model = nnx.merge(graphdef, params, state.rest, copy=True)
            if isinstance(loss_fn, ContextLoss):  # the target is merged here too, for the same reason
                target = nnx.merge(graphdef, jax.lax.stop_gradient(state.ema_params), state.rest, copy=True)
                losses = loss_fn(model, batch, key, step=state.step, target=target)
            else:
                losses = loss_fn(model, batch, key)
            losses, extra = _loss_and_extra(losses)
            if jnp.ndim(losses) != 1:
                raise ValueError(
                    f"`loss_fn` must return one loss per example (shape (B,)); got shape {jnp.shape(losses)}"
                )
            _, _, new_rest = _split(model)
            # Reduced in float32 at least, whatever the network computes in (a bf16 mean of a large batch
            # resolves the loss only to ~0.4 %, and its sum can round away small per-example values).
            return jnp.mean(losses.astype(jnp.promote_types(losses.dtype, jnp.float32))), (new_rest, extra)

        (loss, (new_rest, extra)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        if clip is not None:
            grads, _ = clip.update(grads, clip.init(state.params))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The new parameters are checked too: a finite gradient can still give a non-finite
        # update (a NaN learning rate, an overflowing optimizer statistic).
        finite = jnp.isfinite(loss) & tree_all_finite(grads) & tree_all_finite(params)
        d = ema_decay(state.step, ema, ema_warmup)
        ema_params = jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), state.ema_params, params)
        power = state.power_ema  # post-hoc EMA profiles: t = steps taken after this one
        power = power.update(params, state.step + 1) if isinstance(power, posthoc_ema.PowerEMA) else power

        def keep_if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        run = jnp.where(finite, 0, state.nonfinite_run + 1).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            ema_params=keep_if_finite(ema_params, state.ema_params),
            power_ema=keep_if_finite(power, state.power_ema),
            rest=keep_if_finite(new_rest, state.rest),
            data_position=state.data_position + 1,
            nonfinite_run=run,
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "finite": finite,
            "nonfinite_run": run,
            "nonfinite_total": new_state.nonfinite_total,
        }
        if learning_rate_fn is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step))
        for name, value in extra.items():
            if name in metrics:
                raise ValueError(f"`loss_fn`'s extra metric {name!r} shadows a train-step metric; rename it")
            metrics[name] = jnp.mean(value)
        return new_state, metrics

    kwargs = {"donate_argnums": 0} if donate else {}
    if mesh is not None:
        rep = parallel.replicated(mesh)
        state_sharding = rep if state_sharding is None else state_sharding
        kwargs.update(in_shardings=(state_sharding, parallel.data_sharded(mesh)), out_shardings=(state_sharding, rep))
    return jax.jit(step_fn, **kwargs)


def _loss_and_extra(out):
    """A loss_fn's output as (per-example losses, dict of extra metrics)."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        return out
    return out, {}


def check_nonfinite(metrics, max_in_a_row: int) -> None:
    """Raise NonFiniteError once `max_in_a_row` consecutive steps had a non-finite loss/gradient."""
    run = int(metrics["nonfinite_run"])
    if run >= max_in_a_row:
        raise NonFiniteError(
            f"{run} consecutive train steps had a non-finite loss or gradient (limit "
            f"`max_nonfinite_steps`={max_in_a_row}); the parameters were left at their last finite "
            "values and no checkpoint of non-finite values was written. Lower the learning rate or "
            "check the data and the loss's time range."
        )


# ----------------------------------------------------------------------------------
# Logging: TensorBoard event files + metrics.jsonl, a progress line, sample grids.
# ----------------------------------------------------------------------------------


class MetricWriter:
    """Write scalar metrics to TensorBoard event files and to `workdir/metrics.jsonl`.

    start_step: the step the run starts from (a restored checkpoint's; 0 for a new run). Rows
        of metrics.jsonl past it, written after that checkpoint by a run that was then killed,
        are dropped (the file is rewritten atomically; a half-written last line goes too), and
        TensorBoard is told to purge its events past it (tensorboardX `purge_step`), so no step
        appears twice after a resume. None keeps every row.
    `last_row` is the last row of metrics.jsonl (after the drop, then as written), or None.
    Only process 0 writes (every process computes the same replicated metrics).
    """

    def __init__(self, workdir: str, *, start_step: int | None = None, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        self.last_row = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            workdir = _files.as_path(workdir)  # local, or gs://... (no append there: rewritten per row)
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / "metrics.jsonl"
            rows = _read_rows(path)
            if start_step is not None and path.exists():
                rows = [r for r in rows if r["step"] <= start_step]
                _files.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
            self.last_row = rows[-1] if rows else None
            self._path, self._rows = path, rows
            # A unique suffix: the file name's time has whole seconds, and tensorboardX truncates
            # an existing file of the same name (a resume within the second).
            self._tb = SummaryWriter(
                logdir=os.fspath(workdir / "tb"),
                filename_suffix=f".{time.time_ns()}",
                purge_step=None if start_step is None else start_step + 1,
            )
            self._jsonl = None if _files.is_url(path) else path.open("a")

    def write_scalars(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)
        self.last_row = {"step": int(step), **scalars}
        if self._jsonl is None:  # an object store: the whole file again
            self._rows.append(self.last_row)
            _files.write_atomic(self._path, "".join(json.dumps(r) + "\n" for r in self._rows))
            return
        self._jsonl.write(json.dumps(self.last_row) + "\n")
        self._jsonl.flush()

    def write_image(self, step: int, name: str, grid: np.ndarray) -> None:
        """Log a (H, W, C) uint8 image."""
        if self.enabled:
            self._tb.add_image(name, grid, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            if self._jsonl is not None:
                self._jsonl.close()


def _read_rows(path) -> list[dict]:
    """The rows of a metrics.jsonl (none if absent); lines that do not parse (a row cut short by
    a killed run) are skipped."""
    path = _files.as_path(path)
    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


class Progress:
    """A one-line progress display on stderr: step, loss, steps/s (tqdm is not a dependency)."""

    def __init__(self, total: int, *, start: int = 0, stream=None, enabled: bool = True):
        self.total, self.start = total, start
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled and jax.process_index() == 0
        self._t0 = time.perf_counter()

    def update(self, step: int, **scalars) -> None:
        if not self.enabled:
            return
        rate = (step - self.start) / max(time.perf_counter() - self._t0, 1e-9)
        width = 24
        done = int(width * step / max(self.total, 1))
        items = " ".join(f"{k}={float(v):.4g}" for k, v in scalars.items())
        self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{self.total} {items} {rate:.1f} steps/s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def image_grid(images, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W, C) images in [-1, 1] into one (rows*(H+pad)+pad, ..., C) uint8 grid."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4:
        raise ValueError(f"`images` must have shape (N, H, W, C); got {x.shape}")
    n, h, w, c = x.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    x = np.clip((x + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 0, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[i]
    return grid


def save_image_grid(path: str, images, ncol: int | None = None, scale: int = 1) -> np.ndarray:
    """Write `image_grid(images)` as a PNG (each pixel repeated `scale` times); returns the grid."""
    from PIL import Image

    grid = image_grid(images, ncol)
    big = np.repeat(np.repeat(grid, scale, 0), scale, 1)
    buf = io.BytesIO()
    Image.fromarray(big[..., 0] if big.shape[-1] == 1 else big).save(buf, format="PNG")
    _files.write_atomic(path, buf.getvalue())  # a local path or gs://...
    return grid
