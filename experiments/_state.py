"""The train state of a config: its processes and mesh, its optimizer and schedule, the initial
state, and the EMA weights restored from a workdir's latest checkpoint.

Config keys read here:

    distributed, coordinator_address, num_processes, process_id   jax.distributed start-up
        (jdiff.parallel.initialize_distributed; None falls back to the JAX_* variables, then to
        auto-detection; JAX_NUM_PROCESSES > 1 alone starts it)
    num_devices                    devices used (None: all; the same number from every process)
    mesh.data, mesh.fsdp, mesh.model   mesh axis sizes (one may be -1: the devices left over)
    mesh.rules                     logical axis -> mesh axis pairs for the parameters, the
                                   optimizer and EMA state (jdiff.parallel.FSDP_RULES)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from experiments import _phema
from experiments._config import ConfigError, keyed
from jdiff import adversarial, checkpoint, data, parallel, training

__all__ = [
    "SCHEDULES",
    "EMAWeights",
    "build_optimizer",
    "data_pipeline",
    "draw_samples",
    "init_train_state",
    "initialize_distributed",
    "learning_rate_fn",
    "make_mesh",
    "restore_ema",
    "sharding_rules",
]


def _mesh_section(config) -> dict:
    m = config.get("mesh", None)  # workdirs written before the key: pure data parallelism
    return dict(m.items()) if m is not None else {}


def initialize_distributed(config) -> bool:
    """Start jax.distributed per config.distributed / coordinator_address / num_processes /
    process_id (None: the JAX_* environment variables, then auto-detection); True when running
    multi-process. Call before anything touches a device."""
    kw = {k: config.get(k, None) for k in ("coordinator_address", "num_processes", "process_id")}
    for k in ("num_processes", "process_id"):
        if kw[k] is not None and (isinstance(kw[k], bool) or not isinstance(kw[k], int)):
            raise ConfigError(
                f"config.{k}: {kw[k]!r} is not an int; accepted: an int, or None (JAX_{k.upper()} / auto-detect)"
            )
    return keyed("distributed", parallel.initialize_distributed, bool(config.get("distributed", False)), **kw)


def make_mesh(config):
    """The ("data", "fsdp", "model") mesh of config.mesh over config.num_devices devices."""
    m = _mesh_section(config)
    return keyed(
        "mesh",
        parallel.make_mesh,
        config.get("num_devices", None),
        data=m.get("data", -1),
        fsdp=m.get("fsdp", 1),
        model=m.get("model", 1),
    )


def draw_samples(draw, params, rest, key, num: int) -> np.ndarray:
    """The samples of a jitted sampler `draw(params, rest, key) -> (num, ...)` as numpy, on every process.

    One process: `draw` on its default device. Several processes: one SPMD program over every
    device of the job, its rows split over the mesh's "data" axis (gcd(num, devices) ways, the
    other devices on "model"), so each process generates its share; the rows are then gathered.
    The random draws do not depend on the split (jax_threefry_partitionable).
    """
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(draw(params, rest, key)))
    n_dev, n_proc = jax.device_count(), jax.process_count()
    ways = math.gcd(num, n_dev)
    if ways % n_proc:  # a process would hold no rows: every process computes all of them
        ways = 1
    mesh = parallel.make_mesh(data=ways, model=n_dev // ways)
    fn = jax.jit(draw, out_shardings=parallel.data_sharded(mesh))
    x = fn(parallel.replicate(params, mesh), parallel.replicate(rest, mesh), parallel.replicate(key, mesh))
    return parallel.to_host(x)


def data_pipeline(config) -> str:
    """config.data.pipeline (jdiff.data.make_iterator's `pipeline`; "auto" when absent), checked."""
    p = config.data.get("pipeline", "auto")
    if p not in data.PIPELINES:
        raise ConfigError(f"config.data.pipeline: unknown pipeline {p!r}; accepted: {', '.join(data.PIPELINES)}")
    return p


def sharding_rules(config) -> tuple:
    """config.mesh.rules as a tuple of (logical name, mesh axis) pairs (jdiff.parallel.FSDP_RULES
    when absent)."""
    rules = _mesh_section(config).get("rules", parallel.FSDP_RULES)
    return tuple((r[0], tuple(r[1]) if isinstance(r[1], list) else r[1]) for r in rules or ())


SCHEDULES = ("constant", "cosine")


def learning_rate_fn(config):
    """step -> learning rate: linear warmup from 0 over optimizer.warmup_steps, then constant or
    cosine decay to 1% of optimizer.learning_rate at total_steps."""
    o = config.optimizer
    if o.schedule not in SCHEDULES:
        raise ConfigError(
            f"config.optimizer.schedule: unknown schedule {o.schedule!r}; accepted: {', '.join(SCHEDULES)}"
        )
    warmup = max(int(o.warmup_steps), 0)
    if o.schedule == "constant":
        if not warmup:
            return optax.constant_schedule(o.learning_rate)
        return optax.linear_schedule(0.0, o.learning_rate, warmup)
    return optax.warmup_cosine_decay_schedule(
        0.0, o.learning_rate, max(warmup, 1), max(config.total_steps, warmup + 1), end_value=o.learning_rate * 1e-2
    )


def build_optimizer(config) -> optax.GradientTransformation:
    """AdamW on `learning_rate_fn` (gradient clipping lives in the train step). A config with a
    `gan` section gets one AdamW per player (jdiff.adversarial.two_player_optimizer): the
    generator's on `learning_rate_fn`, the discriminator's on the same schedule scaled to
    gan.discriminator_learning_rate."""
    o = config.optimizer
    schedule = learning_rate_fn(config)
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
    gan = config.get("gan", None)
    if gan is None:
        return tx
    lr_d = gan.discriminator_learning_rate
    if isinstance(lr_d, bool) or not isinstance(lr_d, (int, float)) or not lr_d > 0 or not o.learning_rate > 0:
        raise ConfigError(
            f"config.gan.discriminator_learning_rate: {lr_d!r}; accepted: a number > 0 (with "
            "config.optimizer.learning_rate > 0, the generator's)"
        )
    ratio = float(lr_d) / float(o.learning_rate)  # the schedules are linear in the peak rate
    d_tx = optax.adamw(lambda step: ratio * schedule(step), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
    return adversarial.two_player_optimizer(tx, d_tx)


def init_train_state(config, net: nnx.Module, mesh=None):
    """(tx, graphdef, state): the optimizer and the initial `jdiff.training.TrainState` of `net`,
    with the run's base key PRNGKey(config.seed); on `mesh`, laid out by config.mesh.rules."""
    tx = build_optimizer(config)
    rules = sharding_rules(config)
    if mesh is not None:
        keyed("mesh.rules", parallel.param_shardings, nnx.state(net, nnx.Param), mesh, rules)
    graphdef, state = training.init_train_state(
        net, tx, jax.random.PRNGKey(config.seed), mesh=mesh, rules=rules, power_ema=_phema.sigma_rels(config)
    )
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
    ckpt = checkpoint.Checkpointer(checkpoint.as_path(workdir) / "checkpoints", save_every=1)
    try:
        state = ckpt.restore(state)
    finally:
        ckpt.close()
    return EMAWeights(graphdef, state.ema_params, state.rest, int(state.step))
