"""The train loop: check a config, then train it in a workdir, resuming from its latest checkpoint.

    recipe, net = check_config(config)                  # names and shapes, nothing compiled
    result = train_and_evaluate(config, "/tmp/run")     # trains, checkpoints, resumes
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from flax import nnx

from experiments import _data, _images, _phema, _state
from experiments._recipes import Recipe, recipe_for
from jdiff import checkpoint, data, parallel, training

__all__ = ["check_config", "train_and_evaluate", "validate"]


def check_config(config) -> tuple[Recipe, nnx.Module]:
    """Check every name of `config` and build its network abstractly, without loading data or
    compiling anything; returns (recipe, abstract network)."""
    _data.holdout_fraction(config)
    _state.learning_rate_fn(config)
    recipe = recipe_for(config)
    return recipe, recipe.abstract_model()


def validate(config) -> tuple[Recipe, data.Dataset, nnx.Module]:
    """`check_config`, then load the training data and build the network; returns
    (recipe, training set, network). Raises ConfigError before anything is written."""
    recipe, _ = check_config(config)
    dataset = _data.load_data(config)
    _data.check_dataset(config, dataset)
    return recipe, dataset, recipe.build_model()


def train_and_evaluate(config, workdir: str, *, hooks=()) -> dict:
    """Train per `config` in `workdir`, resuming from its latest checkpoint if it has one.

    hooks: callables hook(step, state, metrics) run after every step (evaluation, custom
        logging); `metrics` are device arrays of that step.
    Returns a dict: step, final_loss (mean over the last logging window), preempted,
    sample_png (last sample grid, if any) and workdir.
    Writes workdir/config.json, checkpoints/, metrics.jsonl, tb/ and samples/.
    """
    _state.initialize_distributed(config)  # multi-process: before anything touches a device
    recipe, dataset, net = validate(config)  # raises before anything is written
    mesh = _state.make_mesh(config)
    parallel.local_batch_size(config.batch_size, mesh)
    tx, graphdef, state = _state.init_train_state(config, net, mesh)
    step_fn = training.make_train_step(
        recipe.build_loss(), graphdef, tx, mesh=mesh, state_sharding=parallel.shardings_of(state), ema=config.ema_decay,
        grad_clip_norm=config.optimizer.grad_clip_norm, learning_rate_fn=_state.learning_rate_fn(config))

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=config.checkpoint_every,
                                   max_to_keep=config.keep_checkpoints)
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
    start = int(state.step)
    p_index, p_count = parallel.process_info()
    it = data.DataIterator(dataset, config.batch_size, seed=config.seed, process_index=p_index,
                           process_count=p_count, position=int(state.data_position))
    keys = ("x", config.data.cond) if config.data.cond else ("x",)
    sample_shape = (config.sample.num_samples, *config.data.shape)
    sampler = recipe.make_sampler(graphdef, sample_shape) if config.sample_every else None

    writer = training.MetricWriter(workdir)
    progress = training.Progress(config.total_steps, start=start)
    window, final_loss, sample_png, pending = [], float("nan"), None, None
    t_window, n_window = time.perf_counter(), 0
    step = start
    preempted = False

    def finish_step(step, metrics):
        """Host-side work on a step's metrics (read one step late, so the device keeps busy)."""
        nonlocal final_loss, t_window, n_window
        training.check_nonfinite(metrics, config.max_nonfinite_steps)
        window.append(metrics)
        n_window += 1
        if step % config.log_every == 0 or step == config.total_steps:
            m = jax.device_get(window)
            dt = time.perf_counter() - t_window
            scalars = {k: float(np.mean([w[k] for w in m])) for k in ("loss", "grad_norm")}
            scalars["learning_rate"] = float(m[-1]["learning_rate"])
            scalars["nonfinite_total"] = float(m[-1]["nonfinite_total"])
            scalars["steps_per_sec"] = n_window / dt
            scalars["examples_per_sec"] = n_window * config.batch_size / dt
            writer.write_scalars(step, scalars)
            progress.update(step, loss=scalars["loss"])
            final_loss = scalars["loss"]
            window.clear()
            t_window, n_window = time.perf_counter(), 0

    with checkpoint.PreemptionFlag() as preemption:
        try:
            while step < config.total_steps:
                batch = next(it)
                batch = parallel.global_batch({k: batch[k] for k in keys}, mesh)
                state, metrics = step_fn(state, batch)
                step += 1
                if pending is not None:
                    finish_step(*pending)
                pending = (step, metrics)
                for hook in hooks:
                    hook(step, state, metrics)
                if sampler is not None and step % config.sample_every == 0:
                    x = sampler(state.ema_params, state.rest, jax.random.PRNGKey(config.seed + 1))
                    x = parallel.to_host(x)  # every process: gathering a sharded x is collective
                    sample_png = os.path.join(workdir, "samples", f"step_{step:07d}.png")
                    if jax.process_index() == 0:
                        _images.save_samples(sample_png, x)
                ckpt.save(step, state)
                _phema.maybe_save_snapshot(config, workdir, step, state)  # post-hoc EMA profiles, if tracked
                if preemption.reached(step):  # agreed by every process: all save this step
                    preempted = True
                    break
            if pending is not None:
                finish_step(*pending)
            ckpt.save(step, state, force=True)  # no-op when this step is already saved
            _phema.maybe_save_snapshot(config, workdir, step, state, last=True)
        finally:
            progress.close()
            writer.close()
            ckpt.close()
    return {"step": step, "final_loss": final_loss, "preempted": preempted, "sample_png": sample_png,
            "workdir": workdir}
