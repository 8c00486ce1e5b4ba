"""One process of a small training job, for tests/test_multiprocess.py (not a test module).

    python -m experiments.launch.local --num_processes=2 --devices_per_process=4 -- \
        python tests/multiprocess_worker.py WORKDIR TOTAL_STEPS [STEP_SLEEP_SECONDS] [CONFIG_OVERRIDES_JSON]

Trains `config()` (a tiny flow-matching MLP on two moons, one metrics row per step, no samples,
a checkpoint only at the end or at a preemption) with experiments.train's `train_and_evaluate`,
and prints one line `RESULT {json}` (process index, step, preempted). The optional sleep after
every step keeps the run going long enough for a test to signal it mid-run.
"""

import json
import os
import sys
import time

from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: experiments


def config():
    from experiments.configs import toy2d_fm

    c = toy2d_fm.get_config("runlocal")
    c.data.kwargs.n = 2048
    c.model.kwargs.hidden = 32
    c.model.kwargs.depth = 1
    c.batch_size = 32
    c.optimizer.warmup_steps = 2
    c.log_every = 1
    c.checkpoint_every = 10_000
    c.sample_every = 0
    return c


def main(argv):
    workdir, total = argv[1], int(argv[2])
    sleep = float(argv[3]) if len(argv) > 3 else 0.0
    overrides = json.loads(argv[4]) if len(argv) > 4 else {}
    logging.set_verbosity(logging.WARNING)
    import jax

    from experiments import _lib

    c = config()
    c.total_steps = total
    for key, value in overrides.items():
        node = c
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    result = _lib.train_and_evaluate(c, workdir, hooks=[lambda *_: time.sleep(sleep)] if sleep else ())
    print("RESULT " + json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                                  "devices": jax.device_count(), "step": result["step"],
                                  "preempted": result["preempted"]}), flush=True)


if __name__ == "__main__":
    main(sys.argv)
