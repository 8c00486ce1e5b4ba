"""The train state of a config: its optimizer and schedule, the initial state, and the EMA
weights restored from a workdir's latest checkpoint."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import optax
from flax import nnx

from experiments._config import ConfigError
from jdiff import checkpoint, training

__all__ = ["SCHEDULES", "EMAWeights", "build_optimizer", "init_train_state", "learning_rate_fn", "restore_ema"]

SCHEDULES = ("constant", "cosine")


def learning_rate_fn(config):
    """step -> learning rate: linear warmup from 0 over optimizer.warmup_steps, then constant or
    cosine decay to 1% of optimizer.learning_rate at total_steps."""
    o = config.optimizer
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"config.optimizer.schedule: unknown schedule {o.schedule!r}; accepted: {', '.join(SCHEDULES)}")
    warmup = max(int(o.warmup_steps), 0)
    if o.schedule == "constant":
        if not warmup:
            return optax.constant_schedule(o.learning_rate)
        return optax.linear_schedule(0.0, o.learning_rate, warmup)
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, max(warmup, 1), max(config.total_steps, warmup + 1),
                                              end_value=o.learning_rate * 1e-2)


def build_optimizer(config) -> optax.GradientTransformation:
    """AdamW on `learning_rate_fn` (gradient clipping lives in the train step)."""
    o = config.optimizer
    return optax.adamw(learning_rate_fn(config), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)


def init_train_state(config, net: nnx.Module, mesh=None):
    """(tx, graphdef, state): the optimizer and the initial `jdiff.training.TrainState` of `net`,
    with the run's base key PRNGKey(config.seed)."""
    tx = build_optimizer(config)
    graphdef, state = training.init_train_state(net, tx, jax.random.PRNGKey(config.seed), mesh=mesh)
    return tx, graphdef, state


class EMAWeights(NamedTuple):
    """The sampling weights of a checkpoint: nnx.merge(graphdef, params, rest) is the network."""

    graphdef: Any
    params: Any
    rest: Any
    step: int


def restore_ema(config, net: nnx.Module, workdir: str) -> EMAWeights:
    """The EMA weights of the latest checkpoint in `workdir`, for a network of `net`'s structure
    (a freshly built network of `config`: the checkpoint's state has its shapes and dtypes)."""
    _, graphdef, state = init_train_state(config, net)
    ckpt = checkpoint.Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), save_every=1)
    try:
        state = ckpt.restore(state)
    finally:
        ckpt.close()
    return EMAWeights(graphdef, state.ema_params, state.rest, int(state.step))
