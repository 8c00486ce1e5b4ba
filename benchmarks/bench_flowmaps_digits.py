"""Few-step shortcut flow map against its multistep teacher on the 8x8 digits (FDD).

    python benchmarks/bench_flowmaps_digits.py [--steps 3000] [--samples 1000] [--holdout 500]

The digits row of the flow-map benchmark (benchmarks/bench_flowmaps.py is the 2-D one).
scikit-learn's 1,797 8x8 digits (jdiff.data.load_digits, [-1, 1]) are split by a seeded
permutation into a training part and `--holdout` held-out digits. Trained in one run, with the
same budget each (adam, cosine decay, batch 256, from scratch on the training part):
  teacher   jdiff.models.MLP (64 flattened pixels, hidden 256, depth 3, as
            experiments/configs/digits_mlp.py) with cfm_loss on the Linear path, sampled with
            Euler and Heun (jdiff.samplers) at 10, 20 and 50 NFE;
  shortcut  jdiff.models.FlowMapMLP (64 pixels, hidden 256, depth 3) with `shortcut_loss`,
            sampled with 1, 2 and 4 flow-map steps (one NFE each).
Reports the Frechet digit distance (jdiff.metrics.frechet_digit_distance, penultimate features
of jdiff.metrics.train_digit_classifier(0)) of `--samples` samples (clipped to [-1, 1]) to the
held-out digits, its ratio to the teacher's Heun sampler at 50 NFE, and two real-vs-real
floors: the held-out set's two halves, and `--samples` training digits vs the held-out set.
Only ratios within this run are meaningful; timings are not measured.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_flowmaps import train  # benchmarks/ is the script's directory
from flax import nnx

import jdiff
from jdiff import flowmaps, losses, metrics, models, paths, samplers
from jdiff.data import load_digits


def minibatches(x_train):
    """data_fn(key, n) for `train`: n distinct training examples."""
    return lambda key, n: x_train[jax.random.choice(key, x_train.shape[0], (n,), replace=False)]


def heldout_yardstick(x, holdout, samples, *, dataset="digits"):
    """The digit benchmarks' split and yardstick: a fixed permutation (key 10) of the images `x`
    holds out `holdout` of them; samples are scored by their Frechet digit distance to the held-out
    set in the features of jdiff.metrics' digit classifier (seed 0) for `dataset`, against two
    floors: the held-out set's halves, and min(samples, #train) training images.

    Returns (perm, x_train, fdd, accuracy, floor_halves, n_train, floor_train); perm
    splits other per-image arrays (labels) the same way."""
    perm = np.asarray(jax.random.permutation(jax.random.key(10), x.shape[0]))
    x_test, x_train = jnp.asarray(x[perm[:holdout]]), jnp.asarray(x[perm[holdout:]])
    clf, acc = metrics.train_digit_classifier(0, dataset=dataset)

    def fdd(s):
        return float(metrics.frechet_digit_distance(clf, jnp.clip(s, -1.0, 1.0), x_test))

    half = holdout // 2
    floor_halves = float(metrics.frechet_digit_distance(clf, x_test[:half], x_test[half:]))
    n_tr = min(samples, x_train.shape[0])
    return perm, x_train, fdd, acc, floor_halves, n_tr, fdd(x_train[:n_tr])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--holdout", type=int, default=500)
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args()
    t_start = time.perf_counter()

    x = np.asarray(load_digits().x, np.float32)  # (1797, 8, 8, 1) in [-1, 1]
    _, x_train, fdd, acc, floor_halves, n_tr, floor_train = heldout_yardstick(x, args.holdout, args.samples)
    print(f"digit classifier held-out accuracy {acc:.3f}", flush=True)
    half = args.holdout // 2

    path = paths.Linear()
    key = jax.random.key(0)
    x_T = path.prior_sample(jax.random.key(2), (args.samples, 8, 8, 1)).astype(jnp.float32)
    rows = []

    teacher = models.MLP(64, hidden=args.hidden, depth=3, kind="velocity", rngs=nnx.Rngs(0))
    secs = train(
        teacher,
        lambda m, k, x0: losses.cfm_loss(jdiff.Model(m, path, "velocity"), k, x0),
        minibatches(x_train),
        args.steps,
        jax.random.fold_in(key, 0),
        batch=256,
    )
    teacher_model = jdiff.Model(teacher, path, "velocity")
    print(f"trained teacher in {secs:.0f}s", flush=True)
    for name, solver in (("Euler", samplers.Euler()), ("Heun", samplers.Heun())):
        for nfe in (10, 20, 50):
            n = nfe // solver.evals_per_step
            grid = samplers.uniform_grid(path, n)
            s = jax.jit(lambda xt, g, solver=solver: samplers.sample(solver, teacher_model, xt, g))(x_T, grid)
            rows.append((f"teacher {name}", solver.nfe(n), fdd(s)))
    ref = rows[-1][2]  # Heun at 50 NFE

    net = models.FlowMapMLP(64, hidden=args.hidden, depth=3, rngs=nnx.Rngs(1))
    secs = train(
        net,
        lambda m, k, x0: flowmaps.shortcut_loss(flowmaps.FlowMap(m, path), k, x0),
        minibatches(x_train),
        args.steps,
        jax.random.fold_in(key, 1),
        batch=256,
    )
    print(f"trained shortcut in {secs:.0f}s", flush=True)
    flow = flowmaps.FlowMap(net, path)
    for steps in (1, 2, 4):
        grid = samplers.uniform_grid(path, steps)
        s = jax.jit(lambda xt, g: flowmaps.sample(flow, xt, g))(x_T, grid)
        rows.append(("shortcut", steps, fdd(s)))

    print(
        f"\ndigits 8x8, {args.steps} train steps per model (batch 256, hidden {args.hidden}), "
        f"{x_train.shape[0]} training / {args.holdout} held-out digits, {args.samples} samples; "
        f"classifier accuracy {acc:.3f}"
    )
    print(
        f"FDD floor: held-out halves ({half} vs {args.holdout - half}) {floor_halves:.2f}; "
        f"{n_tr} training digits vs held-out {floor_train:.2f}\n"
    )
    print("| sampler | NFE | FDD | / teacher Heun@50 |")
    print("|---|---:|---:|---:|")
    print(f"| real: held-out halves | - | {floor_halves:.2f} | {floor_halves / ref:.2f} |")
    print(f"| real: {n_tr} train vs held-out | - | {floor_train:.2f} | {floor_train / ref:.2f} |")
    for name, nfe, v in rows:
        print(f"| {name} | {nfe} | {v:.2f} | {v / ref:.2f} |")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
