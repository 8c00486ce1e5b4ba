"""Train a model from a config file.

    python -m experiments.train --config=experiments/configs/digits_vp.py:runlocal --workdir=/tmp/digits
    python -m experiments.train --config=experiments/configs/toy2d_fm.py --config.total_steps=500 --workdir=runs/toy

Rerunning with the same --workdir resumes from its latest checkpoint. A bad config fails
with one line naming the key and the accepted values, before anything is written.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import _lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        result = _lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except _lib.ConfigError as e:
        sys.exit(f"error: {e}")
    print(f"step {result['step']}  final loss {result['final_loss']:.4f}  workdir {result['workdir']}")


if __name__ == "__main__":
    app.run(main, flags_parser=_lib.parse_flags)
