"""PF-ODE likelihood: error vs NFE (tolerance), Hutchinson standard error vs probes, time per example.

    python benchmarks/bench_likelihood.py            # float64, 2-D mixture oracle
    python benchmarks/bench_likelihood.py --dim 16   # a 16-D mixture (Hutchinson matters more)

Ground truth is the Gaussian-mixture oracle: the model is its exact eps-prediction on
VP-linear, the "prior" at t_max is the oracle's exact log p_{t_max}, so every error printed
is the solver's (table 1) or the estimator's (table 2). Times are ratios within this run.
"""

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from jdiff import GaussianMixture, likelihood, paths  # noqa: E402


def mixture(dim, key):
    k1, k2 = jax.random.split(key)
    means = jax.random.normal(k1, (3, dim), jnp.float64)
    stds = jax.random.uniform(k2, (3, dim), jnp.float64, 0.2, 0.5)
    return GaussianMixture(jnp.array([0.5, 0.3, 0.2]), means, stds=stds)


def timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--n", type=int, default=64, help="examples")
    ap.add_argument("--draws", type=int, default=64, help="Hutchinson draws per example")
    args = ap.parse_args()

    mix = mixture(args.dim, jax.random.PRNGKey(0))
    path = paths.VPLinear()
    model = mix.as_model(path, "eps")
    x = mix.sample(jax.random.PRNGKey(1), args.n)
    exact = jax.vmap(lambda z: mix.marginal_log_prob(z, path.t_min, path))(x)
    prior = lambda z: mix.marginal_log_prob(z, path.t_max, path)  # noqa: E731

    def solve(rtol, divergence="exact", num_probes=1, probe="rademacher"):
        return jax.jit(lambda xs, key: likelihood.ode_log_likelihood_batch(
            model, "eps", xs, path, key=key, divergence=divergence, num_probes=num_probes, probe=probe,
            rtol=rtol, atol=rtol, prior_log_prob=prior))

    print(f"## Error vs NFE (exact trace, Tsit5, {args.dim}-D mixture, VP-linear, {args.n} examples)\n")
    print("| rtol = atol | mean NFE | max abs error (nats) | mean abs error (nats) | time / example (ratio to rtol 1e-3) |")
    print("|---|---|---|---|---|")
    base = None
    for rtol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
        ll, dt = timed(solve(rtol), x, jax.random.PRNGKey(0))
        err = np.abs(np.asarray(ll.log_prob - exact))
        base = dt if rtol == 1e-3 else base
        ratio = f"{dt / base:.2f}" if base else "-"
        print(f"| {rtol:.0e} | {float(np.mean(ll.nfe)):.0f} | {err.max():.2e} | {err.mean():.2e} | {ratio} |")

    print(f"\n## Hutchinson: standard error of one estimate vs probes (rtol 1e-6, {args.draws} draws x {min(args.n, 16)} examples)\n")
    print("| probe | probes M | mean sd (nats) | sd x sqrt(M) | |bias| / se of the mean | time / example (ratio to exact trace) |")
    print("|---|---|---|---|---|---|")
    xs = x[: min(args.n, 16)]
    ex = np.asarray(exact[: xs.shape[0]])
    reps = jnp.repeat(xs, args.draws, 0)
    _, t_exact = timed(solve(1e-6), reps, jax.random.PRNGKey(0))
    for probe in ("rademacher", "gaussian"):
        for m in (1, 4, 16):
            ll, dt = timed(solve(1e-6, "hutchinson", m, probe), reps, jax.random.PRNGKey(2))
            est = np.asarray(ll.log_prob).reshape(xs.shape[0], args.draws)
            sd = est.std(axis=1, ddof=1)
            z = np.abs(est.mean(1) - ex) / (sd / math.sqrt(args.draws))
            print(f"| {probe} | {m} | {sd.mean():.3e} | {sd.mean() * math.sqrt(m):.3e} | {z.mean():.2f} | "
                  f"{dt / t_exact:.2f} |")

    print("\nEach row's time is for the same number of examples; the exact trace costs D jvps per "
          "evaluation, Hutchinson M jvps (the ratio favours Hutchinson as D grows).")


if __name__ == "__main__":
    main()
