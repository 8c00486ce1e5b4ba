"""`make demo`: train on the embedded 8x8 digits on a laptop CPU and draw a grid of digits.

    python -m experiments.demo --workdir=runs/demo

Trains experiments/configs/digits_mlp.py (a few minutes on 2 CPU cores), then samples
100 digits from the EMA weights with a 20-step Heun solver and prints the final loss and
the PNG's path. Rerunning resumes (or, when finished, only samples); a rerun with another
--total_steps needs --allow_config_change. A bad input ends with one line and exit code 2.
"""

import os

from absl import app, flags, logging

from experiments import _lib
from experiments.configs import digits_mlp

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Directory for checkpoints, logs and samples.")
_STEPS = flags.DEFINE_integer("total_steps", None, "Override the number of train steps.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir trained with another --total_steps."
)


def main(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    del argv
    config = digits_mlp.get_config()
    if _STEPS.value is not None:
        config.total_steps = _STEPS.value
    config.lock()
    with _lib.exit_on_error():
        result = _lib.train_and_evaluate(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
        _, png, _ = _lib.sample_workdir(_WORKDIR.value, config, out=os.path.join(_WORKDIR.value, "digits"))
    print(f"final loss {result['final_loss']:.4f} at step {result['step']}")
    print(f"samples: {os.path.abspath(png)}")


if __name__ == "__main__":
    app.run(main, flags_parser=_lib.parse_flags)
