"""Sample the EMA weights of a trained workdir with any solver and number of steps.

    python -m experiments.sample --workdir=/tmp/digits --solver=dpmpp_2m --num_steps=10
    python -m experiments.sample --workdir=/tmp/digits --solver=ddim --solver_kwargs=eta=1.0

Writes <out>.png (a grid) and <out>.npz (samples, step, labels for conditional models);
<out> defaults to <workdir>/samples/<solver>_<num_steps>. The config is read from the
workdir unless --config is given.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import _lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (default: <workdir>/config.json).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A directory written by experiments.train.")
_SOLVER = flags.DEFINE_string("solver", None, "jdiff.samplers solver name (default: the config's).")
_SOLVER_KWARGS = flags.DEFINE_list("solver_kwargs", [], "Solver options name=value (floats), e.g. eta=1.0.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Number of solver steps (default: the config's).")
_GRID = flags.DEFINE_string("grid", None, "Time grid name (default: the config's).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "How many samples (default: the config's).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the prior draw and of stochastic solvers.")
_OUT = flags.DEFINE_string("out", None, "Output path without extension.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    kwargs = dict(kv.split("=", 1) for kv in _SOLVER_KWARGS.value)
    try:
        _, png, npz = _lib.sample_workdir(
            _WORKDIR.value, _CONFIG.value, solver=_SOLVER.value, num_steps=_NUM_STEPS.value, grid=_GRID.value,
            num_samples=_NUM_SAMPLES.value, seed=_SEED.value, out=_OUT.value,
            solver_kwargs={k: float(v) for k, v in kwargs.items()})
    except (_lib.ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {png} and {npz}")


if __name__ == "__main__":
    app.run(main)
