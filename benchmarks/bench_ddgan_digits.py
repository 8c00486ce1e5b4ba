"""DDGAN on the 8x8 digits at T = 2 and 4 against a diffusion teacher at 10, 20 and 50 NFE (FDD).

    python benchmarks/bench_ddgan_digits.py [--steps 3000] [--samples 1000] [--holdout 500] [--net conv]

The digits row of benchmarks/bench_ddgan.py. scikit-learn's 1,797 8x8 digits (jdiff.data.load_digits,
[-1, 1]) are split by the seeded permutation of benchmarks/bench_flowmaps_digits.py (key 10) into
a training part and `--holdout` held-out digits. Trained in one run, each for --steps steps from
scratch on the training part:
  teacher   jdiff.models.MLP velocity model (64 pixels, hidden 256, depth 3) with cfm_loss on the
            Linear path (adam 2e-3, cosine decay, batch 256: bench_flowmaps_digits.py's teacher),
            sampled with Euler and Heun at 10, 20 and 50 NFE;
  ddgan     for T = 2 and T = 4: a jdiff.models.DDGANConv pair (--net conv: the digits_ddgan
            config's U-Net generator with AdaGN, ch 32, and conv discriminator) or a DDGANMLP pair
            (--net mlp: hidden 256, depth 3) on the VP path (0.1, 20), ddgan_loss with R1 0.05,
            Adam(0.5, 0.9) at --lr for both players, cosine decay, EMA 0.999, batch 128, through
            jdiff.training.make_train_step; sampled with jdiff.adversarial.sample (NFE = T).
Reports the Frechet digit distance (jdiff.metrics.frechet_digit_distance, features of
train_digit_classifier(0)) of --samples samples (clipped to [-1, 1]) to the held-out digits,
with the real-vs-real floors of bench_flowmaps_digits.py. Only ratios within this run are
meaningful; timings are not measured.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from bench_ddgan import ddgan_sampler, train_ddgan  # benchmarks/ is the script's directory
from bench_flowmaps import train
from bench_flowmaps_digits import heldout_yardstick, minibatches
from flax import nnx

import jdiff
from jdiff import adversarial, losses, models, samplers
from jdiff.data import load_digits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--holdout", type=int, default=500)
    ap.add_argument("--net", default="conv", choices=["conv", "mlp"])
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--only", default="", help="'ddgan' skips the teacher")
    args = ap.parse_args()
    t_start = time.perf_counter()

    x = np.asarray(load_digits().x, np.float32)  # (1797, 8, 8, 1) in [-1, 1]
    _, x_train, fdd, acc, floor_halves, n_tr, floor_train = heldout_yardstick(x, args.holdout, args.samples)
    print(f"digit classifier held-out accuracy {acc:.3f}", flush=True)
    data_fn = minibatches(x_train)
    rows = []

    if args.only != "ddgan":
        lin = jdiff.Linear()
        teacher = models.MLP(64, hidden=256, depth=3, kind="velocity", rngs=nnx.Rngs(0))
        secs = train(
            teacher,
            lambda m, k, x0: losses.cfm_loss(jdiff.Model(m, lin, "velocity"), k, x0),
            data_fn,
            args.steps,
            jax.random.key(0),
            batch=256,
        )
        model = jdiff.Model(teacher, lin, "velocity")
        print(f"trained teacher in {secs:.0f}s", flush=True)
        x_T = lin.prior_sample(jax.random.key(2), (args.samples, 8, 8, 1))
        for name, solver in (("Euler", samplers.Euler()), ("Heun", samplers.Heun())):
            for nfe in (10, 20, 50):
                n = nfe // solver.evals_per_step
                grid = samplers.uniform_grid(lin, n)
                s = jax.jit(lambda xt, g, solver=solver: samplers.sample(solver, model, xt, g))(x_T, grid)
                rows.append((f"teacher {name}", solver.nfe(n), fdd(s)))

    vp = jdiff.VPLinear()
    x_T = vp.prior_sample(jax.random.key(3), (args.samples, 8, 8, 1))
    for T in (2, 4):
        if args.net == "conv":
            pair = models.DDGANConv(
                8,
                1,
                ch=32,
                ch_mult=(1, 2),
                num_res_blocks=1,
                latent_dim=32,
                d_ch=32,
                d_ch_mult=(1, 2, 2),
                rngs=nnx.Rngs(T),
            )
        else:
            pair = models.DDGANMLP(64, latent_dim=32, hidden=256, depth=3, output="tanh", rngs=nnx.Rngs(T))
        grid = adversarial.ddgan_grid(vp, T)
        t0 = time.perf_counter()
        graphdef, state = train_ddgan(pair, vp, grid, data_fn, args.steps, lr=args.lr, batch=128)
        print(f"trained ddgan T={T} in {time.perf_counter() - t0:.0f}s", flush=True)
        draw = ddgan_sampler(graphdef, vp, grid, pair.generator.latent_dim)
        s = draw(state.ema_params, state.rest, x_T, jax.random.key(5))
        rows.append((f"DDGAN ({args.net}), T = {T}", T, fdd(s)))
        np.save(f"/tmp/ddgan_digits_T{T}.npy", np.asarray(s[:100]))

    ref = next((v for name, nfe, v in rows if name == "teacher Heun" and nfe >= 49), rows[0][2])
    print(
        f"\ndigits 8x8, {args.steps} train steps per model, {x_train.shape[0]} training / {args.holdout} held-out "
        f"digits, {args.samples} samples; classifier accuracy {acc:.3f}"
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
