"""Training throughput, and the cost of the full train loop over the bare jitted step.

    python benchmarks/bench_training.py                 # MLP and U-Net on the 8x8 digits
    python benchmarks/bench_training.py --models=mlp --steps=400 --repeats=3

For each model it times, in one process and interleaved (`repeats` times, medians reported):
  bare  the jitted, donated train step on one batch already on the device (no data, no
        logging, no checkpoints), blocked on at the end;
  loop  experiments._lib.train_and_evaluate: DataIterator batches, host->device transfer,
        metrics read one step late, metrics.jsonl + TensorBoard every 25 steps, an async
        orbax checkpoint every `steps // 2` steps (sample grids off); its rate is read from
        the logged steps_per_sec of every logging window after the first (compile excluded).
Ratio = loop / bare examples per second (target >= 0.95). The machine is shared: compare
ratios measured in one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import numpy as np
from flax import nnx

from experiments import _lib
from experiments.configs import digits_mlp, digits_vp
from jdiff import data, parallel, training

jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))


def _config(name):
    c = digits_mlp.get_config() if name == "mlp" else digits_vp.get_config()
    c.sample_every = 0
    c.log_every = 25
    return c


def bare(config, steps):
    recipe, dataset, net = _lib.validate(config)
    mesh = parallel.make_mesh(config.get("num_devices", None))
    tx, graphdef, state = _lib.init_train_state(config, net, mesh)
    step = training.make_train_step(
        recipe.build_loss(),
        graphdef,
        tx,
        mesh=mesh,
        ema=config.ema_decay,
        grad_clip_norm=config.optimizer.grad_clip_norm,
    )
    batch = parallel.global_batch({"x": next(data.DataIterator(dataset, config.batch_size))["x"]}, mesh)
    for _ in range(3):  # compile and warm up
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    return steps * config.batch_size / (time.perf_counter() - t0)


def loop(config, steps):
    config.total_steps = steps + config.log_every  # the first window (with the compile) is dropped
    config.checkpoint_every = max(steps // 2, 1)
    with tempfile.TemporaryDirectory() as workdir:
        _lib.train_and_evaluate(config, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    rates = [r["examples_per_sec"] for r in rows[1:]]
    windows = [config.log_every] * len(rates)
    return float(np.average(rates, weights=windows)) if rates else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,unet")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 300 MLP, 50 U-Net)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'model':<6} {'batch':>5} {'params':>9} {'bare ex/s':>10} {'loop ex/s':>10} {'loop/bare':>9}")
    for name in args.models.split(","):
        steps = args.steps or (300 if name == "mlp" else 50)
        config = _config(name)
        n_params = sum(x.size for x in jax.tree.leaves(nnx.state(_lib.recipe_for(config).abstract_model(), nnx.Param)))
        b, lp = [], []
        for _ in range(args.repeats):
            b.append(bare(_config(name), steps))
            lp.append(loop(_config(name), steps))
        bm, lm = float(np.median(b)), float(np.median(lp))
        print(f"{name:<6} {config.batch_size:>5} {n_params:>9,} {bm:>10.0f} {lm:>10.0f} {lm / bm:>9.2f}")


if __name__ == "__main__":
    main()
