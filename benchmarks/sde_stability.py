"""Smallest safe step count of Euler-Maruyama and predictor-corrector (Langevin + EM) per path and grid.

    python benchmarks/sde_stability.py                 # the table in docs/precision.md
    python benchmarks/sde_stability.py --paths ve,linear --steps 8,16,32

Euler-Maruyama on the reverse SDE is an explicit scheme: with too few steps its linear part
amplifies instead of contracting and the samples blow up (|x| of 1e3 to 1e4 at N = 8 on the VE,
rectified-flow and trigonometric paths). For every path, grid (uniform, Karras, log-SNR) and
solver, this samples the exact Gaussian-mixture oracle (eps model, float32) at each N of
`--steps` and reports two step counts, each the smallest N from which on (for it and every larger
N tested) the samples pass: "stable", finite with max |x| below 3 x the data's max (no blow-up);
"sound", stable and every coordinate's standard deviation within 15 % of the data's (accurate
enough to use). "-" means no tested N passed.

The blow-up is the Euler-Maruyama predictor's, not the Langevin corrector's:
PredictorCorrector(DDIM(), ...) (the same corrector, an exponential-integrator predictor) is
stable at every N tested (column pc_ddim), though at small N its spread is off.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jdiff
from jdiff import samplers as S

PATHS = {
    "vp_linear": jdiff.VPLinear(),
    "vp_cosine": jdiff.VPCosine(),
    "subvp": jdiff.SubVP(),
    "ve": jdiff.VEGeometric(),
    "edm": jdiff.EDM(),
    "linear": jdiff.Linear(),
    "trig": jdiff.Trigonometric(),
}
GRIDS = {"uniform": S.uniform_grid, "karras": S.karras_grid, "log_snr": S.log_snr_grid}
SOLVERS = {
    "euler_maruyama": S.EulerMaruyama(),
    "pc": S.PredictorCorrector(S.EulerMaruyama(), n_corrector=1, snr=0.16),
    "pc_ddim": S.PredictorCorrector(S.DDIM(), n_corrector=1, snr=0.16),
}


def mixture():
    """The 2-D three-component mixture of the tests (tests/helpers.py mixture_2d), float32."""
    return jdiff.GaussianMixture(
        weights=jnp.array([0.5, 0.3, 0.2], jnp.float32),
        means=jnp.array([[-1.0, 0.5], [1.2, 1.0], [0.3, -1.3]], jnp.float32),
        covs=jnp.array(
            [[[0.10, 0.03], [0.03, 0.05]], [[0.04, -0.01], [-0.01, 0.08]], [[0.06, 0.0], [0.0, 0.02]]], jnp.float32
        ),
    )


def grade(x, data) -> tuple[bool, bool]:
    """(stable, sound) of samples x against the data."""
    x = np.asarray(x, np.float64)
    stable = bool(np.all(np.isfinite(x))) and np.abs(x).max() <= 3.0 * np.abs(data).max()
    return stable, stable and bool(np.all(np.abs(x.std(0) / data.std(0) - 1.0) < 0.15))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--steps", default="8,10,12,14,16,20,24,32,48,64")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    steps = [int(n) for n in args.steps.split(",")]
    gm = mixture()
    data = np.asarray(gm.sample(jax.random.PRNGKey(3), args.samples))
    print(f"smallest stable / sound N (of {steps}); eps model of the exact mixture, float32, {args.samples} samples\n")
    print("| path | grid | " + " | ".join(f"{s} stable / sound" for s in SOLVERS) + " |")
    print("|---|---|" + "---|" * len(SOLVERS))
    for pname in args.paths.split(","):
        path = PATHS[pname]
        model = gm.as_model(path, "eps")
        x_T = path.prior_sample(jax.random.PRNGKey(0), (args.samples, 2), jnp.float32)
        ok = {}
        for sname, solver in SOLVERS.items():
            run = jax.jit(lambda x, g, s=solver, m=model: S.sample(s, m, x, g, key=jax.random.PRNGKey(1)))
            for n in steps:  # one compilation per N: the grid is traced, so the three grids share it
                for gname, grid_fn in GRIDS.items():
                    ok[sname, gname, n] = grade(run(x_T, grid_fn(path, n).astype(jnp.float32)), data)
        for gname in GRIDS:
            cells = []
            for sname in SOLVERS:
                pair = []
                for which in (0, 1):
                    safe = [n for i, n in enumerate(steps) if all(ok[sname, gname, m][which] for m in steps[i:])]
                    pair.append(str(safe[0]) if safe else "-")
                cells.append(" / ".join(pair))
            print(f"| {pname} | {gname} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
