"""Train a model from a config file.

    python -m experiments.train --config=experiments/configs/digits_vp.py:runlocal --workdir=/tmp/digits
    python -m experiments.train --config=experiments/configs/toy2d_fm.py --config.total_steps=500 --workdir=runs/toy

    python -m experiments.train --config=experiments/configs/digits_mlp.py:runlocal --workdir=/tmp/mine \
        --config.data.name=npz --config.data.kwargs.path=/data/mine.npz --config.data.holdout=0.0

Rerunning with the same --workdir resumes from its latest checkpoint; a config that differs
from the workdir's config.json is refused (listing the keys) unless --allow_config_change.
A bad input (config value or name, data file, devices, workdir) fails with one line,
`error: config.<key>: <what is wrong>; <accepted values>`, and exit code 2 before anything is
written; a run that diverges ends with one line and exit code 3.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import _lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir whose config.json differs from --config (the old file is kept as config.step<N>.json).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    with _lib.exit_on_error():
        if len(argv) > 1:
            raise _lib.ConfigError(f"{argv[1]}: unexpected argument; accepted: --flag=value arguments only")
        result = _lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    print(
        f"step {result['step']}  final loss {result['final_loss']:.4f} (step {result['step']}; mean since the "
        f"previous log row {result['final_loss_mean']:.4f})  workdir {result['workdir']}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=_lib.parse_flags)
