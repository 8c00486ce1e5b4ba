"""Flow-map experiments: what `_lib` does differently for a config with a `flowmap` section.

    config.flowmap.param          "average_velocity" (MeanFlow, shortcut) | "ddim_denoiser" (consistency)
    config.flowmap.sigma_data     data std of the ddim_denoiser's EDM preconditioning
    config.flowmap.time_input     how a one-time network (a jdiff.models U-Net/MLP/DiT) sees t:
                                  "t" (path time) or "edm" (c_noise = -lambda / 8, as
                                  predictions.edm_denoiser feeds an EDM network)
    config.flowmap.num_steps      sampling steps (1 = one-step generation)
    config.flowmap.gamma          re-noising fraction of flowmaps.sample (1 = consistency multistep)
    config.flowmap.teacher_workdir  consistency distillation: the teacher's workdir (its config.json
                                  and EMA weights); None uses a freshly initialised teacher (smoke runs)
    config.flowmap.teacher_config   the teacher's config file, used when teacher_workdir is None
    config.flowmap.teacher_solver   jdiff.samplers solver of the teacher's step ("heun")
    config.flowmap.init_from_teacher  start the student from the teacher's EMA weights (same network)
    config.flowmap.target         consistency losses' target network f^-: "online" (the student under
                                  stop_gradient; iCT) | "ema" (the train state's EMA weights, decay
                                  config.ema_decay; CD's EMA target)

`config.model.name = "flowmap_mlp"` builds a two-time `jdiff.flowmaps.FlowMapMLP`; any other
jdiff.models network is a one-time net F(x, t, cond) that ignores s (consistency models only
ever jump to the data end). Consistency training's curriculum N(k) reads the train step's index
and config.total_steps; the step index and the EMA target come from the train step through
`jdiff.training.ContextLoss`.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff import flowmaps, models, samplers, training

PARAMS = {"average_velocity": flowmaps.AverageVelocity, "ddim_denoiser": flowmaps.DDIMDenoiser}
TIME_INPUTS = ("t", "edm")
TARGETS = ("online", "ema")
CONSISTENCY_LOSSES = ("flowmaps.consistency_training_loss", "flowmaps.consistency_distillation_loss")
LOSSES = ("flowmaps.meanflow_loss", "flowmaps.shortcut_loss", *CONSISTENCY_LOSSES)


def enabled(config) -> bool:
    return "flowmap" in config and config.flowmap is not None


def _lib():
    from experiments import _lib

    return _lib


def _check(config):
    f, err = config.flowmap, _lib().ConfigError
    if f.param not in PARAMS:
        raise err(f"config.flowmap.param: unknown {f.param!r}; accepted: {', '.join(PARAMS)}")
    if f.time_input not in TIME_INPUTS:
        raise err(f"config.flowmap.time_input: unknown {f.time_input!r}; accepted: {', '.join(TIME_INPUTS)}")
    if _target(config) not in TARGETS:
        raise err(f"config.flowmap.target: unknown {_target(config)!r}; accepted: {', '.join(TARGETS)}")
    if config.loss.name not in LOSSES:
        raise err(f"config.loss.name: {config.loss.name!r} cannot be trained from a flow-map config; accepted: "
                  f"{', '.join(LOSSES)}")


def _target(config) -> str:
    # .get: workdirs written before the key existed trained with the online target.
    return config.flowmap.get("target", "online")


def param(config):
    f = config.flowmap
    return PARAMS[f.param](f.sigma_data) if f.param == "ddim_denoiser" else PARAMS[f.param]()


def model_factory(config):
    """create(key) -> the student network: FlowMapMLP (model.name "flowmap_mlp") or a jdiff.models one."""
    _check(config)
    kwargs = config.model.kwargs.to_dict() if hasattr(config.model.kwargs, "to_dict") else dict(config.model.kwargs)
    if config.model.name == "flowmap_mlp":
        return lambda k: flowmaps.FlowMapMLP(rngs=nnx.Rngs(k), **kwargs)
    if config.model.name not in models.MODELS:
        raise _lib().ConfigError(f"config.model.name: unknown model {config.model.name!r}; accepted: flowmap_mlp, "
                                 f"{', '.join(models.MODELS)}")
    return lambda k: models.get_model(config.model.name, rngs=nnx.Rngs(k), **kwargs)


def build_model(config, key):
    """The student network, initialised from `key` (or from the teacher's EMA weights)."""
    lib = _lib()
    lib._keyed("model.kwargs", nnx.eval_shape, model_factory(config), key)  # bad kwargs fail before compiling
    net = nnx.jit(model_factory(config))(key)
    if config.flowmap.get("init_from_teacher", False) and config.flowmap.teacher_workdir:
        _, params, _, _ = _teacher_state(config)
        nnx.update(net, params)
    return net


def two_time(net, config, path):
    """net(x, t, s, cond) for the flow map: FlowMapMLP as is; a one-time network ignores s."""
    if isinstance(net, flowmaps.FlowMapMLP):
        return net
    edm = config.flowmap.time_input == "edm"

    def f(x, t, s, cond=None):
        return net(x, -path.log_snr(t) / 8.0 if edm else t, cond)

    return f


# -- the teacher of consistency distillation ---------------------------------------------


def _load_config_file(spec):
    file, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_teacher_config", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _teacher_state(config):
    lib = _lib()
    workdir = config.flowmap.teacher_workdir
    tconfig = lib.load_config(workdir)
    graphdef, params, rest, _ = lib.restore_ema(tconfig, workdir)
    return tconfig, params, rest, graphdef


def teacher_model(config):
    """(model(x, t, cond), kind, path) of the teacher: EMA weights of teacher_workdir, or a fresh network."""
    lib = _lib()
    if config.flowmap.teacher_workdir:
        tconfig, params, rest, graphdef = _teacher_state(config)
        net = nnx.merge(graphdef, params, rest)
    else:
        tconfig = _load_config_file(config.flowmap.teacher_config)
        net = lib.build_model(tconfig)
    net.eval()
    tpath = lib.build_path(tconfig)
    model, kind = lib.wrap_network(net, tconfig, tpath)
    return model, kind, tpath


# -- loss and sampler ----------------------------------------------------------------------


def build_loss(config, path):
    """loss_fn(net, batch, key) -> (B,) for jdiff.training.make_train_step; consistency losses
    are a `training.ContextLoss` (the train step then passes its step index and EMA target)."""
    lib = _lib()
    _check(config)
    loss = lib.resolve_loss(config.loss.name)
    kwargs = dict(config.loss.kwargs)
    p = param(config)
    if config.loss.name == "flowmaps.consistency_distillation_loss":
        model, kind, tpath = teacher_model(config)
        if type(tpath) is not type(path):
            raise lib.ConfigError(f"config.path.name: the student's path must be the teacher's ({type(tpath).__name__})")
        solver = samplers.get_solver(config.flowmap.teacher_solver)
        kwargs["teacher_step"] = flowmaps.solver_step(solver, model, kind, tpath)

    if config.loss.name not in CONSISTENCY_LOSSES:
        def loss_fn(net, batch, key):
            cond = batch[config.data.cond] if config.data.cond else None
            return loss(two_time(net, config, path), path, key, batch["x"], cond, **kwargs)

        return loss_fn

    use_ema = _target(config) == "ema"
    if config.loss.name == "flowmaps.consistency_training_loss":
        kwargs["total_steps"] = int(config.total_steps)

    def context_loss_fn(net, batch, key, *, step, target):
        cond = batch[config.data.cond] if config.data.cond else None
        flow = flowmaps.flow_map(two_time(net, config, path), path, p)
        # target_flow None: the loss uses the online flow map under stop_gradient (iCT's choice).
        target_flow = flowmaps.flow_map(two_time(target, config, path), path, p) if use_ema else None
        extra = {"step": step} if config.loss.name == "flowmaps.consistency_training_loss" else {}
        return loss(flow, path, key, batch["x"], cond, target_flow=target_flow, **kwargs, **extra)

    return training.ContextLoss(context_loss_fn)


def make_sampler(config, graphdef, path, shape, *, num_steps=None):
    """A jitted fn(params, rest, key) -> samples: `flowmaps.sample` on a uniform grid of num_steps."""
    n = int(num_steps or config.flowmap.num_steps)
    grid = samplers.uniform_grid(path, n)
    num_classes = config.model.kwargs.get("num_classes", None)
    gamma = float(config.flowmap.gamma)

    @jax.jit
    def fn(params, rest, key):
        net = nnx.merge(graphdef, params, rest, copy=True)
        net.eval()
        flow = flowmaps.flow_map(two_time(net, config, path), path, param(config))
        k_prior, k_sample = jax.random.split(key)
        x_T = path.prior_sample(k_prior, shape, jnp.float32)
        cond = None if not (config.data.cond and num_classes) else jnp.arange(shape[0]) % num_classes
        return flowmaps.sample(flow, path, x_T, grid, cond, key=k_sample, gamma=gamma)

    return fn
