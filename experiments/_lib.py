"""The glue between ml-collections configs and jdiff's library calls, importable from Colab.

    config = experiments.configs.toy2d_fm.get_config("runlocal")
    result = train_and_evaluate(config, "/tmp/run")     # trains, checkpoints, resumes
    x, png, npz = sample_workdir("/tmp/run", solver="heun", num_steps=20)

Config layout (every config in experiments/configs/ has these keys):

    seed, batch_size (global), total_steps, ema_decay, max_nonfinite_steps, distributed
    data:   name (jdiff.data.get_dataset, or "synthetic"), kwargs, shape (of one example),
            cond ("label" or None: what the model is conditioned on), holdout (fraction in
            [0, 1) held out of training by jdiff.data.holdout_split(holdout, seed); evaluate
            scores that split)
    model:  name (jdiff.models.get_model), kwargs, preconditioning ("none" | "edm"), sigma_data
    path:   name (jdiff.paths.get_path), kwargs
    loss:   name ("<function>" of jdiff.losses or "<module>.<function>" of a jdiff module,
            e.g. "flowmaps.meanflow_loss"), kwargs
    optimizer: learning_rate, warmup_steps, schedule ("constant" | "cosine"), b1, b2,
            weight_decay, grad_clip_norm
    sample: solver (jdiff.samplers.get_solver), solver_kwargs, grid, num_steps, num_samples
    guidance (optional): weight, interval, rescale: every sampler of the run (training grids,
            sample_workdir, experiments.sample) applies classifier-free guidance (`make_sampler`)
    log_every, checkpoint_every, keep_checkpoints, sample_every

Every name is checked (and the data loaded) before anything is written to the workdir, so a
bad config fails with one line naming the key and the accepted values.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from experiments import _flowmaps
from jdiff import (
    checkpoint,
    data,
    guidance,
    models,
    parallel,
    paths,
    predictions,
    samplers,
    training,
)

__all__ = [
    "ConfigError",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_path",
    "check_config",
    "load_data",
    "load_heldout",
    "make_sampler",
    "sample_workdir",
    "save_samples",
    "train_and_evaluate",
    "validate",
]

PRECONDITIONINGS = ("none", "edm")
SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
    """A config value that names nothing jdiff knows; the message names the key."""


def _config_override_error(argv, config) -> str | None:
    """One line for the first --config.<key>=... override naming no key of `config`."""
    for arg in argv[1:]:
        m = re.match(r"--config\.([\w.]+)=", arg)
        if not m:
            continue
        node, done = config, []
        for k in m.group(1).split("."):
            if not isinstance(node, ml_collections.ConfigDict) or k not in node:
                where = "config" + "".join("." + d for d in done)
                keys = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
                return f"{arg}: {where} has no key {k!r}; accepted keys: {keys}"
            node = node[k]
            done.append(k)
    return None


def _config_from_argv(argv):
    """The config named by --config=path[:arg] in argv (None if absent or unloadable)."""
    import importlib.util

    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if spec is None:
        return None
    file, _, arg = spec.partition(":")
    try:
        module_spec = importlib.util.spec_from_file_location("_config", file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg or None)
    except Exception:  # noqa: BLE001 - only used to improve an error message
        return None


def parse_flags(argv):
    """absl `flags_parser` for the entry points: a bad flag or config override (unknown key,
    wrong-typed value) exits with one line naming the key and what it accepts."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        config = config if config is not None else _config_from_argv(argv)
        unknown = _config_override_error(argv, config) if config is not None else None
        msg = unknown or str(e).splitlines()[0]
        m = re.search(r"--config\.([\w.]+)=", msg)
        if not unknown and m and config is not None:
            try:
                expected = type(functools.reduce(lambda c, k: c[k], m.group(1).split("."), config)).__name__
                msg += f" (config.{m.group(1)} accepts {expected} values)"
            except (KeyError, AttributeError):
                pass
        sys.exit(f"error: {msg}")


def _keyed(key: str, fn, *args, **kwargs):
    """Call fn, re-raising a ValueError/TypeError/ImportError as a one-line ConfigError naming `key`."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config.{key}: {msg}") from e


def _kw(d) -> dict:
    return dict(d.to_dict() if isinstance(d, ml_collections.ConfigDict) else d or {})


# ----------------------------------------------------------------------------------
# config -> library objects
# ----------------------------------------------------------------------------------


def build_path(config) -> paths.AbstractPath:
    return _keyed("path.name", paths.get_path, config.path.name, **_kw(config.path.kwargs))


def _model_factory(config):
    if _flowmaps.enabled(config):  # flow-map configs (experiments/_flowmaps.py)
        return _flowmaps.model_factory(config)
    if config.model.name not in models.MODELS:
        raise ConfigError(f"config.model.name: unknown model {config.model.name!r}; accepted: {', '.join(models.MODELS)}")
    kwargs = _kw(config.model.kwargs)

    def create(key):
        # Parameters are drawn with XLA's RngBitGenerator ("rbg"), whose initialization program
        # compiles several times faster on CPU than threefry's (40 s -> 10 s for a small U-Net on
        # a busy 2-core machine); every other stream (dropout) stays threefry.
        params_key = jax.random.key(jax.random.randint(key, (), 0, 2**31 - 1), impl="rbg")
        return models.get_model(config.model.name, rngs=nnx.Rngs(key, params=params_key), **kwargs)

    return create


def check_model(config):
    """Build `config.model` abstractly (shapes only, nothing compiled): bad kwargs fail here."""
    return _keyed("model.kwargs", nnx.eval_shape, _model_factory(config), jax.random.PRNGKey(0))


def build_model(config, key=None) -> nnx.Module:
    """The nnx network of `config.model` (jdiff.models.get_model), initialized from `key`.

    Initialized inside one jitted program: eager initialization would compile every
    distinct op of a U-Net separately (a minute on a busy 2-core CPU).
    """
    key = jax.random.PRNGKey(config.seed) if key is None else key
    if _flowmaps.enabled(config):  # flow-map configs (experiments/_flowmaps.py)
        return _flowmaps.build_model(config, key)
    check_model(config)
    return nnx.jit(_model_factory(config))(key)


def resolve_loss(name: str):
    """`name` -> a loss function: "dsm_loss" (jdiff.losses) or "flowmaps.meanflow_loss" (jdiff.flowmaps)."""
    module_name, _, fn_name = name.rpartition(".")
    module_name = module_name or "losses"
    try:
        module = importlib.import_module(f"jdiff.{module_name}")
    except ImportError:
        raise ConfigError(f"config.loss.name: no module jdiff.{module_name} for loss {name!r}") from None
    public = [n for n in getattr(module, "__all__", dir(module)) if callable(getattr(module, n, None))]
    accepted = [n for n in public if n.endswith("_loss") or n in ("vlb",)]
    if fn_name not in accepted:
        raise ConfigError(
            f"config.loss.name: unknown loss {name!r}; accepted in jdiff.{module_name}: {', '.join(accepted)}"
        )
    return getattr(module, fn_name)


def wrap_network(net, config, path):
    """The `model(x, t, cond)` the loss and samplers see, and its prediction kind.

    With model.preconditioning = "edm" the network is EDM's raw F and the model is the
    preconditioned denoiser (kind "x0"); otherwise the network itself, of kind net.kind.
    """
    if config.model.preconditioning == "edm":
        return predictions.edm_denoiser(net, path, config.model.sigma_data), "x0"
    return net, net.kind


def _cond(config, batch):
    return batch[config.data.cond] if config.data.cond else None


def build_loss(config, path, loss=None):
    """`loss_fn(net, batch, key) -> (B,)` for `jdiff.training.make_train_step`."""
    if loss is None and _flowmaps.enabled(config):  # flow-map configs (experiments/_flowmaps.py)
        return _flowmaps.build_loss(config, path)
    loss = resolve_loss(config.loss.name) if loss is None else loss
    kwargs = _kw(config.loss.kwargs)
    if "sigma_data" in inspect.signature(loss).parameters and config.model.preconditioning == "edm":
        kwargs.setdefault("sigma_data", config.model.sigma_data)

    def loss_fn(net, batch, key):
        model, kind = wrap_network(net, config, path)
        return loss(model, path, key, batch["x"], _cond(config, batch), kind=kind, **kwargs)

    return loss_fn


def learning_rate_fn(config):
    o = config.optimizer
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"config.optimizer.schedule: unknown schedule {o.schedule!r}; accepted: {', '.join(SCHEDULES)}")
    warmup = max(int(o.warmup_steps), 0)
    if o.schedule == "constant":
        return optax.linear_schedule(0.0, o.learning_rate, max(warmup, 1)) if warmup else optax.constant_schedule(
            o.learning_rate)
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, max(warmup, 1), max(config.total_steps, warmup + 1),
                                              end_value=o.learning_rate * 1e-2)


def build_optimizer(config):
    """AdamW on the warmup schedule (gradient clipping lives in the train step)."""
    o = config.optimizer
    return optax.adamw(learning_rate_fn(config), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)


def _load_all(config) -> data.Dataset:
    if config.data.name == "synthetic":
        kw = _kw(config.data.kwargs)
        n, shape = int(kw.get("n", 64)), tuple(kw["shape"])
        rng = np.random.default_rng(kw.get("seed", 0))
        x = np.clip(rng.normal(0.0, 0.5, (n, *shape)), -1, 1).astype(np.float32)
        return data.Dataset(x, rng.integers(0, kw.get("num_classes", 10), n).astype(np.int32))
    return _keyed("data.name", data.get_dataset, config.data.name, **_kw(config.data.kwargs))


def holdout_fraction(config) -> float:
    """config.data.holdout, checked (0 for workdirs written before the key existed)."""
    h = config.data.get("holdout", 0.0) or 0.0
    if not (isinstance(h, (int, float)) and 0.0 <= h < 1.0):
        raise ConfigError(f"config.data.holdout: {h!r} is not a fraction; accepted: a float in [0, 1) (0: no holdout)")
    return float(h)


def _split(config):
    """(train, held_out) Datasets: holdout_split of the whole set, deterministic from config.seed."""
    ds, h = _load_all(config), holdout_fraction(config)
    if h == 0.0:
        return ds, None
    arrays = ds._asdict() if ds.label is not None else {"x": ds.x}
    train, held = _keyed("data.holdout", data.holdout_split, arrays, h, seed=config.seed)
    return data.Dataset(train["x"], train.get("label")), data.Dataset(held["x"], held.get("label"))


def load_data(config) -> data.Dataset:
    """The training set: jdiff.data.get_dataset(name, **kwargs), or "synthetic" Gaussian
    arrays of shape kwargs.shape (for smoke tests of large-image configs without the data),
    less the `data.holdout` fraction that `load_heldout` returns."""
    return _split(config)[0]


def load_heldout(config) -> data.Dataset | None:
    """The examples `load_data` leaves out of training (None when data.holdout is 0)."""
    return _split(config)[1]


def guidance_weight(config, weight=None) -> float | None:
    """The classifier-free guidance weight to sample with: `weight`, else config.guidance.weight
    for configs with a `guidance` section, else None (no guidance)."""
    g = config.get("guidance", None)
    if weight is None and g is None:
        return None
    return float(weight if weight is not None else g.weight)


def guided_model(model, kind, path, config, weight):
    """`model` under jdiff.guidance.classifier_free with `weight` and config.guidance's interval
    and rescale; the null class is num_classes (the label-dropout configs' extra embedding row)."""
    num_classes = int(config.model.kwargs.get("num_classes", 0) or 0)
    if not (config.data.cond and num_classes):
        raise ConfigError("config.model.kwargs.num_classes: classifier-free guidance needs a class-conditional "
                          "model (data.cond = 'label' and num_classes set)")
    g = config.get("guidance", None)
    interval = tuple(g.interval) if g is not None and g.get("interval", None) else None
    rescale = float(g.get("rescale", 0.0)) if g is not None else 0.0
    return guidance.classifier_free(model, kind, path, weight, null_cond=num_classes, interval=interval,
                                    rescale=rescale)


def make_sampler(config, graphdef, path, shape, *, solver=None, num_steps=None, grid=None, solver_kwargs=None,
                 cond=None, weight=None):
    """A jitted `fn(params, rest, key) -> samples` drawing `shape` samples with the config's
    (or the given) solver, grid and number of steps.

    cond: the labels of a class-conditional model (default 0, 1, 2, ... cycling over the classes).
    weight: classifier-free guidance weight (`guided_model`); default config.guidance.weight
        when the config has a `guidance` section, else no guidance.
    """
    if _flowmaps.enabled(config) and solver is None:  # flow-map configs (experiments/_flowmaps.py)
        return _flowmaps.make_sampler(config, graphdef, path, shape, num_steps=num_steps)
    s = config.sample
    solver_name = solver or s.solver
    kwargs = _kw(s.solver_kwargs) if solver is None else dict(solver_kwargs or {})
    solver = _keyed("sample.solver", samplers.get_solver, solver_name, **kwargs)
    grid_ts = _keyed("sample.grid", samplers.get_grid, grid or s.grid, path, int(num_steps or s.num_steps))
    num_classes = config.model.kwargs.get("num_classes", None)
    if cond is None and config.data.cond and num_classes:
        cond = jnp.arange(shape[0]) % num_classes
    w = guidance_weight(config, weight)

    @jax.jit
    def fn(params, rest, key):
        net = nnx.merge(graphdef, params, rest, copy=True)
        net.eval()  # dropout off
        model, kind = wrap_network(net, config, path)
        if w is not None:
            model = guided_model(model, kind, path, config, w)
        k_prior, k_solve = jax.random.split(key)
        x_T = path.prior_sample(k_prior, shape, jnp.float32)
        return samplers.sample(solver, model, kind, path, x_T, grid_ts, cond=cond,
                               key=k_solve if solver.stochastic else None)

    return fn


def check_config(config):
    """Check every name in `config` and build its model abstractly, without loading data or
    compiling anything; returns (path, abstract network)."""
    for key, value, accepted in (("model.preconditioning", config.model.preconditioning, PRECONDITIONINGS),
                                 ("optimizer.schedule", config.optimizer.schedule, SCHEDULES)):
        if value not in accepted:
            raise ConfigError(f"config.{key}: unknown value {value!r}; accepted: {', '.join(accepted)}")
    path = build_path(config)
    holdout_fraction(config)
    resolve_loss(config.loss.name)
    _keyed("sample.solver", samplers.get_solver, config.sample.solver, **_kw(config.sample.solver_kwargs))
    _keyed("sample.grid", samplers.get_grid, config.sample.grid, path, int(config.sample.num_steps))
    return path, check_model(config)


def validate(config):
    """`check_config`, then load the data and build the model; returns (path, dataset, network)."""
    path, _ = check_config(config)
    dataset = load_data(config)
    if config.data.cond and config.data.cond not in dataset._asdict():
        raise ConfigError(f"config.data.cond: {config.data.cond!r} is not a field of the data; accepted: "
                          f"{', '.join(k for k, v in dataset._asdict().items() if v is not None)}, or None")
    if tuple(dataset.x.shape[1:]) != tuple(config.data.shape):
        raise ConfigError(f"config.data.shape: {tuple(config.data.shape)} does not match the data's example shape "
                          f"{tuple(dataset.x.shape[1:])}")
    net = build_model(config)
    return path, dataset, net


# ----------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------


def save_samples(png_path: str, x, *, scale: int | None = None) -> None:
    """Images (N, H, W, C) as a grid; 2-D points (N, 2) as a density image (2-D histogram)."""
    x = np.asarray(x, np.float32)
    if x.ndim == 4:
        s = scale or max(1, 128 // x.shape[1])
        training.save_image_grid(png_path, x, scale=s)
    elif x.ndim == 2 and x.shape[1] == 2:
        from PIL import Image

        h, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=128, range=[[-4.5, 4.5], [-4.5, 4.5]])
        img = (255 * (1 - np.sqrt(h / max(h.max(), 1)))).astype(np.uint8)[::-1]
        os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
        Image.fromarray(np.repeat(np.repeat(img, 3, 0), 3, 1)).save(png_path)
    else:
        raise ValueError(f"can only draw images (N, H, W, C) or 2-D points (N, 2); got shape {x.shape}")


# ----------------------------------------------------------------------------------
# the train loop
# ----------------------------------------------------------------------------------


def _setup(config, path, net, mesh):
    tx = build_optimizer(config)
    graphdef, state = training.init_train_state(net, tx, jax.random.PRNGKey(config.seed), mesh=mesh)
    return tx, graphdef, state


def train_and_evaluate(config, workdir: str, *, hooks=()) -> dict:
    """Train per `config` in `workdir`, resuming from its latest checkpoint if it has one.

    hooks: callables hook(step, state, metrics) run after every step (evaluation, custom
        logging); `metrics` are device arrays of that step.
    Returns a dict: step, final_loss (mean over the last logging window), preempted,
    sample_png (last sample grid, if any) and workdir.
    Writes workdir/config.json, checkpoints/, metrics.jsonl, tb/ and samples/.
    """
    parallel.initialize_distributed(config.distributed)
    path, dataset, net = validate(config)  # raises before anything is written
    mesh = parallel.make_mesh(config.get("num_devices", None))
    parallel.local_batch_size(config.batch_size, mesh)
    tx, graphdef, state = _setup(config, path, net, mesh)
    loss_fn = build_loss(config, path)
    step_fn = training.make_train_step(
        loss_fn, graphdef, tx, mesh=mesh, ema=config.ema_decay, grad_clip_norm=config.optimizer.grad_clip_norm,
        learning_rate_fn=learning_rate_fn(config))

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
    sample_fn = make_sampler(config, graphdef, path, sample_shape) if config.sample_every else None

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
                if sample_fn is not None and step % config.sample_every == 0:
                    x = sample_fn(state.ema_params, state.rest, jax.random.PRNGKey(config.seed + 1))
                    sample_png = os.path.join(workdir, "samples", f"step_{step:07d}.png")
                    if jax.process_index() == 0:
                        save_samples(sample_png, jax.device_get(x))
                ckpt.save(step, state)
                if preemption.requested:
                    preempted = True
                    break
            if pending is not None:
                finish_step(*pending)
            ckpt.save(step, state, force=True)  # no-op when this step is already saved
        finally:
            progress.close()
            writer.close()
            ckpt.close()
    return {"step": step, "final_loss": final_loss, "preempted": preempted, "sample_png": sample_png,
            "workdir": workdir}


# ----------------------------------------------------------------------------------
# sampling a workdir
# ----------------------------------------------------------------------------------


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (workdir/config.json)."""
    p = os.path.join(workdir, "config.json")
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p} not found: `workdir` must be a directory written by experiments.train")
    with open(p) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_ema(config, workdir: str):
    """(graphdef, ema_params, rest, step) of the latest checkpoint in `workdir`."""
    path, net = build_path(config), build_model(config)
    _, graphdef, state = _setup(config, path, net, None)
    ckpt = checkpoint.Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), save_every=1)
    try:
        state = ckpt.restore(state)
    finally:
        ckpt.close()
    return graphdef, state.ema_params, state.rest, int(state.step)


def sample_workdir(workdir: str, config=None, *, solver: str | None = None, num_steps: int | None = None,
                   grid: str | None = None, num_samples: int | None = None, seed: int = 0, out: str | None = None,
                   solver_kwargs=None):
    """Sample the EMA weights of `workdir` with any solver / number of steps.

    Writes `out`.png (a grid) and `out`.npz (samples, and labels for conditional models);
    `out` defaults to workdir/samples/<solver>_<steps>. Returns (samples, png, npz).
    """
    config = load_config(workdir) if config is None else config
    path = build_path(config)
    graphdef, ema_params, rest, step = restore_ema(config, workdir)
    n = int(num_samples or config.sample.num_samples)
    fn = make_sampler(config, graphdef, path, (n, *config.data.shape), solver=solver, num_steps=num_steps, grid=grid,
                      solver_kwargs=solver_kwargs)
    x = np.asarray(jax.device_get(fn(ema_params, rest, jax.random.PRNGKey(seed))))
    name = f"{solver or config.sample.solver}_{int(num_steps or config.sample.num_steps)}"
    out = out or os.path.join(os.path.abspath(workdir), "samples", name)
    save_samples(out + ".png", x)
    num_classes = config.model.kwargs.get("num_classes", None)
    extra = {"labels": np.arange(n) % num_classes} if (config.data.cond and num_classes) else {}
    np.savez(out + ".npz", samples=x, step=step, **extra)
    return x, out + ".png", out + ".npz"
