"""Estimator quality of jdiff.losses, as ratios measured in one run (CPU is fine).

1. Variance of the batch-mean continuous-time VDM bound (exact oracle model, 2-D mixture) with
   antithetic (stratified) vs i.i.d. uniform times, per path: the ratio is the variance reduction.
2. Minibatch OT pairing: transport cost of the pairing relative to the exact assignment, and
   wall-time of a jitted call relative to the exact (Hungarian) pairing, per batch size.

    python benchmarks/losses_variance.py [--batch 128] [--repeats 100] [--ot-sizes 32,128]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jdiff
from jdiff import losses, paths, schedules


def mixture():
    return jdiff.GaussianMixture(
        weights=jnp.array([0.5, 0.3, 0.2]),
        means=jnp.array([[-1.0, 0.5], [1.2, 1.0], [0.3, -1.3]]),
        stds=jnp.array([0.3, 0.25, 0.2]),
    )


def vdm_variance_table(batch=128, repeats=100):
    gm = mixture()
    x0 = gm.sample(jax.random.PRNGKey(0), batch)
    rows = []
    candidates = {
        "ve": paths.VEGeometric(),
        "vp_cosine": paths.VPCosine(),
        "vp_linear": paths.VPLinear(),
        "learned (VDM init)": schedules.LearnedLogSNR(jax.random.PRNGKey(1), hidden=64),
    }
    for name, path in candidates.items():
        model = gm.as_model(path, "eps")

        def means(antithetic, model=model):
            fn = jax.jit(
                jax.vmap(lambda k: jnp.mean(losses.vdm_loss(model, k, x0, antithetic=antithetic, num_bins=None)))
            )
            return np.asarray(fn(jax.random.split(jax.random.PRNGKey(2), repeats)))

        iid, strat = means(False), means(True)
        rows.append((name, iid.mean(), iid.var(), strat.var(), iid.var() / strat.var()))
    print(f"\nVDM bound, batch mean over B={batch}, {repeats} draws (nats/example)")
    print("| path | mean bound | var (iid t) | var (antithetic t) | variance ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.3g} | {r[3]:.3g} | {r[4]:.1f}x |")


def ot_table(sizes=(32, 128), repeats=3):
    print("\nMinibatch OT pairing of N(0, I) noise to mixture data (D = 2), jitted")
    print("| B | cost: independent / exact | cost: sinkhorn / exact | time: sinkhorn / exact |")
    print("|---|---|---|---|")
    gm = mixture()
    for b in sizes:
        x0 = gm.sample(jax.random.PRNGKey(3), b)
        x1 = jax.random.normal(jax.random.PRNGKey(4), (b, 2))
        fns = {m: jax.jit(lambda k, a, c, m=m: losses.ot_pairing(k, a, c, method=m)) for m in ("exact", "sinkhorn")}
        cost = np.sum((np.asarray(x0)[:, None] - np.asarray(x1)[None]) ** 2, -1)
        res, times = {}, {}
        for m, fn in fns.items():
            j = np.asarray(fn(jax.random.PRNGKey(5), x0, x1))  # compile
            t0 = time.perf_counter()
            for r in range(repeats):
                jax.block_until_ready(fn(jax.random.PRNGKey(r), x0, x1))
            times[m] = (time.perf_counter() - t0) / repeats
            res[m] = cost[np.arange(b), j].sum()
        indep = np.trace(cost)
        print(
            f"| {b} | {indep / res['exact']:.2f} | {res['sinkhorn'] / res['exact']:.4f} | "
            f"{times['sinkhorn'] / times['exact']:.2f} |"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128, help="batch size B of the VDM bound's batch mean")
    ap.add_argument("--repeats", type=int, default=100, help="number of batch means per variance")
    ap.add_argument("--ot-sizes", default="32,128", help="comma-separated batch sizes of the OT table")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    vdm_variance_table(batch=args.batch, repeats=args.repeats)
    ot_table(sizes=tuple(int(b) for b in args.ot_sizes.split(",")))
