"""jdiff.samplers fixed-step solvers against the exact Gaussian-mixture oracle.

The oracle is called through `jax.pure_callback` (`_oracle`): one compiled oracle per
(path, kind, shape) is shared by every solver program, which keeps the compile time of
this suite (one XLA program per solver and step count) inside its budget. The values are
the oracle's own, bit for bit.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import samplers as S
from jdiff.predictions import KINDS

from experiments import _names
from helpers import all_paths, callback_oracle, count_compiles, every_solver, mixture_2d

GM = mixture_2d()


def _oracle(path, kind, gm=GM, counter=None):
    return callback_oracle(path, kind, gm, counter)


def _log_component(x, gm=GM):
    """log w_k N(x; mu_k, S_k) for x (n, D) -> (n, K): assigns samples to components."""
    logn = jax.vmap(lambda m, c: jax.scipy.stats.multivariate_normal.logpdf(x, m, c))(gm.means, gm.covs)
    return logn.T + jnp.log(gm.weights)


# ---------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp_cosine", "ve", "linear", "subvp"])
def test_grids_are_decreasing_and_span_the_path(name):
    path = all_paths()[name]
    for grid_name in _names.GRIDS:
        g = np.asarray(_names.get_grid(grid_name, path, 12))
        assert g.shape == (13,)
        assert g[0] == pytest.approx(path.t_max, abs=1e-15) and g[-1] == pytest.approx(path.t_min, abs=1e-15)
        assert np.all(np.diff(g) < 0), grid_name


def test_grid_spacings_match_their_definitions():
    vp, ve = jdiff.VPLinear(), jdiff.VEGeometric()
    lam = np.asarray(vp.log_snr(S.log_snr_grid(vp, 10)))
    np.testing.assert_allclose(np.diff(lam), np.full(10, (lam[-1] - lam[0]) / 10), rtol=1e-9)
    # EDM eq. 5 with rho = 7 on the VE path, where the EDM sigma is the path's sigma.
    smax, smin = 80.0, 0.002
    i = np.arange(11) / 10
    want = (smax ** (1 / 7) + i * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    np.testing.assert_allclose(np.asarray(ve.sigma(S.karras_grid(ve, 10))), want, rtol=1e-10)
    g = np.asarray(S.quadratic_grid(vp, 4, t_start=1.0, t_end=0.0))
    np.testing.assert_allclose(g, [1.0, 9 / 16, 1 / 4, 1 / 16, 0.0], atol=1e-15)
    np.testing.assert_allclose(np.asarray(S.uniform_grid(vp, 4, t_start=1.0, t_end=0.2)), [1.0, 0.8, 0.6, 0.4, 0.2])


def test_bad_arguments_name_the_argument_and_the_choices():
    path = jdiff.VPLinear()
    with pytest.raises(ValueError, match="num_steps"):
        S.uniform_grid(path, 0)
    with pytest.raises(ValueError, match="karras"):
        _names.get_grid("cosine", path, 3)
    with pytest.raises(ValueError, match="dpmpp_2m"):
        _names.get_solver("dpm++")
    with pytest.raises(ValueError, match="order"):
        S.DPMSolver(order=4)
    with pytest.raises(ValueError, match="variant"):
        S.UniPC(variant="bh3")
    with pytest.raises(ValueError, match="eta"):
        S.DDIM(eta=-1.0)
    x = jnp.zeros((2, 2))
    model = GM.as_model(path, "eps")
    with pytest.raises(ValueError, match="velocity"):
        jdiff.Model(model.net, path, "noise")
    with pytest.raises(TypeError, match="jdiff.Model"):
        S.sample(S.DDIM(), model.net, x, S.uniform_grid(path, 2))
    with pytest.raises(TypeError, match="path"):
        jdiff.Model(model.net, "vp", "eps")
    with pytest.raises(ValueError, match="key"):
        S.sample(S.DDPM(), model, x, S.uniform_grid(path, 2))
    with pytest.raises(ValueError, match="grid"):
        S.sample(S.DDIM(), model, x, jnp.zeros((2, 3)))
    # An increasing (or non-monotone) concrete grid is refused, naming the offending entries.
    with pytest.raises(ValueError, match=r"strictly decreasing.*grid\[0\]"):
        S.sample(S.DDIM(), model, x, jnp.linspace(0.1, 0.9, 5))
    with pytest.raises(ValueError, match=r"grid\[2\]"):
        S.sample(S.DDIM(), model, x, jnp.array([0.9, 0.5, 0.3, 0.4]))
    # A network whose output does not have x's shape is refused (it would broadcast silently).
    bad = jdiff.Model(lambda x, t, c: x[:, :1], path, "eps")
    with pytest.raises(ValueError, match="shape"):
        S.sample(S.DDIM(), bad, x, S.uniform_grid(path, 2))
    assert isinstance(_names.get_solver("pc", predictor="ddpm", snr=0.1).predictor, S.DDPM)
    assert _names.get_solver("unipc", predictor_order=1, variant="bh1").order == 2


# ---------------------------------------------------------------------------------
# Convergence orders (float64) against a Dopri8 solve of the exact PF-ODE
# ---------------------------------------------------------------------------------

# Full log-SNR from -5 to 9 (EDM sigma from 12 to 0.011): the whole non-trivial part of
# the flow for this mixture (component stds 0.14 .. 0.32). Step counts where every solver
# is in its asymptotic regime (local slopes within 0.1 of each other).
_LAM = (-5.0, 9.0)
_STEPS = (64, 128, 256)

_VP_SOLVERS = {
    "ddim": S.DDIM(),
    "dpm_solver_2": S.DPMSolver(order=2),
    "dpm_solver_3": S.DPMSolver(order=3),
    "dpmpp_2m": S.DPMSolverPP2M(),
    "dpmpp_2m_lof": S.DPMSolverPP2M(lower_order_final=True),
    "dpm_solver_2m": S.DPMSolver2M(),
    "dpmpp_3m": S.DPMSolverPP3M(),
    "unipc_p2_bh1": S.UniPC(predictor_order=2, variant="bh1"),
    "unipc_p2_bh2": S.UniPC(predictor_order=2, variant="bh2"),
    "unipc_p3_bh2": S.UniPC(predictor_order=3),
    # Predictor-corrector with a multistep predictor keeps the predictor's start step and
    # order (no Langevin steps: a deterministic solve whose order can be fitted).
    "pc_dpmpp_3m": S.PredictorCorrector(S.DPMSolverPP3M(), n_corrector=0),
}
_LINEAR_SOLVERS = {
    "euler": S.Euler(),
    "heun": S.Heun(),
    "lms_2": S.LMS(order=2),
    "lms_3": S.LMS(order=3),
    "lms_3_sigma": S.LMS(order=3, clock="sigma"),  # Adams-Bashforth in sigma_e, its Heun start too
    "pc_lms_3": S.PredictorCorrector(S.LMS(order=3), n_corrector=0),
}


def _fitted_orders(path, grid_fn, solvers, kind):
    t0, t1 = (float(path.t_from_log_snr(v)) for v in _LAM)
    x, _ = path.marginal(jax.random.PRNGKey(2), GM.sample(jax.random.PRNGKey(1), 64), jnp.asarray(t0))
    model = _oracle(path, kind)
    ref = S.solve_pf_ode(model, x, t0=t0, t1=t1, solver=diffrax.Dopri8(), rtol=1e-11, atol=1e-11).sample
    run = jax.jit(lambda x, g: {k: S.sample(sv, model, x, g) for k, sv in solvers.items()})
    errs = {k: [] for k in solvers}
    for n in _STEPS:
        out = run(x, grid_fn(path, n, t_start=t0, t_end=t1))
        for k, y in out.items():
            errs[k].append(float(jnp.sqrt(jnp.mean((y - ref) ** 2))))
    return {k: (-np.polyfit(np.log(_STEPS), np.log(e), 1)[0], e) for k, e in errs.items()}


@pytest.fixture(scope="module")
def vp_orders():
    # VP path, grid uniform in log-SNR (where DPM-Solver/UniPC are analysed), eps model.
    return _fitted_orders(jdiff.VPLinear(), S.log_snr_grid, _VP_SOLVERS, "eps")


@pytest.fixture(scope="module")
def linear_orders():
    # Rectified-flow path, grid uniform in t, velocity model.
    return _fitted_orders(jdiff.Linear(), S.uniform_grid, _LINEAR_SOLVERS, "velocity")


@pytest.mark.parametrize("name", list(_VP_SOLVERS))
def test_convergence_order_vp_log_snr_grid(vp_orders, name):
    order, errs = vp_orders[name]
    if name == "unipc_p3_bh2":
        # Asymptotically order 3 (its first step has local error O(h^3)), but the fourth-order
        # bulk dominates at these step counts (fitted 4.5): the warm-up bound is one-sided.
        assert order > _VP_SOLVERS[name].order - 0.5, (order, errs)
        return
    assert abs(order - _VP_SOLVERS[name].order) < 0.5, (order, errs)


@pytest.mark.parametrize("name", list(_LINEAR_SOLVERS))
def test_convergence_order_linear_uniform_grid(linear_orders, name):
    order, errs = linear_orders[name]
    assert abs(order - _LINEAR_SOLVERS[name].order) < 0.5, (order, errs)


@pytest.mark.parametrize(
    "fixture, pc, plain", [("linear_orders", "pc_lms_3", "lms_3"), ("vp_orders", "pc_dpmpp_3m", "dpmpp_3m")]
)
def test_predictor_corrector_keeps_its_predictors_start_step(request, fixture, pc, plain):
    # Without Langevin steps the predictor-corrector is its predictor, start step included:
    # the same errors at every N, and the third order (LMS-3 without its Heun start measures
    # 2.55 here, which the 0.5 band of the generic test would not catch).
    orders = request.getfixturevalue(fixture)
    np.testing.assert_allclose(orders[pc][1], orders[plain][1], rtol=1e-10)
    assert abs(orders[pc][0] - 3.0) < 0.15, orders[pc]


def test_lower_order_final_ends_with_first_order_steps():
    # 2M: the last step is a DDIM step from the state 2M reached one step earlier; 3M with a
    # single step is DDIM (its 2S start step would be second order). UniPC with it predicts the
    # last step with UniP-1 (DDIM) from the corrected state, so it differs from the plain run.
    path = jdiff.VPLinear()
    model = _oracle(path, "eps")
    x = path.prior_sample(jax.random.PRNGKey(5), (32, 2), jnp.float64)
    g = S.log_snr_grid(path, 6)
    y = S.sample(S.DPMSolverPP2M(lower_order_final=True), model, x, g)
    want = S.sample(S.DDIM(), model, S.sample(S.DPMSolverPP2M(), model, x, g[:-1]), g[-2:])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        S.sample(S.DPMSolverPP3M(lower_order_final=True), model, x, g[:2]),
        S.sample(S.DDIM(), model, x, g[:2]),
        rtol=1e-12,
        atol=1e-12,
    )
    plain, lof = (S.sample(S.UniPC(lower_order_final=v), model, x, g) for v in (False, True))
    assert not np.allclose(plain, lof)


@pytest.mark.parametrize("name", ["vp_linear", "linear", "ve", "trig"])
def test_euler_in_the_sigma_clock_is_ddim(name):
    # y = x / alpha in sigma_e = sigma / alpha: dy/dsigma_e = eps_hat, whose Euler step is DDIM.
    path = all_paths()[name]
    model = _oracle(path, "v")
    x = path.prior_sample(jax.random.PRNGKey(6), (16, 2), jnp.float64)
    g = S.karras_grid(path, 7)
    ddim = S.sample(S.DDIM(), model, x, g)
    np.testing.assert_allclose(S.sample(S.Euler(clock="sigma"), model, x, g), ddim, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(S.sample(S.LMS(order=1, clock="sigma"), model, x, g), ddim, rtol=1e-9, atol=1e-9)


def test_auto_clock_is_sigma_on_ve_and_far_more_accurate_there():
    # On VEGeometric (t = log sigma) the sigma clock is k-diffusion's Euler/Heun; at 10 Karras
    # steps over sigma 80 .. 0.002 it is 5x (Euler) and 3x (Heun) more accurate (measured
    # 0.205 vs 1.08 and 0.112 vs 0.341 on 256 samples, docs/samplers.md). "auto" picks it there
    # and keeps the path's clock on VP, where t is the better clock.
    ve, vp = jdiff.VEGeometric(0.002, 80.0), jdiff.VPLinear()
    model = _oracle(ve, "x0")
    x = ve.prior_sample(jax.random.PRNGKey(7), (64, 2), jnp.float64)
    ref = S.solve_pf_ode(model, x, solver=diffrax.Dopri8(), rtol=1e-10, atol=1e-10).sample
    g = S.karras_grid(ve, 10)
    err = {}
    for solver in ("euler", "heun", "lms"):
        cls = {"euler": S.Euler, "heun": S.Heun, "lms": S.LMS}[solver]
        out = {c: S.sample(cls(clock=c), model, x, g) for c in ("auto", "t", "sigma")}
        np.testing.assert_array_equal(out["auto"], out["sigma"])
        err[solver] = {c: float(jnp.sqrt(jnp.mean((y - ref) ** 2))) for c, y in out.items()}
    assert err["euler"]["sigma"] < 0.3 * err["euler"]["t"], err
    assert err["heun"]["sigma"] < 0.5 * err["heun"]["t"], err
    assert err["lms"]["sigma"] < 0.5 * err["lms"]["t"], err
    xv = vp.prior_sample(jax.random.PRNGKey(8), (8, 2), jnp.float64)
    mv, gv = _oracle(vp, "eps"), S.karras_grid(vp, 5)
    np.testing.assert_array_equal(S.sample(S.Heun(), mv, xv, gv), S.sample(S.Heun(clock="t"), mv, xv, gv))
    np.testing.assert_array_equal(S.sample(S.LMS(), mv, xv, gv), S.sample(S.LMS(clock="t"), mv, xv, gv))
    with pytest.raises(ValueError, match="clock"):
        S.Euler(clock="lambda")
    with pytest.raises(ValueError, match="clock"):
        S.LMS(clock="lambda")
    with pytest.raises(ValueError, match="variant"):
        S.DPMSolver2M(variant="heun")


# ---------------------------------------------------------------------------------
# Every kind gives the same sample; conditioning reaches the model; any batch shape
# ---------------------------------------------------------------------------------


def test_every_prediction_kind_gives_the_same_sample():
    path = jdiff.Trigonometric()
    x = path.prior_sample(jax.random.PRNGKey(0), (16, 2), jnp.float64)
    grid = S.karras_grid(path, 12)
    solver = S.DPMSolverPP3M()
    run = jax.jit(lambda x, g: [S.sample(solver, _oracle(path, k), x, g) for k in KINDS])
    outs = run(x, grid)
    for k, y in zip(KINDS, outs):
        np.testing.assert_allclose(y, outs[1], atol=1e-9, err_msg=k)


def test_conditioning_is_passed_to_the_model_unchanged():
    # The class-conditional oracle: class 1 is component 2 alone.
    path = jdiff.VPCosine()
    n = 256
    cond = jnp.arange(n) % 2
    x = path.prior_sample(jax.random.PRNGKey(3), (n, 2), jnp.float64)
    seen, oracle = [], _oracle(path, "x0")

    def net(x, t, c):
        seen.append(c)
        return oracle(x, t, c)

    model = jdiff.Model(net, path, "x0")
    y, traj = jax.jit(lambda x, c, g: S.sample(S.DPMSolverPP2M(), model, x, g, cond=c, return_trajectory=True))(
        x, cond, S.log_snr_grid(path, 20)
    )
    assert traj.shape == (21, n, 2) and bool(jnp.all(traj[0] == x)) and bool(jnp.all(traj[-1] == y))
    assert seen and all(c.shape == (n,) and c.dtype == cond.dtype for c in seen)
    post = jax.vmap(lambda xi: GM.class_log_posterior(xi, 0.0, path))(y)
    np.testing.assert_array_equal(np.argmax(post, -1), np.asarray(cond))
    np.testing.assert_allclose(jnp.mean(y[cond == 1], 0), GM.means[2], atol=0.05)


def test_any_batch_shape():
    # A (4, 3, 2) batch through a model that works on flat (12, 2) rows equals the flat run.
    path = jdiff.VPLinear()
    flat = _oracle(path, "v")
    model = jdiff.Model(lambda x, t, c: flat(x.reshape(-1, 2), t, c).reshape(x.shape), path, "v")
    x = path.prior_sample(jax.random.PRNGKey(4), (4, 3, 2), jnp.float64)
    solver, grid = S.DPMSolver(order=3), S.log_snr_grid(path, 10)
    y = S.sample(solver, model, x, grid)
    y_flat = S.sample(solver, model, x.reshape(12, 2), grid)
    assert y.shape == x.shape
    np.testing.assert_allclose(y.reshape(12, 2), y_flat, atol=1e-12)
    assert float(jnp.max(jnp.abs(y))) < 3.0  # samples of the mixture, not noise


# ---------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------
# Endpoint finiteness in float32, every solver x every path
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("all_solvers", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["third", "all"])
@pytest.mark.parametrize("name", list(all_paths()))
def test_endpoints_are_finite_in_float32_and_nfe_is_exact(name, all_solvers):
    # Six Karras steps over the whole range [t_min, t_max] of each path, then the denoiser:
    # the ends are where float32 fails (alpha -> 0 at t_max, sigma -> 0 at t_min). Each
    # solver's model counts its calls, which must equal solver.nfe(N) + 1. The fast variant
    # runs a third of the solvers on each path, in rotation (every solver on three paths; the
    # compile of all of them per path is the cost); the slow one runs every solver on every path.
    i = list(all_paths()).index(name)
    path = all_paths()[name]
    gm = mixture_2d(jnp.float32)
    kind = KINDS[i % len(KINDS)]  # every kind on some path
    solvers = {k: v for j, (k, v) in enumerate(every_solver().items()) if all_solvers or j % 3 == i % 3}
    solvers.setdefault("dpmpp_3m", S.DPMSolverPP3M())  # the new-grid check below reads it
    counters = {k: [0] for k in solvers}
    models = {k: _oracle(path, kind, gm, counters[k]) for k in solvers}
    x = path.prior_sample(jax.random.PRNGKey(0), (64, 2), jnp.float32)
    run = jax.jit(
        lambda x, g, key: {k: S.sample(sv, models[k], x, g, key=key, denoise_to_zero=True) for k, sv in solvers.items()}
    )
    n, key = 6, jax.random.PRNGKey(1)
    grids = [S.karras_grid(path, n), S.log_snr_grid(path, n)]
    out = jax.block_until_ready(run(x, grids[0], key))
    for k, y in out.items():
        assert y.dtype == jnp.float32 and y.shape == x.shape, k
        assert bool(jnp.all(jnp.isfinite(y))), (k, kind)
        assert counters[k][0] == solvers[k].nfe(n) + 1, k
    # A new grid of the same length is a new traced argument: no compilation at all.
    with count_compiles() as compiles:
        again = jax.block_until_ready(run(x, grids[1], key))
    assert compiles() == 0
    assert all(bool(jnp.all(jnp.isfinite(y))) for y in again.values())
    assert not np.allclose(again["dpmpp_3m"], out["dpmpp_3m"])  # the new grid was used
