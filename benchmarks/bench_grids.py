"""Accuracy per NFE: fixed time grids against grids fitted by `samplers.optimize_grid`.

    python benchmarks/bench_grids.py                      # every table (about 30 min on 2 busy cores)
    python benchmarks/bench_grids.py --only grids --iterations 50 --fit 64    # a quick run
    python benchmarks/bench_grids.py --only clock,lower_order_final,targets,diffusers

The digits row of the grid table (Frechet digit distance against 100-NFE samples of a trained
digits model) is benchmarks/bench_grids_digits.py.

Problem: the 3-component 2-D mixture of tests/helpers.mixture_2d on the EDM noise range
(VEGeometric(0.002, 80): sigma from 80 down to 0.002), its exact denoiser as an "x0" model,
float64. Error: RMS distance of the sample to the exact PF-ODE endpoint (diffrax Dopri8,
rtol = atol = 1e-10) over `--test` held-out prior samples; grids are fitted on `--fit` other
prior samples. Tables:

1. grids: DDIM, DPM-Solver++(2M), UniPC (predictor_order 2) and Heun at NFE 5, 10, 20 on the
   four fixed grids and on grids optimised with GlobalError (vs a Tsit5 solve of the fit
   batch) and LocalError (no reference), each started from the fixed grid its own objective
   ranks best on the fit batch.
2. clock: Euler, Heun and LMS (orders 2, 3) in the path's clock (t = log sigma) and in the sigma clock.
3. lower_order_final: the multistep solvers with and without it (Karras and log-SNR grids).
4. targets: the best solver/grid at NFE 10 and 20 against the targets 0.1 and 0.02.
5. diffusers: DPM-Solver++(3M) on the discrete linear-beta DDPM schedule (1000 steps, betas
   1e-4 .. 0.02) at 20 steps, diffusers' default DPMSolverMultistepScheduler written out in
   numpy from its documented update rules (first-order start, "linspace" timesteps, last step
   to sigma = 0 first order, lower_order_final only below 15 steps) against jdiff's 3M on the
   same noise levels (VPLinear times with the same log-SNR: the exact denoiser depends only on
   alpha and sigma, so both solvers see the same model values).
"""

from __future__ import annotations

import argparse
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import jdiff
from jdiff import samplers as S

jax.config.update("jax_enable_x64", True)

GRIDS = {"uniform": S.uniform_grid, "log_snr": S.log_snr_grid, "karras": S.karras_grid, "quadratic": S.quadratic_grid}
SOLVERS = {"ddim": S.DDIM(), "dpmpp_2m": S.DPMSolverPP2M(), "unipc": S.UniPC(), "heun": S.Heun()}
NFES = (5, 10, 20)


def mixture():
    """tests/helpers.mixture_2d."""
    return jdiff.GaussianMixture(
        weights=jnp.array([0.5, 0.3, 0.2]),
        means=jnp.array([[-1.0, 0.5], [1.2, 1.0], [0.3, -1.3]]),
        covs=jnp.array([[[0.10, 0.03], [0.03, 0.05]], [[0.04, -0.01], [-0.01, 0.08]], [[0.06, 0.0], [0.0, 0.02]]]),
    )


def steps_for(solver, budget):
    n = 0
    while solver.nfe(n + 1) <= budget:
        n += 1
    return n


def table(title, header, rows):
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def fmt(v):
    return "-" if v is None else f"{v:.3g}"


class Problem:
    def __init__(self, n_fit, n_test):
        self.path = jdiff.VEGeometric(0.002, 80.0)
        self.model = mixture().as_model(self.path, "x0")
        self.x_fit = self.path.prior_sample(jax.random.PRNGKey(1), (n_fit, 2), jnp.float64)
        self.x_test = self.path.prior_sample(jax.random.PRNGKey(2), (n_test, 2), jnp.float64)
        self.ref = S.solve_pf_ode(self.model, self.x_test, solver=diffrax.Dopri8(), rtol=1e-10, atol=1e-10).sample
        self._run = jax.jit(lambda sv, x, g: S.sample(sv, self.model, x, g), static_argnums=0)

    def rms(self, solver, grid):
        y = self._run(solver, self.x_test, grid)
        return float(jnp.sqrt(jnp.mean((y - self.ref) ** 2)))


def bench_grids(p, iterations, lr):
    fit_ref = S.GlobalError().init(None, p.model, p.x_fit, p.path.t_max, p.path.t_min, None)
    objectives = {"GlobalError": S.GlobalError(reference=fit_ref), "LocalError": S.LocalError()}
    rows, best = [], {}
    for name, solver in SOLVERS.items():
        for nfe in NFES:
            n = steps_for(solver, nfe)
            fixed = {g: fn(p.path, n) for g, fn in GRIDS.items()}
            errs = {g: p.rms(solver, grid) for g, grid in fixed.items()}
            opt = {}
            for oname, obj in objectives.items():
                aux = obj.init(solver, p.model, p.x_fit, p.path.t_max, p.path.t_min, None)
                score = jax.jit(lambda g, obj=obj, aux=aux, sv=solver: obj(sv, p.model, p.x_fit, aux, g, None))
                start = min(fixed, key=lambda g: float(score(fixed[g])))
                t0 = time.time()
                res = S.optimize_grid(
                    solver,
                    p.model,
                    jax.random.PRNGKey(0),
                    p.x_fit,
                    n,
                    objective=obj,
                    init=fixed[start],
                    iterations=iterations,
                    learning_rate=lr,
                )
                opt[oname] = p.rms(solver, res.grid)
                print(
                    f"  {name} NFE {nfe} ({n} steps) {oname} from {start}: {opt[oname]:.4g} ({time.time() - t0:.0f} s)",
                    flush=True,
                )
                best[(name, nfe, oname)] = (opt[oname], np.asarray(res.grid))
            b = min(errs.values())
            rows.append(
                [name, str(nfe), str(n)]
                + [fmt(errs[g]) for g in GRIDS]
                + [fmt(opt["GlobalError"]), fmt(opt["LocalError"]), f"{opt['GlobalError'] / b:.2f}"]
            )
    table(
        "Grids: RMS error vs the exact PF-ODE endpoint, 2-D mixture, VEGeometric(0.002, 80), x0 model",
        [
            "solver",
            "NFE",
            "steps",
            *GRIDS,
            "optimised (GlobalError)",
            "optimised (LocalError)",
            "GlobalError / best fixed",
        ],
        rows,
    )
    return best


def bench_clock(p):
    rows = []
    for name, cls in (
        ("euler", S.Euler),
        ("heun", S.Heun),
        ("lms_2", lambda clock: S.LMS(2, clock=clock)),
        ("lms_3", lambda clock: S.LMS(3, clock=clock)),
    ):
        for g in ("karras", "log_snr"):
            for n in (5, 10, 20):
                e = {c: p.rms(cls(clock=c), GRIDS[g](p.path, n)) for c in ("t", "sigma")}
                rows.append([name, g, str(n), fmt(e["t"]), fmt(e["sigma"]), f"{e['t'] / e['sigma']:.1f}"])
    table(
        "Clock: Euler / Heun / LMS on VEGeometric(0.002, 80) in the path's t (log sigma) and in sigma "
        "(clock='auto' picks sigma here)",
        ["solver", "grid", "steps", "clock t", "clock sigma", "ratio"],
        rows,
    )


def bench_lower_order_final(p):
    solvers = {
        "dpmpp_2m": S.DPMSolverPP2M,
        "dpmpp_3m": S.DPMSolverPP3M,
        "dpm_solver_2m": S.DPMSolver2M,
        "unipc p=2 (UniPC-3)": lambda **k: S.UniPC(2, **k),
        "unipc p=3": lambda **k: S.UniPC(3, **k),
    }
    rows = []
    for name, make in solvers.items():
        for g in ("karras", "log_snr"):
            cells = []
            for n in (5, 10, 20):
                cells += [fmt(p.rms(make(lower_order_final=v), GRIDS[g](p.path, n))) for v in (False, True)]
            rows.append([name, g, *cells])
    table(
        "lower_order_final: RMS error without / with, VEGeometric(0.002, 80)",
        ["solver", "grid", "5 steps", "5, lof", "10 steps", "10, lof", "20 steps", "20, lof"],
        rows,
    )


def bench_targets(p, best):
    extra = {
        "unipc_p3": S.UniPC(3),
        "unipc_p3_lof": S.UniPC(3, lower_order_final=True),
        "dpmpp_3m": S.DPMSolverPP3M(),
        "dpmpp_3m_lof": S.DPMSolverPP3M(lower_order_final=True),
    }
    rows = []
    for nfe, target in ((10, 0.1), (20, 0.02)):
        cands = {}
        for name, sv in {**SOLVERS, **extra}.items():
            n = steps_for(sv, nfe)
            for g, fn in GRIDS.items():
                cands[f"{name}, {g} grid"] = p.rms(sv, fn(p.path, n))
        for (name, b, oname), (err, _) in best.items():
            if b == nfe:
                cands[f"{name}, optimised ({oname})"] = err
        fixed_best = min((k for k in cands if "optimised" not in k), key=cands.get)
        k = min(cands, key=cands.get)
        rows.append(
            [
                str(nfe),
                str(target),
                f"{fixed_best}: {cands[fixed_best]:.3g}",
                f"{k}: {cands[k]:.3g}",
                "met" if cands[k] <= target else "NOT met",
            ]
        )
    table(
        "Targets (RMS vs the exact PF-ODE endpoint, 2-D mixture on the EDM range)",
        ["NFE", "target", "best fixed grid", "best overall", "target"],
        rows,
    )


# -- diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 3), written out in numpy ----


def _discrete_schedule():
    betas = np.linspace(1e-4, 0.02, 1000)
    ac = np.cumprod(1.0 - betas)
    return np.log(ac) - np.log1p(-ac)  # full log-SNR per discrete step


def _diffusers_3m(denoise, x, lams, phi3_weight=1.0):
    """diffusers' defaults at N = len(lams) steps: lams are the log-SNRs of its timesteps,
    the last step goes to sigma = 0 (first order: x = x0_hat); first-order start, second order
    at step 1, third order after, except the step before the last below 15 steps
    (lower_order_final)."""
    alpha = lambda lam: np.sqrt(1.0 / (1.0 + np.exp(-lam)))
    sigma = lambda lam: np.sqrt(1.0 / (1.0 + np.exp(lam)))
    ms, hl = [], []
    n = len(lams)
    for i in range(n):
        m = denoise(x, lams[i])
        ms.append(m)
        hl.append(lams[i] / 2.0)
        if i == n - 1:  # to sigma = 0
            return m
        lt, ls = lams[i + 1] / 2.0, hl[-1]
        h = lt - ls
        a_t, s_t, s_s = alpha(lams[i + 1]), sigma(lams[i + 1]), sigma(lams[i])
        phi1 = np.expm1(-h)
        if i == 0:
            x = (s_t / s_s) * x - a_t * phi1 * m
        elif i == 1 or (n < 15 and i == n - 2):  # warm-up, and lower_order_final below 15 steps
            r0 = (ls - hl[-2]) / h
            d1 = (ms[-1] - ms[-2]) / r0
            x = (s_t / s_s) * x - a_t * phi1 * m - 0.5 * a_t * phi1 * d1
        else:
            r0, r1 = (ls - hl[-2]) / h, (hl[-2] - hl[-3]) / h
            d10, d11 = (ms[-1] - ms[-2]) / r0, (ms[-2] - ms[-3]) / r1
            d1 = d10 + r0 / (r0 + r1) * (d10 - d11)
            d2 = (d10 - d11) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = (phi1 + h) / h**2 - 0.5
            x = (s_t / s_s) * x - a_t * phi1 * m + a_t * phi2 * d1 - phi3_weight * a_t * phi3 * d2
    return x


def bench_diffusers(n_test):
    lam_d = _discrete_schedule()
    path = jdiff.VPLinear(0.1, 21.0)  # beta_max above 20 so that t_max covers the discrete step 999
    gm = mixture()
    model = gm.as_model(path, "x0")
    rows = []
    for n in (10, 20):
        steps = np.linspace(0, 999, n + 1).round()[::-1][:-1].astype(int)  # "linspace" spacing
        lams = lam_d[steps]
        ts = path.t_from_log_snr(jnp.asarray(lams))
        x = jax.random.normal(jax.random.PRNGKey(2), (n_test, 2), jnp.float64)
        x = path.sigma(ts[0]) * x  # x_T ~ N(0, sigma^2) at the first timestep (alpha^2 + sigma^2 = 1)
        # the sigma -> 0 endpoint: solve to t_min (sigma_e ~ 1e-3), then the exact denoiser there
        # (x(0) = x0_hat(x(t), t) + O(sigma_e^2))
        ref = S.solve_pf_ode(model, x, t0=ts[0], t1=path.t_min, solver=diffrax.Dopri8(), rtol=1e-10, atol=1e-10).sample
        ref = model.x0(ref, jnp.asarray(path.t_min))
        den = jax.jit(lambda x, lam: model.x0(x, path.t_from_log_snr(lam)))
        rms = lambda y, ref=ref: float(jnp.sqrt(jnp.mean((y - ref) ** 2)))
        out = {
            "diffusers 3M (their phi3 weight)": rms(_diffusers_3m(den, x, lams)),
            "diffusers 3M with the weight 2 phi3": rms(_diffusers_3m(den, x, lams, 2.0)),
        }
        for lof in (False, True):
            sv = S.DPMSolverPP3M(lower_order_final=lof)
            g = ts
            # n - 1 steps over diffusers' timesteps + the denoiser at the last one: the same n
            # model evaluations plus the start step's one
            y = S.sample(sv, model, x, g, denoise_to_zero=True)
            out[f"jdiff 3M, {n - 1} steps + denoise{', lower_order_final' if lof else ''} (NFE {n + 1})"] = rms(y)
            n2 = n - 2
            g2 = jnp.concatenate([ts[:1], path.t_from_log_snr(jnp.linspace(lams[0], lams[-1], n2 + 1))[1:]])
            y = S.sample(sv, model, x, g2, denoise_to_zero=True)
            out[f"jdiff 3M, {n2} log-SNR steps + denoise{', lof' if lof else ''} (NFE {n})"] = rms(y)
        for k, v in out.items():
            rows.append([str(n), k, fmt(v)])
    table(
        "DPM-Solver++(3M) against diffusers' defaults, discrete linear-beta schedule, exact mixture denoiser",
        ["diffusers steps", "solver", "RMS"],
        rows,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="grids,clock,lower_order_final,targets,diffusers")
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--fit", type=int, default=256)
    ap.add_argument("--test", type=int, default=1024)
    ap.add_argument("--save", default=None, help="folder to write the optimised grids to (.npy)")
    args = ap.parse_args()
    only = args.only.split(",")
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, fit {args.fit}, test {args.test}, "
        f"{args.iterations} adam updates at lr {args.lr}"
    )
    p = Problem(args.fit, args.test)
    best = {}
    if "grids" in only or "targets" in only:
        best = bench_grids(p, args.iterations, args.lr) if "grids" in only else {}
        if args.save:
            import os

            os.makedirs(args.save, exist_ok=True)
            for (name, nfe, oname), (_, grid) in best.items():
                S.save_grid(os.path.join(args.save, f"{name}_nfe{nfe}_{oname}.npy"), grid)
    if "clock" in only:
        bench_clock(p)
    if "lower_order_final" in only:
        bench_lower_order_final(p)
    if "targets" in only:
        bench_targets(p, best)
    if "diffusers" in only:
        bench_diffusers(args.test)


if __name__ == "__main__":
    main()
