"""Accuracy per NFE on the 8x8 digits: fixed time grids against `samplers.optimize_grid` (FDD).

    python benchmarks/bench_grids_digits.py [--train_steps 3000] [--samples 2000] [--iterations 60]
        [--objectives GlobalError,LocalError] [--model_cache /tmp/digits_mlp.npz]

The digits row of the grid benchmark (benchmarks/bench_grids.py is the 2-D mixture one, with
the exact PF-ODE endpoint). The model is the one of experiments/configs/digits_mlp.py, trained
here from scratch (`--train_steps` adam updates, cosine decay from 2e-3, batch 256, seed 0) on
scikit-learn's 1,797 8x8 digits (jdiff.data.load_digits, [-1, 1]): jdiff.models.MLP on the 64
flattened pixels (hidden 256, depth 3), a velocity model on the Linear (rectified-flow) path
trained with cfm_loss. float32 throughout.

Reference: `--samples` samples of the model at 100 NFE (DPM-Solver++(2M), 100 log-SNR steps)
from prior draws x_T. Every sampler below starts from the same x_T, so its Frechet digit
distance (jdiff.metrics.frechet_digit_distance, penultimate features of
jdiff.metrics.train_digit_classifier(0)) to the reference measures the discretisation error
alone (it goes to 0 with the NFE); the table also prints two scales: Heun at 50 steps (99 NFE)
against the reference, and the reference against 500 real digits.

Grids: uniform, log-SNR, Karras (rho 7) and quadratic over the path's range, and grids fitted
by `optimize_grid` (`--iterations` adam updates at `--lr`) on `--fit` other prior draws, with
GlobalError (vs a Tsit5 solve, rtol = atol = 1e-5; the default) and, with `--objectives`,
LocalError (no reference), each started from the fixed grid its own objective ranks best on the
fit batch. `--model_cache` keeps the trained weights in a file (trained when it is absent). The objectives are
pixel-space errors; the table reports FDD. Solvers: DDIM, DPM-Solver++(2M), UniPC
(predictor_order 2) and Heun at NFE 5, 10, 20 (Heun: the most steps within the NFE).
Timings are not measured; only the FDD values of this one run are compared.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_flowmaps import train  # benchmarks/ is the script's directory
from flax import nnx

import jdiff
from jdiff import losses, metrics, models, paths
from jdiff import samplers as S
from jdiff.data import load_digits

GRIDS = {"uniform": S.uniform_grid, "log_snr": S.log_snr_grid, "karras": S.karras_grid, "quadratic": S.quadratic_grid}
SOLVERS = {"ddim": S.DDIM(), "dpmpp_2m": S.DPMSolverPP2M(), "unipc": S.UniPC(), "heun": S.Heun()}
NFES = (5, 10, 20)


def steps_for(solver, budget):
    n = 0
    while solver.nfe(n + 1) <= budget:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train_steps", type=int, default=3000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--fit", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.08)
    ap.add_argument("--objectives", default="GlobalError", help="comma-separated: GlobalError,LocalError")
    ap.add_argument("--model_cache", default=None, help=".npz of the trained weights (written if absent)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, {args.train_steps} train steps, "
        f"{args.samples} samples, fit {args.fit}, {args.iterations} adam updates at lr {args.lr}",
        flush=True,
    )

    x = jnp.asarray(load_digits().x, jnp.float32)  # (1797, 8, 8, 1) in [-1, 1]
    path = paths.Linear()
    net = models.MLP(64, hidden=256, depth=3, kind="velocity", rngs=nnx.Rngs(0))
    data_fn = lambda key, n: x[jax.random.choice(key, x.shape[0], (n,), replace=False)]
    params = nnx.state(net, nnx.Param)
    if args.model_cache and os.path.exists(args.model_cache):
        with np.load(args.model_cache) as f:
            leaves = [jnp.asarray(f[f"a{i}"]) for i in range(len(f.files))]
        nnx.update(net, jax.tree.unflatten(jax.tree.structure(params), leaves))
        print(f"loaded the trained weights from {args.model_cache}", flush=True)
    else:
        secs = train(
            net,
            lambda m, k, x0: losses.cfm_loss(jdiff.Model(m, path, "velocity"), k, x0),
            data_fn,
            args.train_steps,
            jax.random.key(0),
            batch=256,
        )
        print(f"trained the model in {secs:.0f} s", flush=True)
        if args.model_cache:
            np.savez(
                args.model_cache,
                **{f"a{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(nnx.state(net, nnx.Param)))},
            )
    model = jdiff.Model(net, path, "velocity")
    clf, acc = metrics.train_digit_classifier(0)
    fdd = lambda a, b: float(metrics.frechet_digit_distance(clf, jnp.clip(a, -1.0, 1.0), jnp.clip(b, -1.0, 1.0)))

    x_T = path.prior_sample(jax.random.key(2), (args.samples, 8, 8, 1)).astype(jnp.float32)
    x_fit = path.prior_sample(jax.random.key(3), (args.fit, 8, 8, 1)).astype(jnp.float32)
    run = jax.jit(lambda sv, xt, g: S.sample(sv, model, xt, g), static_argnums=0)
    ref = run(S.DPMSolverPP2M(), x_T, S.log_snr_grid(path, 100))
    scale_heun = fdd(run(S.Heun(), x_T, S.log_snr_grid(path, 50)), ref)
    real = x[np.asarray(jax.random.permutation(jax.random.key(4), x.shape[0]))[:500]]
    scale_real = fdd(ref, real)
    print(
        f"classifier accuracy {acc:.3f}; FDD Heun 50 steps (99 NFE) vs reference {scale_heun:.3g}; "
        f"reference vs 500 real digits {scale_real:.3g}",
        flush=True,
    )

    fit_ref = S.GlobalError(rtol=1e-5, atol=1e-5).init(None, model, x_fit, path.t_max, path.t_min, None)
    print(f"fit reference solved; {time.perf_counter() - t_start:.0f} s so far", flush=True)
    objectives = {"GlobalError": S.GlobalError(reference=fit_ref), "LocalError": S.LocalError()}
    objectives = {k: objectives[k] for k in args.objectives.split(",")}
    rows = []
    for name, solver in SOLVERS.items():
        for nfe in NFES:
            n = steps_for(solver, nfe)
            fixed = {g: fn(path, n) for g, fn in GRIDS.items()}
            errs = {g: fdd(run(solver, x_T, grid), ref) for g, grid in fixed.items()}
            opt = {}
            for oname, obj in objectives.items():
                aux = obj.init(solver, model, x_fit, path.t_max, path.t_min, None)
                score = jax.jit(lambda g, obj=obj, aux=aux, sv=solver: obj(sv, model, x_fit, aux, g, None))
                start = min(fixed, key=lambda g: float(score(fixed[g])))
                t0 = time.perf_counter()
                res = S.optimize_grid(
                    solver,
                    model,
                    jax.random.key(0),
                    x_fit,
                    n,
                    objective=obj,
                    init=fixed[start],
                    iterations=args.iterations,
                    learning_rate=args.lr,
                )
                opt[oname] = fdd(run(solver, x_T, res.grid), ref)
                print(
                    f"  {name} NFE {nfe} ({n} steps) {oname} from {start}: FDD {opt[oname]:.4g}, objective "
                    f"{float(res.initial_loss):.3g} -> {float(res.loss):.3g} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            best = min(errs.values())
            rows.append(
                [name, str(nfe), str(n)]
                + [f"{errs[g]:.3g}" for g in GRIDS]
                + [f"{opt[k]:.3g}" for k in objectives]
                + [f"{min(opt.values()) / best:.2f}"]
            )

    print(
        f"\nDigits 8x8 (digits_mlp model, {args.train_steps} steps): FDD to {args.samples} samples at 100 NFE "
        f"from the same x_T (scales: Heun at 99 NFE {scale_heun:.3g}, the reference vs real digits "
        f"{scale_real:.3g})\n"
    )
    header = ["solver", "NFE", "steps", *GRIDS, *(f"optimised ({k})" for k in objectives), "optimised / best fixed"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
