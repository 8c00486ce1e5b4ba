"""Sampler benchmarks: accuracy vs NFE, per-evaluation overhead, compile time vs steps.

    python benchmarks/bench_samplers.py            # all three tables
    python benchmarks/bench_samplers.py --quick    # fewer repeats
    python benchmarks/bench_samplers.py --only overhead --baseline f4ad08a
        # the overhead table of this tree beside that of an older commit, measured in this run

Every number is a ratio or an error measured in this one run (no stored baselines).
1. Accuracy: RMS distance to the exact PF-ODE endpoint (diffrax Dopri8, rtol = atol = 1e-10,
   float64) from the same 256 x_T, for the exact 2-D mixture model, at NFE budgets
   5, 10, 20, 50 (the largest step count whose NFE fits the budget; "-" if none does).
2. Overhead: time of an N-step sample divided by (NFE x time of one model call), for a
   small MLP and for the analytic mixture model, N = 10 and 100 (target <= 1.1).
3. Compile: compile time of the N = 1000 sampler over that of N = 10 (target <= 1.5).
With --baseline REV the overhead table of commit REV (its own benchmarks/bench_samplers.py,
run from a temporary git worktree in a subprocess just before this tree's) is printed beside
this tree's, with the ratio new / old per cell.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import diffrax
import jax
import jax.numpy as jnp

import jdiff
from jdiff import samplers as S

DETERMINISTIC = {
    "ddim": S.DDIM(),
    "euler": S.Euler(),
    "heun": S.Heun(),
    "dpm_solver_1": S.DPMSolver(order=1),
    "dpm_solver_2": S.DPMSolver(order=2),
    "dpm_solver_3": S.DPMSolver(order=3),
    "dpmpp_2m": S.DPMSolverPP2M(),
    "dpmpp_3m": S.DPMSolverPP3M(),
    "unipc_p2_bh1": S.UniPC(predictor_order=2, variant="bh1"),
    "unipc_p2_bh2": S.UniPC(predictor_order=2, variant="bh2"),
    "unipc_p3_bh2": S.UniPC(predictor_order=3, variant="bh2"),
    "lms_2": S.LMS(order=2),
    "lms_3": S.LMS(order=3),
}
STOCHASTIC = {
    "ddpm": S.DDPM(),
    "ddim_eta1": S.DDIM(eta=1.0),
    "heun_churn": S.Heun(s_churn=10.0),
    "dpmpp_2m_sde": S.DPMSolverPP2MSDE(),
    "euler_maruyama": S.EulerMaruyama(),
    "pc": S.PredictorCorrector(S.EulerMaruyama(), n_corrector=1, snr=0.16),
}
ALL = {**DETERMINISTIC, **STOCHASTIC}


def mixture(dtype=jnp.float64):
    """tests/helpers.mixture_2d: three anisotropic Gaussians."""
    return jdiff.GaussianMixture(
        weights=jnp.array([0.5, 0.3, 0.2], dtype),
        means=jnp.array([[-1.0, 0.5], [1.2, 1.0], [0.3, -1.3]], dtype),
        covs=jnp.array(
            [[[0.10, 0.03], [0.03, 0.05]], [[0.04, -0.01], [-0.01, 0.08]], [[0.06, 0.0], [0.0, 0.02]]], dtype
        ),
    )


def steps_for(solver, budget):
    n = 0
    while solver.nfe(n + 1) <= budget:
        n += 1
    return n


def table(title, header, rows):
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def accuracy():
    budgets = (5, 10, 20, 50)
    gm = mixture()
    for name, path, grid_fn, kind in (
        ("VP (VPLinear), log-SNR grid, eps model", jdiff.VPLinear(), S.log_snr_grid, "eps"),
        ("rectified flow (Linear), uniform grid, velocity model", jdiff.Linear(), S.uniform_grid, "velocity"),
    ):
        model = gm.as_model(path, kind)
        x = path.prior_sample(jax.random.PRNGKey(0), (256, 2), jnp.float64)
        ref = jax.jit(lambda x: S.solve_pf_ode(model, x, solver=diffrax.Dopri8(), rtol=1e-10, atol=1e-10).sample)(x)
        rows = []
        for sname, solver in DETERMINISTIC.items():
            row = [sname]
            for b in budgets:
                n = steps_for(solver, b)
                if n == 0:
                    row.append("-")
                    continue
                y = jax.jit(lambda x, g: S.sample(solver, model, x, g))(x, grid_fn(path, n))
                row.append(f"{float(jnp.sqrt(jnp.mean((y - ref) ** 2))):.1e}")
            rows.append(row)
        table(
            f"Accuracy: RMS error vs the exact PF-ODE endpoint, {name}",
            ["solver"] + [f"NFE {b}" for b in budgets],
            rows,
        )


def mlp_model(key, path, width=256, depth=3):
    """A small time-conditioned MLP eps-model on `path`, params closed over (float32)."""
    keys = jax.random.split(key, depth + 1)
    dims = [2 + 16] + [width] * depth + [2]
    params = [
        (jax.random.normal(k, (i, o), jnp.float32) / jnp.sqrt(i), jnp.zeros((o,), jnp.float32))
        for k, i, o in zip(keys, dims[:-1], dims[1:])
    ]
    freqs = jnp.exp(jnp.linspace(0.0, 6.0, 8)).astype(jnp.float32)

    def model(x, t, cond=None):
        tt = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])[:, None] * freqs[None, :]
        h = jnp.concatenate([x, jnp.sin(tt), jnp.cos(tt)], axis=-1)
        for i, (w, b) in enumerate(params):
            h = h @ w + b[None, :]
            if i < len(params) - 1:
                h = jax.nn.silu(h)
        return h

    return jdiff.Model(model, path, "eps")


def timeit(f, *args, repeats):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def overhead(repeats):
    path = jdiff.VPLinear()
    gm = mixture(jnp.float32)
    models = {
        "MLP 3x256, batch 4096": (mlp_model(jax.random.PRNGKey(0), path), 4096),
        "analytic mixture, batch 1024": (gm.as_model(path, "eps"), 1024),
    }
    rows = []
    for sname, solver in ALL.items():
        row = [sname]
        for mname, (model, batch) in models.items():
            x = path.prior_sample(jax.random.PRNGKey(1), (batch, 2), jnp.float32)
            one = jax.jit(lambda x, t: model(x, t, None))
            t_model = timeit(one, x, jnp.float32(0.5), repeats=repeats * 5)
            for n in (10, 100):
                run = jax.jit(lambda x, g, k: S.sample(solver, model, x, g, key=k))
                t = timeit(run, x, S.log_snr_grid(path, n), jax.random.PRNGKey(2), repeats=repeats)
                row.append(f"{t / (solver.nfe(n) * t_model):.2f}")
        rows.append(row)
    header = ["solver"] + [f"{m.split(',')[0]}, N={n}" for m in models for n in (10, 100)]
    table("Overhead: sampler time / (NFE x one model call), float32", header, rows)
    return header, rows


def baseline_overhead(rev, quick):
    """The overhead rows of commit `rev`: its own benchmark script, run from a temporary git
    worktree (its jdiff first on PYTHONPATH) in a subprocess. Returns {solver: [cells]}."""
    root = pathlib.Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        wt = os.path.join(tmp, "baseline")
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", wt, rev], check=True)
        try:
            cmd = [sys.executable, os.path.join(wt, "benchmarks", "bench_samplers.py"), "--only", "overhead"]
            env = {**os.environ, "PYTHONPATH": wt}
            out = subprocess.run(
                cmd + (["--quick"] if quick else []), cwd=wt, env=env, check=True, capture_output=True, text=True
            ).stdout
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", wt], check=True)
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("solver",) and len(cells) > 1:
            rows[cells[0]] = cells[1:]
    return rows


def compare(rev, header, rows, old):
    """This tree's overhead beside `rev`'s, cell by cell, with new / old."""
    out = []
    for r in rows:
        name, new = r[0], r[1:]
        base = old.get(name)
        if base is None:
            out.append([name] + [f"{v} (new solver)" for v in new])
            continue
        out.append([name] + [f"{b} / {v} ({float(v) / float(b):.2f})" for b, v in zip(base, new)])
    table(f"Overhead, {rev} / this tree (new / old), measured in one run", header, out)


def compile_ratio():
    path = jdiff.VPLinear()
    model = mlp_model(jax.random.PRNGKey(0), path)
    x = path.prior_sample(jax.random.PRNGKey(1), (256, 2), jnp.float32)
    rows = []
    for sname, solver in ALL.items():
        ts = []
        for n in (10, 1000):
            run = jax.jit(lambda x, g, k: S.sample(solver, model, x, g, key=k))
            lowered = run.lower(x, S.log_snr_grid(path, n), jax.random.PRNGKey(2))
            t0 = time.perf_counter()
            lowered.compile()
            ts.append(time.perf_counter() - t0)
        rows.append([sname, f"{ts[0]:.2f}", f"{ts[1]:.2f}", f"{ts[1] / ts[0]:.2f}"])
    table("Compile time (s), MLP model: N = 10 vs N = 1000", ["solver", "N=10", "N=1000", "ratio"], rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer timing repeats")
    p.add_argument("--only", choices=["accuracy", "overhead", "compile"], default=None)
    p.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="also measure the overhead table of git commit REV, in this run, and compare",
    )
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # float64 reference; timed runs use float32 arrays
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}", file=sys.stderr)
    if args.only in (None, "accuracy"):
        accuracy()
    if args.only in (None, "overhead"):
        old = baseline_overhead(args.baseline, args.quick) if args.baseline else None
        header, rows = overhead(repeats=5 if args.quick else 20)
        if old is not None:
            compare(args.baseline, header, rows, old)
    if args.only in (None, "compile"):
        compile_ratio()


if __name__ == "__main__":
    main()
