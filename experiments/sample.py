"""Sample the EMA weights of a trained workdir with any solver and number of steps.

    python -m experiments.sample --workdir=/tmp/digits --solver=dpmpp_2m --num_steps=10
    python -m experiments.sample --workdir=/tmp/digits --solver=ddim --solver_kwargs=eta=1.0
    python -m experiments.sample --workdir=/tmp/digits --solver=euler --clock=sigma
    python -m experiments.sample --workdir=/tmp/digits --solver=unipc --num_steps=10 --grid=optimize \
        --optimize_objective=local_error --optimize_steps=100

--grid=optimize fits the solver's num_steps-step time grid to the workdir's model first
(jdiff.samplers.optimize_grid on --optimize_samples prior draws, --optimize_steps adam updates
from the --optimize_init grid, printing its progress), writes it next to the samples as
<out>_grid.npy (jdiff.samplers.save_grid; <out> defaults to <workdir>/samples/<solver>_<num_steps>_optimized)
and samples on it; --grid=<out>_grid.npy samples on it again.

Writes <out>.png (a grid) and <out>.npz (samples, step, labels for conditional models);
<out> defaults to <workdir>/samples/<solver>_<num_steps> (flowmap_<num_steps> for a flow-map
workdir, which takes --num_steps and --grid only). The config is read from the workdir unless
--config is given.

Class-conditional models with classifier-free guidance (configs with a `guidance` section,
e.g. digits_cfg.py, or any --guidance_weight) write one row per class instead, and on the
digits report the accuracy of jdiff.metrics' digit classifier on the generated classes:

    python -m experiments.sample --workdir=/tmp/digits_cfg --guidance_weight=1.5

Every flag, the workdir (config.json, a checkpoint) and its config are checked before anything
is sampled or written; a bad one fails with one line and exit code 2, and files are written
atomically, so the workdir is never left with half a file.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import _lib, _workdir
from experiments._config import Spec, check_flag
from jdiff import metrics, samplers, training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (default: <workdir>/config.json).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A directory written by experiments.train.")
_SOLVER = flags.DEFINE_string("solver", None, "Solver name, one of experiments._names.SOLVERS (default: the "
                              "config's; flow-map workdirs take none).")
_SOLVER_KWARGS = flags.DEFINE_list("solver_kwargs", [], "Solver options name=value (floats), e.g. eta=1.0.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Number of solver steps (default: the config's).")
_GRID = flags.DEFINE_string("grid", None, "Time grid name (default: the config's), or a .npy file of decreasing "
                            "times (jdiff.samplers.save_grid, e.g. a grid of samplers.optimize_grid).")
_CLOCK = flags.DEFINE_string("clock", None, "Integration clock of euler, heun or lms: one of "
                             "experiments._names.CLOCKS (auto, t, sigma; default: the config's solver_kwargs, else auto).")
_OPT_OBJECTIVE = flags.DEFINE_string("optimize_objective", None, "--grid=optimize: the objective, one of "
                                     "experiments._names.GRID_OBJECTIVES (default global_error: the distance to an "
                                     "adaptive PF-ODE solve; local_error needs no reference solve).")
_OPT_STEPS = flags.DEFINE_integer("optimize_steps", None, "--grid=optimize: adam updates of the grid (default 100).")
_OPT_LR = flags.DEFINE_float("optimize_lr", None, "--grid=optimize: adam's learning rate (default 0.05).")
_OPT_SAMPLES = flags.DEFINE_integer("optimize_samples", None, "--grid=optimize: prior draws the grid is fitted on "
                                    "(default 64).")
_OPT_INIT = flags.DEFINE_string("optimize_init", None, "--grid=optimize: the starting grid, a grid name or .npy file "
                                "(default: the config's sample.grid).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "How many samples (default: the config's).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the prior draw and of stochastic solvers.")
_OUT = flags.DEFINE_string("out", None, "Output path without extension.")
_GUIDANCE_WEIGHT = flags.DEFINE_float("guidance_weight", None, "Classifier-free guidance weight (1: the conditional "
                                      "model; default: config.guidance.weight); writes one row per class.")
_PER_CLASS = flags.DEFINE_integer("per_class", None, "Samples per class row (default: num_samples // num_classes).")
flags.mark_flags_as_required(["workdir"])


# -- classifier-free guidance: one row per class (configs with a `guidance` section) ---------


def sample_class_rows(workdir, config=None, *, weight=None, per_class=None, solver=None, num_steps=None, grid=None,
                      num_samples=None, seed=0, out=None, solver_kwargs=None, accuracy=True, clock=None,
                      optimize=None, progress=print):
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
    options = _workdir.check_grid_options(grid, optimize)
    if out is not None:
        _workdir.check_output(out + ".png", "--out")
    config, recipe, ema = _lib.restore(workdir, config)
    if recipe.num_classes is None:
        raise _lib.ConfigError("config.model.kwargs.num_classes: class rows need a class-conditional model "
                               "(data.cond = 'label' and num_classes set)")
    weight = _lib.guidance_weight(config, weight)
    weight = 1.0 if weight is None else weight  # no guidance section: the conditional model
    per_class = int(per_class or max(int(num_samples or config.sample.num_samples) // recipe.num_classes, 1))
    labels = jnp.repeat(jnp.arange(recipe.num_classes), per_class)  # row c of the grid is class c
    solver, solver_kwargs = _workdir.clock_kwargs(config, solver, solver_kwargs, clock)
    suffix = ""
    if options is not None:
        fit_labels = jnp.arange(options["num_samples"]) % recipe.num_classes
        grid, _ = _workdir.fit_grid(recipe, ema, config, solver, solver_kwargs, num_steps, seed, options, progress,
                                    cond=fit_labels, weight=weight)
        suffix, num_steps = "_optimized", None
    # The training loop's sample grids go through the same guided sampler (recipe.make_sampler).
    with _workdir.sampler_flags(solver, None if options else grid, solver_kwargs):
        sampler = recipe.make_sampler(ema.graphdef, (labels.shape[0], *config.data.shape), solver=solver,
                                      num_steps=num_steps, grid=grid, solver_kwargs=solver_kwargs, cond=labels,
                                      weight=weight)
    x = np.asarray(jax.device_get(sampler(ema.params, ema.rest, jax.random.PRNGKey(seed))))
    out = out or os.path.join(os.path.abspath(workdir), "samples", f"cfg{weight:g}_{sampler.name}{suffix}")
    if options is not None:
        with _workdir.atomic_path(out + "_grid.npy") as tmp:
            samplers.save_grid(tmp, grid)
        progress(f"wrote {out}_grid.npy")
    training.save_image_grid(out + ".png", x, ncol=per_class, scale=max(1, 128 // x.shape[1]))  # atomically
    with _workdir.atomic_path(out + ".npz") as tmp:
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
            raise _lib.ConfigError(f"--solver_kwargs: {item!r} is not name=number; accepted: comma-separated "
                                   "name=value options with float values, e.g. eta=1.0") from None
    return out


def main(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    with _lib.exit_on_error():
        if len(argv) > 1:
            raise _lib.ConfigError(f"{argv[1]}: unexpected argument; accepted: --flag=value arguments only")
        kwargs = solver_options(_SOLVER_KWARGS.value)
        optimize = {key: flag.value for key, flag in (("objective", _OPT_OBJECTIVE), ("iterations", _OPT_STEPS),
                                                       ("learning_rate", _OPT_LR), ("num_samples", _OPT_SAMPLES),
                                                       ("init", _OPT_INIT)) if flag.value is not None}
        config = _CONFIG.value
        if config is None:
            config, _, _ = _lib.check_trained_workdir(_WORKDIR.value)
        if _GUIDANCE_WEIGHT.value is not None or "guidance" in config:
            _, _, png, npz, acc = sample_class_rows(
                _WORKDIR.value, config, weight=_GUIDANCE_WEIGHT.value, per_class=_PER_CLASS.value, solver=_SOLVER.value,
                num_steps=_NUM_STEPS.value, grid=_GRID.value, num_samples=_NUM_SAMPLES.value, seed=_SEED.value,
                out=_OUT.value, solver_kwargs=kwargs, clock=_CLOCK.value, optimize=optimize)
            print(f"wrote {png} and {npz}" + ("" if acc is None else f"; digit-classifier accuracy {acc:.3f}"))
            return
        _, png, npz = _lib.sample_workdir(
            _WORKDIR.value, config, solver=_SOLVER.value, num_steps=_NUM_STEPS.value, grid=_GRID.value,
            num_samples=_NUM_SAMPLES.value, seed=_SEED.value, out=_OUT.value, solver_kwargs=kwargs,
            clock=_CLOCK.value, optimize=optimize)
    print(f"wrote {png} and {npz}")


if __name__ == "__main__":
    app.run(main, flags_parser=_lib.parse_flags)
