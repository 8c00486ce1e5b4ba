"""Workdirs: checked before anything is written, written atomically, restored and sampled.

    run = check_workdir("/tmp/run", config)        # a new or resumable workdir; writes nothing
    write_config(run, config)                      # config.json, atomically (write, then rename)
    config, recipe, ema = restore("/tmp/run")
    x, png, npz = sample_workdir("/tmp/run", solver="heun", num_steps=20)

A workdir is never damaged by a bad input: an existing workdir's config.json is compared with
the config, not overwritten; a changed config is refused (listing the keys that differ) unless
`allow_config_change`, and then the old file is kept as config.step<N>.json. Every file is
written to a temporary name in its folder and renamed over the target, so a killed run leaves
the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _images, _names, _state, _validate
from experiments._config import ConfigError, Spec, check_flag, guidance_weight, kwargs_of, load_config
from experiments._recipes import DiffusionRecipe, Recipe
from jdiff import checkpoint, metrics, parallel, samplers, training

__all__ = [
    "Workdir",
    "atomic_path",
    "atomic_write",
    "check_grid_options",
    "check_output",
    "check_trained_workdir",
    "check_workdir",
    "checkpoint_steps",
    "clock_kwargs",
    "fit_grid",
    "restore",
    "restore_state",
    "sample_workdir",
    "sampler_flags",
    "write_config",
]

NEW_WORKDIR = "accepted: a new or empty directory, or a workdir written by experiments.train"


# ----------------------------------------------------------------------------------
# Atomic files
# ----------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str):
    """A temporary path next to `path` (same extension, so PIL / numpy pick the format) to write;
    renamed over `path` when the block ends without an error, removed otherwise. For a cloud
    `path` (gs://...) a local temporary file, uploaded in one write."""
    if checkpoint.is_url(path):
        with tempfile.TemporaryDirectory() as folder:
            tmp = os.path.join(folder, os.path.basename(os.fspath(path)))
            yield tmp
            with open(tmp, "rb") as f:
                checkpoint.write_atomic(path, f.read())
        return
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.tmp{os.getpid()}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str, content: str | bytes) -> None:
    """Write `content` to `path` atomically (a temporary file renamed over it)."""
    with atomic_path(path) as tmp, open(tmp, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def check_output(path: str, flag: str) -> str:
    """`path` (an output file) can be created: its nearest existing folder is a folder (cloud
    storage paths have no folders to check)."""
    if checkpoint.is_url(path):
        return os.fspath(path)
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"{flag}: {path} is a directory; accepted: a file path")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(
            f"{flag}: cannot create {path}: {parent} is a file, not a directory; accepted: a path "
            "whose parent folders are directories"
        )
    return path


# ----------------------------------------------------------------------------------
# Checking a workdir before training writes to it
# ----------------------------------------------------------------------------------


class Workdir(NamedTuple):
    """What `check_workdir` found: the absolute path, the config.json there (None: a new workdir),
    its checkpoint steps, and the keys the new config changes {key: (old, new)}."""

    path: str
    config: ml_collections.ConfigDict | None
    steps: list[int]
    changed: dict


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in workdir/checkpoints (orbax names each one by its
    step; unfinished saves carry a suffix), sorted."""
    folder = checkpoint.as_path(workdir) / "checkpoints"  # local or gs://
    if not folder.is_dir():
        return []
    return sorted(int(d.name) for d in folder.iterdir() if d.name.isdigit() and d.is_dir())


def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old, new) -> dict:
    """{key: (old value, new value)} of every leaf key that differs between two configs (as JSON;
    a key present in only one has the value "<absent>" in the other)."""
    a = _flat(json.loads(old.to_json_best_effort()))
    b = _flat(json.loads(new.to_json_best_effort()))
    return {
        k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    }


def _workdir_config(workdir: str, accepted: str = NEW_WORKDIR):
    try:
        return load_config(workdir)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--workdir: {str(e).splitlines()[0]}; {accepted}") from e


def check_workdir(workdir: str, config, *, allow_config_change: bool = False) -> Workdir:
    """Check that training `config` may write to `workdir`, writing nothing: a new path whose
    parents are folders, an empty folder, or a workdir of experiments.train whose config.json
    equals `config` (or differs, with `allow_config_change`) and whose latest checkpoint is at
    most config.total_steps. Raises a one-line ConfigError otherwise."""
    where = checkpoint.as_path(workdir)  # a local path (made absolute) or gs://...
    path = os.fspath(where)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"--workdir: {path} is a file; {NEW_WORKDIR}")
    if not where.exists():
        check_output(path, "--workdir")
        return Workdir(path, None, [], {})
    if not (where / "config.json").exists():
        files = [os.fspath((root / f).relative_to(where)) for root, _, fs in where.walk() for f in fs]
        if files:
            raise ConfigError(
                f"--workdir: {path} holds files ({', '.join(sorted(files)[:3])}) but no config.json, so "
                f"experiments.train did not write it; {NEW_WORKDIR}"
            )
        return Workdir(path, None, [], {})
    old = _workdir_config(path)
    changed = config_changes(old, config)
    if changed and not allow_config_change:
        keys = ", ".join(f"config.{k}" for k in changed)
        diffs = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        verb = "differs" if len(changed) == 1 else "differ"
        raise ConfigError(
            f"{keys}: {verb} from {os.path.join(path, 'config.json')}, the config this workdir was "
            f"trained with ({diffs}); accepted: the workdir's values, or --allow_config_change to "
            "resume with the new ones"
        )
    steps = checkpoint_steps(path)
    if steps and steps[-1] > config.total_steps:
        raise ConfigError(
            f"config.total_steps: {config.total_steps} is below the step {steps[-1]} of the workdir's "
            f"latest checkpoint; accepted: an int >= {steps[-1]}"
        )
    return Workdir(path, old, steps, changed)


def write_config(run: Workdir, config) -> None:
    """Write workdir/config.json atomically: for a new workdir, or for a changed config (resumed
    with allow_config_change, the old file kept as config.step<N>.json); an unchanged one is
    left as it is."""
    target = os.path.join(run.path, "config.json")
    if run.config is not None and not run.changed:
        return
    if run.config is not None:
        step = run.steps[-1] if run.steps else 0
        atomic_write(os.path.join(run.path, f"config.step{step}.json"), run.config.to_json_best_effort(indent=2))
    atomic_write(target, config.to_json_best_effort(indent=2))


def restore_state(ckpt, state, workdir: str):
    """`ckpt.restore(state)` (the latest checkpoint), a checkpoint of another network or optimizer
    (a config changed with allow_config_change) as a one-line ConfigError (`ckpt` is then closed)."""
    try:
        return ckpt.restore(state)
    except (ValueError, KeyError, TypeError) as e:
        step = ckpt.latest_step()
        ckpt.close()
        raise ConfigError(
            f"config.model: the latest checkpoint ({step}) of {workdir} does not fit "
            f"this config's train state ({str(e).splitlines()[0][:200]}); accepted: the network and "
            "optimizer the workdir was trained with"
        ) from e


# ----------------------------------------------------------------------------------
# A trained workdir: restore and sample
# ----------------------------------------------------------------------------------


def check_trained_workdir(workdir: str, config=None) -> tuple[object, Recipe, int]:
    """(config, recipe, latest checkpoint step) of a workdir written by experiments.train: its
    config.json (or `config`), checked by `_validate.check_config`, and at least one checkpoint."""
    if workdir is None or not checkpoint.as_path(workdir).is_dir():
        what = "is not given" if workdir is None else f"{checkpoint.as_path(workdir)} is not a directory"
        raise ConfigError(f"--workdir: {what}; accepted: a directory written by experiments.train")
    accepted = "accepted: a directory written by experiments.train"
    config = _workdir_config(workdir, accepted) if config is None else config
    recipe, _ = _validate.check_config(config)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise ConfigError(
            f"--workdir: {os.path.abspath(workdir)} has no checkpoint yet; accepted: a workdir "
            "experiments.train has saved a checkpoint in"
        )
    return config, recipe, steps[-1]


def restore(workdir: str, config=None) -> tuple[object, Recipe, _state.EMAWeights]:
    """(config, recipe, EMA weights of the latest checkpoint) of `workdir`; `config` defaults to
    the one it was trained with (workdir/config.json). Checks first: one-line ConfigErrors."""
    config, recipe, _ = check_trained_workdir(workdir, config)
    try:
        ema = recipe.restore_ema(workdir)
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"config.model: the latest checkpoint of {os.path.abspath(workdir)} does not fit this "
            f"config's network ({str(e).splitlines()[0][:200]}); accepted: the config the workdir was "
            "trained with"
        ) from e
    return config, recipe, ema


_COUNT = Spec("int", 1, none="the config's")


@contextlib.contextmanager
def sampler_flags(solver, grid, solver_kwargs):
    """Errors of `make_sampler` about a solver or grid given as an argument name that argument
    (--solver, --grid, --solver_kwargs) rather than the config key it overrides."""
    try:
        yield
    except ConfigError as e:
        msg = str(e)
        if solver is not None and "unexpected keyword argument" in msg:
            options = [p for p in inspect.signature(_names.SOLVERS.get(solver, object)).parameters if p != "self"]
            raise ConfigError(
                f"--solver_kwargs: {msg.split(': ', 1)[1]}; accepted: the options of {solver!r}: "
                f"{', '.join(options) or 'none'}"
            ) from e
        for flag, value, key in (("--solver", solver, "config.sample.solver"), ("--grid", grid, "config.sample.grid")):
            if value is not None and msg.startswith(key + ":"):
                raise ConfigError(flag + msg[len(key) :]) from e
        raise
    except ValueError as e:  # e.g. a solver option for a flow-map workdir
        raise ConfigError(f"--solver: {str(e).splitlines()[0]}; accepted: --num_steps and --grid only") from e


GRID_OPTIONS = {  # sample_workdir(optimize={...}) key: (flag, default, what it accepts)
    "objective": ("--optimize_objective", "global_error", None),
    "iterations": ("--optimize_steps", 100, Spec("int", 1)),
    "learning_rate": ("--optimize_lr", 0.05, Spec("float", 0.0, lo_open=True)),
    "num_samples": ("--optimize_samples", 64, Spec("int", 1)),
    "init": ("--optimize_init", None, Spec("str", none="config.sample.grid")),
}


def check_grid_options(grid, optimize) -> dict | None:
    """The --grid=optimize options (GRID_OPTIONS keys) with their defaults, checked; None without
    --grid=optimize (then no option may be given)."""
    optimize = dict(optimize or {})
    for key in optimize:
        if key not in GRID_OPTIONS:
            raise ConfigError(f"optimize: unknown option {key!r}; accepted: {', '.join(GRID_OPTIONS)}")
    if grid != "optimize":
        for key in optimize:
            raise ConfigError(
                f"{GRID_OPTIONS[key][0]}: applies with --grid=optimize only; accepted: "
                "--grid=optimize to fit the grid, or no optimize flags"
            )
        return None
    out = {}
    for key, (flag, default, spec) in GRID_OPTIONS.items():
        value = optimize.get(key, default)
        if spec is not None:
            check_flag(flag, value, spec)
        out[key] = value
    try:
        out["objective"] = _names.get_grid_objective(out["objective"])
    except ValueError as e:
        raise ConfigError(f"--optimize_objective: {e}") from None
    if out["init"] == "optimize":
        raise ConfigError(
            "--optimize_init: 'optimize' is not a starting grid; accepted: a grid name ("
            f"{', '.join(_names.GRIDS)}) or a .npy file"
        )
    return out


def clock_kwargs(config, solver, solver_kwargs, clock):
    """(solver, solver_kwargs) with --clock added (the config's solver and options when `solver`
    is None); a clock for a solver without one is a one-line ConfigError."""
    if clock is None:
        return solver, solver_kwargs
    try:
        value = _names.get_clock(clock)
    except ValueError as e:
        raise ConfigError(f"--clock: {e}") from None
    if solver is None:
        solver = config.sample.solver
        solver_kwargs = {**kwargs_of(config.sample.solver_kwargs), **(solver_kwargs or {})}
    with_clock = [n for n, cls in _names.SOLVERS.items() if "clock" in inspect.signature(cls).parameters]
    if solver in _names.SOLVERS and solver not in with_clock:
        raise ConfigError(
            f"--clock: solver {solver!r} has no clock option; accepted: a solver that integrates in "
            f"a clock: {', '.join(with_clock)}"
        )
    return solver, {**(solver_kwargs or {}), "clock": value}


def sample_workdir(
    workdir: str,
    config=None,
    *,
    solver: str | None = None,
    num_steps: int | None = None,
    grid: str | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    out: str | None = None,
    solver_kwargs=None,
    clock: str | None = None,
    optimize: dict | None = None,
    progress=print,
):
    """Sample the EMA weights of `workdir` with any solver / number of steps (the recipe's
    `make_sampler`; flow-map workdirs take num_steps and grid only).

    Writes `out`.png (a grid) and `out`.npz (samples, step, and labels for conditional models),
    each atomically; `out` defaults to workdir/samples/<sampler name>, e.g. heun_20. Returns
    (samples, png, npz). Every argument is checked before anything is sampled or written.

    clock: the `clock=` of a solver that takes one (euler, heun, lms; experiments._names.CLOCKS).
    grid="optimize": fit the solver's num_steps-step grid to this model first
    (`jdiff.samplers.optimize_grid`, through `recipe.fit_grid`) with the options `optimize`
    (GRID_OPTIONS: objective "global_error" | "local_error", iterations, learning_rate,
    num_samples prior draws of fold_in(seed, 1), init: the starting grid), reporting its
    progress through `progress(line)`, write it next to the samples as `out`_grid.npy
    (`samplers.save_grid`; `out` defaults to workdir/samples/<sampler name>_optimized) and
    sample on it.
    """
    parallel.initialize_distributed()  # under a launcher (JAX_NUM_PROCESSES > 1): every process draws its share
    check_flag("--num_steps", num_steps, _COUNT)
    check_flag("--num_samples", num_samples, _COUNT)
    options = check_grid_options(grid, optimize)
    if out is not None:
        check_output(out + ".png", "--out")
    config, recipe, ema = restore(workdir, config)
    solver, solver_kwargs = clock_kwargs(config, solver, solver_kwargs, clock)
    n = int(num_samples or config.sample.num_samples)
    suffix = ""
    if options is not None:
        grid, _ = fit_grid(recipe, ema, config, solver, solver_kwargs, num_steps, seed, options, progress)
        suffix = "_optimized"
        num_steps = None  # the grid's length
    with sampler_flags(solver, None if options else grid, solver_kwargs):
        sampler = recipe.make_sampler(
            ema.graphdef,
            (n, *config.data.shape),
            solver=solver,
            num_steps=num_steps,
            grid=grid,
            solver_kwargs=solver_kwargs,
        )
    x = _state.draw_samples(sampler.draw, ema.params, ema.rest, jax.random.PRNGKey(seed), n)  # each process its share
    out = out or os.fspath(checkpoint.as_path(workdir) / "samples" / (sampler.name + suffix))
    if jax.process_index() == 0:
        if options is not None:
            with atomic_path(out + "_grid.npy") as tmp:
                samplers.save_grid(tmp, grid)
            progress(f"wrote {out}_grid.npy")
        _images.save_samples(out + ".png", x)  # written atomically
        labels = recipe.labels(n)
        extra = {} if labels is None else {"labels": np.asarray(labels)}
        with atomic_path(out + ".npz") as tmp:
            np.savez(tmp, samples=x, step=ema.step, **extra)
    return x, out + ".png", out + ".npz"


def fit_grid(recipe, ema, config, solver, solver_kwargs, num_steps, seed, options, progress, *, cond=None, weight=None):
    """The grid `recipe.fit_grid` fits for --grid=optimize (options: `check_grid_options`), and
    the sampler name; progress(line) reports every tenth update."""
    if not isinstance(recipe, DiffusionRecipe):
        raise ConfigError(
            f"--grid: 'optimize' fits the grid of a diffusion workdir's solver, not of a "
            f"{type(recipe).__name__} workdir; accepted: a grid name ({', '.join(_names.GRIDS)})"
        )
    iterations = options["iterations"]
    every = max(1, iterations // 10)

    def report(i, rms):
        if i % every == 0 or i == iterations - 1:
            progress(f"optimize_grid: update {i + 1}/{iterations}, objective (rms) {rms:.5g}")

    init = options["init"]
    with sampler_flags(solver, None, solver_kwargs):
        try:
            result, name = recipe.fit_grid(
                ema.graphdef,
                ema.params,
                ema.rest,
                (options["num_samples"], *config.data.shape),
                jax.random.fold_in(jax.random.PRNGKey(seed), 1),
                objective=options["objective"],
                iterations=iterations,
                learning_rate=options["learning_rate"],
                init=init,
                num_steps=num_steps,
                solver=solver,
                solver_kwargs=solver_kwargs,
                cond=cond,
                weight=weight,
                progress=report,
            )
        except ConfigError as e:
            msg, key = str(e), "config.sample.grid"
            if init is not None and msg.startswith(key + ":"):
                raise ConfigError("--optimize_init" + msg[len(key) :]) from e
            raise
    progress(
        f"optimize_grid: objective (rms) {float(np.sqrt(result.initial_loss)):.5g} on the initial grid -> "
        f"{float(np.sqrt(result.loss)):.5g}"
    )
    return np.asarray(result.grid), name


# -- classifier-free guidance: one row per class (configs with a `guidance` section) ---------


def sample_class_rows(
    workdir,
    config=None,
    *,
    weight=None,
    per_class=None,
    solver=None,
    num_steps=None,
    grid=None,
    num_samples=None,
    seed=0,
    out=None,
    solver_kwargs=None,
    accuracy=True,
    clock=None,
    optimize=None,
    progress=print,
):
    """Sample a class-conditional workdir with classifier-free guidance, one row per class.

    weight: CFG weight (default config.guidance.weight; 1 = the conditional model).
    per_class: samples per class (default (num_samples or config.sample.num_samples) // num_classes).
    Writes <out>.png (row c = class c) and <out>.npz (samples, labels, step, guidance_weight);
    <out> defaults to workdir/samples/cfg<weight>_<solver>_<steps>. With `accuracy` and the
    digits data, also trains jdiff.metrics' digit classifier (seed 0) and returns the
    fraction of samples it assigns to their class. Returns (samples, labels, png, npz, accuracy).
    clock, grid="optimize" and `optimize`: as in `_lib.sample_workdir` (the grid is fitted on
    the guided model and its class rows, written as <out>_grid.npy).
    """
    count = Spec("int", 1, none="the default")
    for flag, value in (("--per_class", per_class), ("--num_samples", num_samples), ("--num_steps", num_steps)):
        check_flag(flag, value, count)
    check_flag("--guidance_weight", weight, Spec("float", none="config.guidance.weight"))
    options = check_grid_options(grid, optimize)
    if out is not None:
        check_output(out + ".png", "--out")
    config, recipe, ema = restore(workdir, config)
    if recipe.num_classes is None:
        raise ConfigError(
            "config.model.kwargs.num_classes: class rows need a class-conditional model "
            "(data.cond = 'label' and num_classes set)"
        )
    weight = guidance_weight(config, weight)
    weight = 1.0 if weight is None else weight  # no guidance section: the conditional model
    per_class = int(per_class or max(int(num_samples or config.sample.num_samples) // recipe.num_classes, 1))
    labels = jnp.repeat(jnp.arange(recipe.num_classes), per_class)  # row c of the grid is class c
    solver, solver_kwargs = clock_kwargs(config, solver, solver_kwargs, clock)
    suffix = ""
    if options is not None:
        fit_labels = jnp.arange(options["num_samples"]) % recipe.num_classes
        grid, _ = fit_grid(
            recipe,
            ema,
            config,
            solver,
            solver_kwargs,
            num_steps,
            seed,
            options,
            progress,
            cond=fit_labels,
            weight=weight,
        )
        suffix, num_steps = "_optimized", None
    # The training loop's sample grids go through the same guided sampler (recipe.make_sampler).
    with sampler_flags(solver, None if options else grid, solver_kwargs):
        sampler = recipe.make_sampler(
            ema.graphdef,
            (labels.shape[0], *config.data.shape),
            solver=solver,
            num_steps=num_steps,
            grid=grid,
            solver_kwargs=solver_kwargs,
            cond=labels,
            weight=weight,
        )
    x = np.asarray(jax.device_get(sampler(ema.params, ema.rest, jax.random.PRNGKey(seed))))
    out = out or os.path.join(os.path.abspath(workdir), "samples", f"cfg{weight:g}_{sampler.name}{suffix}")
    if options is not None:
        with atomic_path(out + "_grid.npy") as tmp:
            samplers.save_grid(tmp, grid)
        progress(f"wrote {out}_grid.npy")
    training.save_image_grid(out + ".png", x, ncol=per_class, scale=max(1, 128 // x.shape[1]))  # atomically
    with atomic_path(out + ".npz") as tmp:
        np.savez(tmp, samples=x, labels=np.asarray(labels), step=ema.step, guidance_weight=weight)
    acc = None
    if accuracy and config.data.name == "digits":
        clf, _ = metrics.train_digit_classifier(0)
        acc = float(metrics.classifier_accuracy(clf, x, labels))
    return x, np.asarray(labels), out + ".png", out + ".npz", acc


def solver_options(items) -> dict:
    """--solver_kwargs name=value items as {name: float}; a malformed one is a one-line ConfigError."""
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        try:
            if not (eq and name.isidentifier()):
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise ConfigError(
                f"--solver_kwargs: {item!r} is not name=number; accepted: comma-separated "
                "name=value options with float values, e.g. eta=1.0"
            ) from None
    return out
