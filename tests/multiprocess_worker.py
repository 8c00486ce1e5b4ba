"""One process of a small training job, for tests/test_multiprocess.py (not a test module).

    python -m experiments.launch.local --num_processes=2 --devices_per_process=4 -- \
        python tests/multiprocess_worker.py WORKDIR TOTAL_STEPS [--sleep=SECONDS] [--sample=N]

Trains `config()` (a tiny flow-matching MLP on two moons, one metrics row per step, no samples
during training, a checkpoint only at the end or at a preemption) with experiments.train's
`train_and_evaluate`, then with --sample=N draws N samples of the EMA weights with
experiments.sample's `sample_workdir` (each process its share; process 0 writes
WORKDIR/samples/final.npz), and prints one line `RESULT {json}` (process index, step, preempted,
the sum of the samples it holds). --sleep pauses after every step, so a test can signal the run
mid-way.
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
    c.sample.num_steps = 4
    return c


def main(argv):
    workdir, total = argv[1], int(argv[2])
    opts = dict(a[2:].split("=", 1) for a in argv[3:])
    sleep, num_samples = float(opts.get("sleep", 0)), int(opts.get("sample", 0))
    logging.set_verbosity(logging.WARNING)
    import jax

    from experiments import _lib

    c = config()
    c.total_steps = total
    result = _lib.train_and_evaluate(c, workdir, hooks=[lambda *_: time.sleep(sleep)] if sleep else ())
    report = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "step": result["step"],
        "preempted": result["preempted"],
    }
    if num_samples and not result["preempted"]:
        x, _, _ = _lib.sample_workdir(workdir, num_samples=num_samples, out=os.path.join(workdir, "samples", "final"))
        report["sample_sum"] = float(x.sum())
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv)
