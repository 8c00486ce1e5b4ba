"""The train loop: check a config, then train it in a workdir, resuming from its latest checkpoint.

    recipe, net = check_config(config)                  # names and shapes, nothing compiled
    result = train_and_evaluate(config, "/tmp/run")     # trains, checkpoints, resumes

Everything is checked before anything is written (experiments._validate, _workdir.check_workdir);
metrics.jsonl and TensorBoard drop the rows past the restored step on resume, a row is always
written at the last step, and the reported final loss is that step's loss.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from experiments import _config, _images, _phema, _state, _validate, _workdir
from experiments._validate import check_config, validate
from jdiff import checkpoint, data, parallel, training

__all__ = ["check_config", "train_and_evaluate", "validate"]


def _diverged(step: int, metrics, ckpt, limit: int) -> training.NonFiniteError:
    """The one-line error of a run stopped by `limit` consecutive non-finite steps."""
    run = int(metrics["nonfinite_run"])
    ckpt.wait()
    last = ckpt.latest_step()
    where = (
        f"{os.path.join(ckpt.directory, str(last))} (step {last})"
        if last is not None
        else "none (no checkpoint was written)"
    )
    return training.NonFiniteError(
        f"training diverged at step {step}: {run} consecutive steps (since step {step - run + 1}) had a non-finite "
        f"loss or gradient, the limit config.max_nonfinite_steps={limit}; last finite checkpoint: {where}; lower "
        "config.optimizer.learning_rate or check the data"
    )


def train_and_evaluate(config, workdir: str, *, hooks=(), allow_config_change: bool = False) -> dict:
    """Train per `config` in `workdir`, resuming from its latest checkpoint if it has one.

    hooks: callables hook(step, state, metrics) run after every step (evaluation, custom
        logging); `metrics` are device arrays of that step.
    allow_config_change: resume a workdir whose config.json differs from `config` (the old file
        is kept as config.step<N>.json); without it such a resume raises a ConfigError listing
        the keys that differ.
    Returns a dict: step, final_loss (the loss of the last step, also the `loss` of the last
    metrics.jsonl row, which is always written at the last step), final_loss_mean (the mean of
    the steps since the previous row), preempted, sample_png (last sample grid, if any), workdir.
    Writes workdir/config.json, checkpoints/, metrics.jsonl, tb/ and samples/, and nothing at
    all when an input is bad: that raises a one-line ConfigError first. A run stopped by
    config.max_nonfinite_steps non-finite steps in a row raises training.NonFiniteError naming
    the step, the count and the last finite checkpoint.
    """
    _config.check_values(config)  # config.distributed is a bool before it starts anything
    _state.initialize_distributed(config)  # multi-process: before anything touches a device
    recipe, dataset, net = validate(config)  # raises before anything is written
    mesh = _state.make_mesh(config)
    pipeline = _state.data_pipeline(config)
    _validate.check_batch_split(config, mesh)
    run = _workdir.check_workdir(workdir, config, allow_config_change=allow_config_change)  # writes nothing
    tx, graphdef, state = _state.init_train_state(config, net, mesh)
    step_fn = training.make_train_step(
        recipe.build_loss(),
        graphdef,
        tx,
        mesh=mesh,
        state_sharding=parallel.shardings_of(state),
        ema=config.ema_decay,
        grad_clip_norm=config.optimizer.grad_clip_norm,
        learning_rate_fn=_state.learning_rate_fn(config),
    )

    workdir = run.path
    parallel.barrier("jdiff: every process has checked the workdir")  # before process 0 writes to it
    checkpoint.as_path(workdir).mkdir(parents=True, exist_ok=True)  # a local path or gs://...
    if jax.process_index() == 0 and run.config is None:
        _workdir.write_config(run, config)  # a new workdir: config.json first (atomically)
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=config.checkpoint_every, max_to_keep=config.keep_checkpoints
    )
    if ckpt.latest_step() is not None:
        state = _workdir.restore_state(ckpt, state, workdir)  # a checkpoint of another network: one line
    if jax.process_index() == 0 and run.config is not None:
        _workdir.write_config(run, config)  # resumed: rewritten only for a change allow_config_change allowed
    start = int(state.step)
    dataset = recipe.prepare_data(dataset, workdir)  # a latent config: the training set's cached latents
    p_index, p_count = parallel.process_info()
    # grain for image sets, the in-memory iterator for vectors (config.data.pipeline); both resume
    # exactly from the checkpointed position
    it = data.make_iterator(
        dataset,
        config.batch_size,
        seed=config.seed,
        process_index=p_index,
        process_count=p_count,
        position=int(state.data_position),
        pipeline=pipeline,
    )
    keys = ("x", config.data.cond) if config.data.cond else ("x",)
    sample_shape = (config.sample.num_samples, *config.data.shape)
    sampler = recipe.make_sampler(graphdef, sample_shape) if config.sample_every else None

    writer = training.MetricWriter(workdir, start_step=start)  # drops rows past `start` (a resume)
    progress = training.Progress(config.total_steps, start=start)
    window, sample_png, pending = [], None, None
    row = writer.last_row if writer.last_row and writer.last_row["step"] == start else {}  # a finished run's
    final_loss, final_loss_mean = row.get("loss", float("nan")), row.get("loss_mean", float("nan"))
    t_window, n_window = time.perf_counter(), 0
    step = start
    preempted = False

    def finish_step(step, metrics, last=False):
        """Host-side work on a step's metrics (read one step late, so the device keeps busy);
        `last`: the run's last step, which always gets a row."""
        nonlocal final_loss, final_loss_mean, t_window, n_window
        try:
            training.check_nonfinite(metrics, config.max_nonfinite_steps)
        except training.NonFiniteError as e:
            raise _diverged(step, jax.device_get(metrics), ckpt, config.max_nonfinite_steps) from e
        window.append(metrics)
        n_window += 1
        if step % config.log_every == 0 or step == config.total_steps or last:
            m = jax.device_get(window)
            dt = time.perf_counter() - t_window
            # loss: this step's; loss_mean and grad_norm: means over the steps since the last row
            scalars = {
                "loss": float(m[-1]["loss"]),
                "loss_mean": float(np.mean([w["loss"] for w in m])),
                "grad_norm": float(np.mean([w["grad_norm"] for w in m])),
            }
            scalars["learning_rate"] = float(m[-1]["learning_rate"])
            scalars["nonfinite_total"] = float(m[-1]["nonfinite_total"])
            scalars["steps_per_sec"] = n_window / dt
            scalars["examples_per_sec"] = n_window * config.batch_size / dt
            # a loss_fn's extra metrics (a GAN's two players' losses, jdiff.training): window means
            scalars.update(
                {
                    k: float(np.mean([w[k] for w in m]))
                    for k in m[-1]
                    if k not in scalars and k not in ("finite", "nonfinite_run")
                }
            )
            writer.write_scalars(step, scalars)
            progress.update(step, loss=scalars["loss"], loss_mean=scalars["loss_mean"])
            final_loss, final_loss_mean = scalars["loss"], scalars["loss_mean"]
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
                        _images.save_samples(sample_png, x)  # written atomically
                ckpt.save(step, state)
                _phema.maybe_save_snapshot(config, workdir, step, state)  # post-hoc EMA profiles, if tracked
                if preemption.reached(step):  # agreed by every process: all save this step
                    preempted = True
                    break
            if pending is not None:
                finish_step(*pending, last=True)
            ckpt.save(step, state, force=True)  # no-op when this step is already saved
            _phema.maybe_save_snapshot(config, workdir, step, state, last=True)
        finally:
            progress.close()
            writer.close()
            ckpt.close()
    return {
        "step": step,
        "final_loss": final_loss,
        "final_loss_mean": final_loss_mean,
        "preempted": preempted,
        "sample_png": sample_png,
        "workdir": workdir,
    }
