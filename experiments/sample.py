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

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import _lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (default: <workdir>/config.json).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A directory written by experiments.train.")
_SOLVER = flags.DEFINE_string(
    "solver",
    None,
    "Solver name, one of experiments._names.SOLVERS (default: the config's; flow-map workdirs take none).",
)
_SOLVER_KWARGS = flags.DEFINE_list("solver_kwargs", [], "Solver options name=value (floats), e.g. eta=1.0.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Number of solver steps (default: the config's).")
_GRID = flags.DEFINE_string(
    "grid",
    None,
    "Time grid name (default: the config's), or a .npy file of decreasing "
    "times (jdiff.samplers.save_grid, e.g. a grid of samplers.optimize_grid).",
)
_CLOCK = flags.DEFINE_string(
    "clock",
    None,
    "Integration clock of euler, heun or lms: one of "
    "experiments._names.CLOCKS (auto, t, sigma; default: the config's solver_kwargs, else auto).",
)
_OPT_OBJECTIVE = flags.DEFINE_string(
    "optimize_objective",
    None,
    "--grid=optimize: the objective, one of "
    "experiments._names.GRID_OBJECTIVES (default global_error: the distance to an "
    "adaptive PF-ODE solve; local_error needs no reference solve).",
)
_OPT_STEPS = flags.DEFINE_integer("optimize_steps", None, "--grid=optimize: adam updates of the grid (default 100).")
_OPT_LR = flags.DEFINE_float("optimize_lr", None, "--grid=optimize: adam's learning rate (default 0.05).")
_OPT_SAMPLES = flags.DEFINE_integer(
    "optimize_samples", None, "--grid=optimize: prior draws the grid is fitted on (default 64)."
)
_OPT_INIT = flags.DEFINE_string(
    "optimize_init",
    None,
    "--grid=optimize: the starting grid, a grid name or .npy file (default: the config's sample.grid).",
)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "How many samples (default: the config's).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the prior draw and of stochastic solvers.")
_OUT = flags.DEFINE_string("out", None, "Output path without extension.")
_GUIDANCE_WEIGHT = flags.DEFINE_float(
    "guidance_weight",
    None,
    "Classifier-free guidance weight (1: the conditional "
    "model; default: config.guidance.weight); writes one row per class.",
)
_PER_CLASS = flags.DEFINE_integer("per_class", None, "Samples per class row (default: num_samples // num_classes).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    with _lib.exit_on_error():
        if len(argv) > 1:
            raise _lib.ConfigError(f"{argv[1]}: unexpected argument; accepted: --flag=value arguments only")
        kwargs = _lib.solver_options(_SOLVER_KWARGS.value)
        optimize = {
            key: flag.value
            for key, flag in (
                ("objective", _OPT_OBJECTIVE),
                ("iterations", _OPT_STEPS),
                ("learning_rate", _OPT_LR),
                ("num_samples", _OPT_SAMPLES),
                ("init", _OPT_INIT),
            )
            if flag.value is not None
        }
        config = _CONFIG.value
        if config is None:
            config, _, _ = _lib.check_trained_workdir(_WORKDIR.value)
        options = {
            "solver": _SOLVER.value,
            "num_steps": _NUM_STEPS.value,
            "grid": _GRID.value,
            "num_samples": _NUM_SAMPLES.value,
            "seed": _SEED.value,
            "out": _OUT.value,
            "solver_kwargs": kwargs,
            "clock": _CLOCK.value,
            "optimize": optimize,
        }
        if _GUIDANCE_WEIGHT.value is not None or "guidance" in config:
            _, _, png, npz, acc = _lib.sample_class_rows(
                _WORKDIR.value, config, weight=_GUIDANCE_WEIGHT.value, per_class=_PER_CLASS.value, **options
            )
            print(f"wrote {png} and {npz}" + ("" if acc is None else f"; digit-classifier accuracy {acc:.3f}"))
            return
        _, png, npz = _lib.sample_workdir(_WORKDIR.value, config, **options)
    print(f"wrote {png} and {npz}")


if __name__ == "__main__":
    app.run(main, flags_parser=_lib.parse_flags)
