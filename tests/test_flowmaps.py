"""Flow maps against the exact flow map of the Gaussian-mixture oracle.

The reference is the exact flow map Phi(x, t, s): a float64 Dopri8 solve (rtol 1e-10) of
the oracle's PF-ODE from t to s, or the closed-form flow map of one Gaussian. Every example
gets its own (t, s) through the time change tau in [0, 1] -> t + tau (s - t), so one batched
solve serves a batch of jumps.
"""

import functools
import itertools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_paths, count_compiles, mixture_2d

import jdiff
from jdiff import flowmaps, models, paths, samplers


def exact_flow(gm, path, rtol=1e-10):
    """Phi(x, t, s, cond): the exact PF-ODE flow map of the mixture `gm` on `path` (jitted)."""
    vel = gm.as_model(path, "velocity")  # a jdiff.Model predicting the PF-ODE velocity

    @jax.jit
    def f(x, t, s, cond=None):
        n = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (n,))
        s = jnp.broadcast_to(jnp.asarray(s, x.dtype), (n,))

        def vf(tau, y, args):
            return (s - t)[:, None] * vel(y, t + tau * (s - t))

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vf),
            diffrax.Dopri8(),
            0.0,
            1.0,
            0.1,
            x,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
            adjoint=diffrax.ForwardMode(),
            max_steps=4096,
        )
        return sol.ys[-1]

    return f


def exact_average_velocity(gm, path):
    """u(z, t, r) = (z - Phi(z, t, r)) / (t - r), jdiff's (x, t, s) order."""
    phi = exact_flow(gm, path)

    def u(z, t, r, cond=None):
        return (z - phi(z, t, r)) / (t - r)[:, None]

    return u


def as_flow(phi, path):
    """A FlowMap (AverageVelocity) whose network is the average velocity of the exact map `phi`.

    net = (x - phi(x, t, s)) / (t - s), and 0 at s = t, so the FlowMap is phi to rounding and
    exactly x at s = t.
    """

    def net(x, t, s, cond=None):
        same = (t == s)[:, None]
        return jnp.where(same, 0.0, (x - phi(x, t, s)) / jnp.where(same, 1.0, (t - s)[:, None]))

    return flowmaps.FlowMap(net, path, flowmaps.AverageVelocity())


def tiny_net(key, dim, hidden=16):
    """A fixed random smooth network F(x, t, s, cond) (jnp only), nonlinear in every input."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (dim + 2, hidden)) / math.sqrt(dim + 2)
    w2 = jax.random.normal(k2, (hidden, hidden)) / math.sqrt(hidden)
    w3 = jax.random.normal(k3, (hidden, dim)) / math.sqrt(hidden)

    def net(x, t, s, cond=None):
        h = jnp.concatenate([x, t[:, None], s[:, None]], axis=1)
        h = jnp.tanh(h @ w1.astype(x.dtype))
        h = jnp.tanh(h @ w2.astype(x.dtype))
        return h @ w3.astype(x.dtype)

    return net


N = 128  # one batch size for every oracle solve, so each jitted exact map compiles once


@functools.cache
def oracle():
    """(mixture, Linear path, exact flow map, exact average velocity, exact velocity), shared."""
    gm, path = mixture_2d(), paths.Linear()
    vel = gm.as_model(path, "velocity")
    return gm, path, exact_flow(gm, path), exact_average_velocity(gm, path), jax.jit(lambda x, t: vel(x, t))


PARAMS = {"avg_velocity": flowmaps.AverageVelocity(), "ddim_denoiser": flowmaps.DDIMDenoiser(0.5)}


# -----------------------------------------------------------------------------------
# Parameterization
# -----------------------------------------------------------------------------------


def test_boundary_condition_is_exact():
    """f(x, t, t) = x bit for bit in float32, every path and parameterization, at random times and both ends."""

    every_path = all_paths()

    @jax.jit
    def run():
        out = {}
        for dtype in (jnp.float32,):
            net = tiny_net(jax.random.key(0), 3)
            x = 3.0 * jax.random.normal(jax.random.key(1), (64, 3), dtype)
            for name, path in every_path.items():
                t = jax.random.uniform(jax.random.key(2), (64,), dtype, path.t_min, path.t_max)
                t = t.at[0].set(path.t_min).at[1].set(path.t_max)
                for pname, param in PARAMS.items():
                    f = flowmaps.FlowMap(net, path, param)
                    # f(x, t, t) - x, and how far the map moves x for s = t_min (must not vanish)
                    out[name, pname, dtype.__name__] = (x, f(x, t, t), f(x, t, path.t_min) - x)
        return out

    for k, (x, same, moved) in run().items():
        assert same.dtype == x.dtype, k
        np.testing.assert_array_equal(np.asarray(same), np.asarray(x), err_msg=str(k))
        assert float(jnp.max(jnp.abs(moved[2:]))) > 1e-3, k


def test_ddim_denoiser_matches_consistency_model_scalings():
    """On VE with s = t_min, c_out is Song et al.'s (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2) exactly."""
    path, sd = paths.VEGeometric(), 0.5
    t = jnp.linspace(0.0, 1.0, 33)
    c_skip, c_out, c_in = jax.jit(flowmaps.DDIMDenoiser(sd).scalings)(path, t, jnp.zeros_like(t))
    sig, smin = path.sigma(t), 0.002
    np.testing.assert_allclose(c_out, (sig - smin) * sd / jnp.sqrt(sig**2 + sd**2), rtol=1e-12, atol=1e-15)
    cm_skip = sd**2 / ((sig - smin) ** 2 + sd**2)
    np.testing.assert_allclose(c_skip, cm_skip, atol=0.002 / sd)  # agrees to O(sigma_min)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0
    np.testing.assert_allclose(c_in, 1.0 / jnp.sqrt(sig**2 + sd**2), rtol=1e-12)


def test_ddim_denoiser_with_exact_denoiser_is_ddim_step():
    """With F such that D is the oracle denoiser, f(x, t, s) is the oracle's DDIM step: local error O((t - s)^2).

    Data N(mu, sd^2 I), whose exact flow map is closed-form (`gaussian_flow`); the fitted order of
    the one-step error against t - s is 2.
    """
    gm, path, phi, sd = gaussian_oracle(), paths.Linear(), gaussian_flow(paths.Linear()), 0.5
    den = gm.as_model(path, "x0")

    def net(x_in, t, s, cond=None):  # invert the EDM preconditioning around the exact denoiser
        pre = jdiff.predictions.edm_preconditioning(t, path, sd)
        x = x_in / pre.c_in[:, None]
        return (den(x, t) - pre.c_skip[:, None] * x) / pre.c_out[:, None]

    f = flowmaps.FlowMap(net, path, flowmaps.DDIMDenoiser(sd))
    x = gm.sample(jax.random.key(0), N)
    t = jnp.full((N,), 0.6)
    x_t, _ = path.marginal(jax.random.key(1), x, t)
    hs = np.array([0.04, 0.02, 0.01, 0.005])
    err = jax.jit(lambda h: jnp.mean(jnp.linalg.norm(f(x_t, t, t - h) - phi(x_t, t, t - h), axis=1)))
    errs = [float(err(h)) for h in hs]
    order = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(order - 2.0) < 0.2, (order, errs)  # DDIM's local error is O(h^2)


def test_flow_map_is_a_pytree_argument_and_validates():
    """FlowMap passes through jax.jit as an argument: new nnx weights or a new sigma_data do not recompile;
    its constructor and call name the bad argument."""
    from flax import nnx

    path = paths.VEGeometric()
    x = jax.random.normal(jax.random.key(0), (8, 2), jnp.float32)
    jump = jax.jit(lambda flow, x: flow(x, 0.8, 0.2))
    out = jump(
        flowmaps.FlowMap(models.FlowMapMLP(2, hidden=16, depth=1, rngs=nnx.Rngs(0)), path, flowmaps.DDIMDenoiser(0.5)),
        x,
    )
    assert out.shape == x.shape and out.dtype == x.dtype
    with count_compiles() as n:
        other = jump(
            flowmaps.FlowMap(
                models.FlowMapMLP(2, hidden=16, depth=1, rngs=nnx.Rngs(1)), path, flowmaps.DDIMDenoiser(0.7)
            ),
            x,
        )
    assert n() == 0 and float(jnp.max(jnp.abs(other - out))) > 0
    net = tiny_net(jax.random.key(0), 2)
    flow = flowmaps.FlowMap(net, path)
    assert isinstance(flow.param, flowmaps.AverageVelocity) and flow.path is path
    for args, word in [((flow, path), "net"), ((net, "ve"), "path"), ((net, path, "ddim"), "param")]:
        with pytest.raises(TypeError, match=word):
            flowmaps.FlowMap(*args)
    with pytest.raises(ValueError, match="shape"):
        flowmaps.FlowMap(lambda x, t, s, c: x[:, :1], path)(x, 0.8, 0.2)


# -----------------------------------------------------------------------------------
# The exact flow map and the MeanFlow identity
# -----------------------------------------------------------------------------------


def test_average_velocity_map_of_the_velocity_is_an_euler_step():
    """FlowMap(v, path) with AverageVelocity and net = the oracle's PF-ODE velocity v(x, t) is Euler's
    jump x + (s - t) v: against the exact flow map its one-step error is h ||v - u|| = O(h^2) (fitted),
    u the exact average velocity (so u -> v at first order in t - r), and one `flowmaps.sample`
    step on the grid [t, t - h] is that jump.
    """
    _, path, phi, _, v = oracle()
    euler = flowmaps.FlowMap(lambda x, t, s, cond: v(x, t), path, flowmaps.AverageVelocity())
    z = path.prior_sample(jax.random.key(0), (N, 2), jnp.float64)
    t = jnp.full((N,), 0.7)
    hs = np.array([0.08, 0.04, 0.02, 0.01])
    errs = [float(jnp.mean(jnp.linalg.norm(euler(z, t, t - h) - phi(z, t, t - h), axis=1))) for h in hs]
    order = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(order - 2.0) < 0.15, (order, errs)
    assert errs[-1] < 0.05 * hs[-1]
    one = flowmaps.sample(euler, z, jnp.array([0.7, 0.7 - hs[0]]))
    np.testing.assert_allclose(one, euler(z, 0.7, 0.7 - hs[0]), rtol=1e-14, atol=1e-15)


def test_meanflow_identity_holds_for_exact_average_velocity():
    """meanflow_target(u_exact) = u_exact: u = v - (t - r) du/dt, du/dt by jvp through the exact solve."""
    gm, path, _, u, v = oracle()
    x0 = gm.sample(jax.random.key(0), N)
    t = jax.random.uniform(jax.random.key(1), (N,), minval=0.3, maxval=0.9)
    r = t * jax.random.uniform(jax.random.key(2), (N,), minval=0.2, maxval=0.8)
    z, _ = path.marginal(jax.random.key(3), x0, t)
    u_val, u_tgt = jax.jit(flowmaps.meanflow_target, static_argnums=0)(u, z, r, t, v(z, t))
    rel = float(jnp.max(jnp.linalg.norm(u_tgt - u_val, axis=1) / jnp.linalg.norm(u_val, axis=1)))
    assert rel < 1e-7, rel
    # The identity is not vacuous: the derivative term is large.
    dudt_term = jnp.linalg.norm(v(z, t) - u_val, axis=1)
    assert float(jnp.min(dudt_term)) > 1e-2


def _fd_meanflow_target(u, z, r, t, v, cond=None, h=1e-5):
    """Central finite difference along the trajectory: d/dt u ~ (u(z + h v, t + h) - u(z - h v, t - h)) / 2h."""
    up = u(z + h * v, t + h, r, cond)
    um = u(z - h * v, t - h, r, cond)
    u_val = u(z, t, r, cond)
    return u_val, v - (t - r)[:, None] * (up - um) / (2 * h)


@pytest.mark.parametrize("guided", [pytest.param(False, marks=pytest.mark.slow), True])
def test_meanflow_loss_jvp_equals_finite_differences(monkeypatch, guided):
    """The jvp-based loss equals the same loss with a central finite-difference derivative."""
    path, dim = paths.Trigonometric(), 3
    base = tiny_net(jax.random.key(0), dim)

    def net(x, t, s, cond=None):  # a class-dependent net (cond: (N,) labels in {0, 1, 2})
        c = 0.0 if cond is None else 0.3 * cond.astype(x.dtype)[:, None]
        return base(x + c, t, s) * (1.0 + t - s)[:, None]

    flow = flowmaps.FlowMap(net, path)

    x0 = jax.random.normal(jax.random.key(1), (256, dim))
    kw = {}
    cond = None
    if guided:
        cond = jax.random.randint(jax.random.key(2), (256,), 0, 2)
        kw = {"guidance_scale": 2.0, "guidance_kappa": 0.5, "null_cond": jnp.asarray(2), "cond_drop_prob": 0.1}
    key = jax.random.key(3)

    # p = 0: the raw squared error ||u - u_tgt||^2 (the adaptive weight would squash it to ~1).
    def loss():
        return flowmaps.meanflow_loss(flow, key, x0, cond=cond, fraction_r_neq_t=0.5, adaptive_p=0.0, **kw)

    loss_jvp = jax.jit(loss)()
    # the loss looks meanflow_target up in its own (private) module
    monkeypatch.setattr("jdiff.flowmaps._meanflow.meanflow_target", _fd_meanflow_target)
    loss_fd = jax.jit(lambda: loss())()  # a new function object: traced again with the patch
    assert loss_jvp.shape == (256,)
    np.testing.assert_allclose(loss_jvp, loss_fd, rtol=1e-7, atol=1e-12)
    assert float(jnp.std(loss_jvp)) > 1e-2 * float(jnp.mean(loss_jvp))  # per-example, not constant


def test_meanflow_loss_adaptive_weight():
    """w ||Delta||^2 with w = 1 / (||Delta||^2 + c)^p: p = 0 is the plain squared error, p = 1 is < 1."""
    flow = flowmaps.FlowMap(tiny_net(jax.random.key(0), 2), paths.Linear())
    x0 = jax.random.normal(jax.random.key(1), (N, 2))

    @jax.jit
    def run():
        return [
            flowmaps.meanflow_loss(flow, jax.random.key(2), x0, adaptive_p=p, adaptive_c=1e-3) for p in (0.0, 1.0, 0.5)
        ]

    plain, adapt, half = run()
    np.testing.assert_allclose(adapt, plain / (plain + 1e-3), rtol=1e-10)
    np.testing.assert_allclose(half, plain / jnp.sqrt(plain + 1e-3), rtol=1e-10)
    assert float(jnp.max(plain)) > 1e-2


# -----------------------------------------------------------------------------------
# Closed-form flow map of one Gaussian: data N(mu, sd^2 I) on any path
# -----------------------------------------------------------------------------------

MU, SD = jnp.array([0.7, -0.4]), 0.6


def gaussian_var(path, t):
    """Per-coordinate variance a^2 sd^2 + s^2 of x_t."""
    return path.alpha(t) ** 2 * SD**2 + path.sigma(t) ** 2


def gaussian_flow(path):
    """Phi(x, t, s) = a_s mu + (x - a_t mu) sqrt(var_s / var_t): the exact PF-ODE flow map."""

    def f(x, t, s, cond=None):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])[:, None]
        s = jnp.broadcast_to(jnp.asarray(s, x.dtype), x.shape[:1])[:, None]
        mu = MU[None, :].astype(x.dtype)
        return path.alpha(s) * mu + (x - path.alpha(t) * mu) * jnp.sqrt(gaussian_var(path, s) / gaussian_var(path, t))

    return f


def gaussian_oracle():
    return jdiff.GaussianMixture(jnp.ones(1), MU[None], stds=jnp.array([SD]))


def test_gaussian_flow_is_the_oracle_pf_ode_flow():
    """The closed form is a flow of the oracle's PF-ODE: d/ds Phi(x, t, s) at s = t is the oracle velocity."""
    path = paths.Trigonometric()
    flow, vel = gaussian_flow(path), gaussian_oracle().as_model(path, "velocity")
    x = 2.0 * jax.random.normal(jax.random.key(0), (N, 2))
    t = jax.random.uniform(jax.random.key(1), (N,), minval=0.05, maxval=0.95)
    same, d_ds = jax.jvp(lambda s: flow(x, t, s), (t,), (jnp.ones_like(t),))
    np.testing.assert_allclose(same, x, rtol=1e-12)
    np.testing.assert_allclose(d_ds, vel(x, t), rtol=1e-10, atol=1e-12)
    # ... and the composition law Phi(Phi(x, t, r), r, s) = Phi(x, t, s)
    np.testing.assert_allclose(flow(flow(x, t, 0.5 * t), 0.5 * t, 0.1 * t), flow(x, t, 0.1 * t), rtol=1e-12)


def _regression_stats(x_in, x_out):
    """Per coordinate: slope of x_out on x_in, its standard error, and the residual variance."""
    x_in, x_out = np.asarray(x_in), np.asarray(x_out)
    xc, yc = x_in - x_in.mean(0), x_out - x_out.mean(0)
    beta = np.sum(xc * yc, 0) / np.sum(xc * xc, 0)
    resid = np.var(yc - beta * xc, 0)
    return beta, np.sqrt(resid / np.sum(xc * xc, 0)), resid


@pytest.mark.parametrize("path", [paths.Linear(), paths.VEGeometric()], ids=["linear", "ve"])
def test_sample_multistep_and_renoising_marginals(path):
    """With the exact flow map: gamma = 0 composes to one jump; every gamma-step lands on the law of its time.

    Data N(mu, sd^2 I), so x_t ~ N(alpha_t mu, var(t)) with var = alpha^2 sd^2 + sigma^2. One step from
    x_i ~ p_{t_i} to t_{i+1} must give (i) the marginal of t_{i+1} (mean alpha mu, variance
    var(t_{i+1})) and (ii) fresh noise of variance gamma^2 sigma(t_{i+1})^2, the residual variance of
    x_{i+1} regressed on x_i. These two properties fix the step's regression factor
    A_i = sqrt((var(t_{i+1}) - gamma^2 sigma(t_{i+1})^2) / var(t_i)), so the whole run regresses on
    x_T with the product of the A_i and ends with the marginal of t_end. (gamma = 1 jumps to t_min and
    adds sigma(t_min) noise there: off by sigma(t_min)^2 / var, far below the tolerances.)
    """
    flow = as_flow(gaussian_flow(path), path)
    n = 20000
    grid = jnp.array([path.t_max, 0.7, 0.4, 0.15, path.t_min])
    mu = np.asarray(MU)

    def marginal(key, t):
        return path.alpha(t) * MU[None, :] + jnp.sqrt(gaussian_var(path, t)) * jax.random.normal(key, (n, 2))

    run = jax.jit(lambda x, g, k, gamma: flowmaps.sample(flow, x, g, key=k, gamma=gamma))
    x_T = marginal(jax.random.key(0), path.t_max)
    # gamma = 0: the scan composes exact jumps = one exact jump.
    np.testing.assert_allclose(
        run(x_T, grid, jax.random.key(1), 0.0), gaussian_flow(path)(x_T, path.t_max, path.t_min), rtol=1e-10, atol=1e-10
    )
    for gamma in (0.5, 1.0):
        factor = 1.0
        for i, (t, t_next) in enumerate(itertools.pairwise(grid)):
            x_i = marginal(jax.random.key(10 + i), t)
            x_next = run(x_i, jnp.stack([t, t_next]), jax.random.key(20 + i), gamma)
            var_next, noise = float(gaussian_var(path, t_next)), gamma**2 * float(path.sigma(t_next)) ** 2
            a_i = math.sqrt((var_next - noise) / float(gaussian_var(path, t)))
            factor *= a_i
            beta, se, resid = _regression_stats(x_i, x_next)
            msg = f"gamma {gamma}, step {i}"
            np.testing.assert_allclose(
                np.mean(np.asarray(x_next), 0),
                float(path.alpha(t_next)) * mu,
                atol=5 * math.sqrt(var_next / n),
                err_msg=msg,
            )
            np.testing.assert_allclose(np.var(np.asarray(x_next), 0), var_next, rtol=5 * math.sqrt(2 / n), err_msg=msg)
            np.testing.assert_allclose(resid, noise, rtol=5 * math.sqrt(2 / n), err_msg=msg)
            np.testing.assert_allclose(beta, a_i, atol=5 * se.max() + 1e-12, err_msg=msg)
        # the whole run from x_T
        x = np.asarray(run(x_T, grid, jax.random.key(1), gamma))
        beta, se, _ = _regression_stats(x_T, x)
        var_end = float(gaussian_var(path, path.t_min))
        np.testing.assert_allclose(beta, factor, atol=5 * se.max() + 1e-12)
        np.testing.assert_allclose(np.var(x, 0), var_end, rtol=5 * math.sqrt(2 / n))
        np.testing.assert_allclose(np.mean(x, 0), float(path.alpha(path.t_min)) * mu, atol=5 * math.sqrt(var_end / n))
        if gamma == 1.0:  # full re-noising forgets x_T up to the last jump's contraction
            assert factor < 0.2


def test_sample_needs_key_for_renoising():
    path = paths.Linear()
    flow = as_flow(gaussian_flow(path), path)
    with pytest.raises(ValueError, match="key"):
        flowmaps.sample(flow, jnp.zeros((4, 2)), jnp.array([0.9, 0.1]), gamma=0.5)
    with pytest.raises(ValueError, match="grid"):
        flowmaps.sample(flow, jnp.zeros((4, 2)), jnp.array([0.9]))
    with pytest.raises(ValueError, match="decreasing"):
        flowmaps.sample(flow, jnp.zeros((4, 2)), jnp.array([0.1, 0.9]))
    with pytest.raises(TypeError, match="flow"):  # a raw callable is not a bound FlowMap
        flowmaps.sample(gaussian_flow(path), jnp.zeros((4, 2)), jnp.array([0.9, 0.1]))


# -----------------------------------------------------------------------------------
# Consistency models
# -----------------------------------------------------------------------------------


def test_ict_curriculum_and_constants():
    """N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2(s1/s0) + 1)) (iCT Eq. 8)."""
    total = 400_000  # iCT's CIFAR-10 run: K' = 400000 // 8 = 50000
    steps = jnp.array([0, 49_999, 50_000, 100_000, 150_000, 349_999, 350_000, 399_999])
    np.testing.assert_array_equal(flowmaps.ict_num_scales(steps, total), [11, 11, 21, 41, 81, 641, 1281, 1281])
    # pseudo-Huber: c = 0.00054 sqrt(d) is 0.03 for 32x32x3 images (iCT Sec. 3.3)
    x = jnp.zeros((2, 32, 32, 3))
    y = x.at[1, 0, 0, 0].set(3.0)
    c = 0.00054 * math.sqrt(3072)
    np.testing.assert_allclose(flowmaps.pseudo_huber(x, y), [0.0, math.sqrt(9 + c * c) - c], rtol=1e-12)
    np.testing.assert_allclose(c, 0.0299, atol=1e-4)
    # Karras levels: ends exact, rho = 7
    s = flowmaps.karras_sigmas(jnp.arange(11), 11, 0.002, 80.0)
    np.testing.assert_allclose([s[0], s[-1]], [0.002, 80.0], rtol=1e-12)
    np.testing.assert_allclose(s[5], ((0.002 ** (1 / 7) + 80 ** (1 / 7)) / 2) ** 7, rtol=1e-12)


def test_ict_noise_level_probs_discretize_the_lognormal():
    """P(i) telescopes: the CDF at sigma_{i+1} is that of the lognormal (P_mean = -1.1, P_std = 2), renormalized."""
    from scipy.stats import norm

    n = 81
    p = flowmaps.ict_noise_level_probs(n, 0.002, 80.0)
    assert p.shape == (1280,) and float(jnp.sum(p[n - 1 :])) == 0.0
    s = flowmaps.karras_sigmas(np.arange(n), n, 0.002, 80.0)
    cdf = norm.cdf((np.log(s) + 1.1) / 2.0)
    expected = (cdf[1:] - cdf[0]) / (cdf[-1] - cdf[0])
    np.testing.assert_allclose(np.cumsum(np.asarray(p[: n - 1])), expected, rtol=1e-9)


def test_consistency_training_loss_pairs_levels_and_noise():
    """iCT on VE: adjacent Karras levels drawn as the lognormal says, one shared z, weight 1 / (s_{i+1} - s_i).

    Run eagerly with a flow map whose network records its inputs (x_in = c_in x), then recompute the
    loss by hand.
    """
    path, param = paths.VEGeometric(), flowmaps.DDIMDenoiser(0.5)
    net = tiny_net(jax.random.key(0), 2)
    f = flowmaps.FlowMap(net, path, param)
    seen = []

    def recording_net(x_in, t, s, cond=None):
        seen.append((x_in / param.scalings(path, t, s)[2][:, None], t, s))
        return net(x_in, t, s, cond)

    n = 4000
    x0 = jax.random.normal(jax.random.key(1), (n, 2))
    total, step = 80_000, 25_000  # K' = 10000: N = 10 * 4 + 1 = 41 levels
    flow = flowmaps.FlowMap(recording_net, path, param)
    loss = flowmaps.consistency_training_loss(flow, jax.random.key(2), x0, step=step, total_steps=total)
    (x_lo, t_lo, s_lo), (x_hi, t_hi, s_hi) = seen  # target first, then the online prediction
    assert float(jnp.max(s_lo)) == 0.0 and float(jnp.max(s_hi)) == 0.0  # maps to t_min (sigma_min = 0.002)
    sig_lo, sig_hi = path.sigma(t_lo), path.sigma(t_hi)
    levels = flowmaps.karras_sigmas(np.arange(41), 41, 0.002, 80.0)
    i = np.searchsorted(np.asarray(levels), np.asarray(sig_lo) * (1 + 1e-9)) - 1
    np.testing.assert_allclose(sig_lo, levels[i], rtol=1e-9)
    np.testing.assert_allclose(sig_hi, levels[i + 1], rtol=1e-9)
    # the same noise at both levels
    z_lo, z_hi = (x_lo - x0) / sig_lo[:, None], (x_hi - x0) / sig_hi[:, None]
    np.testing.assert_allclose(z_lo, z_hi, rtol=1e-8, atol=1e-8)
    # index frequencies match the discretized lognormal (chi-square, 39 dof: 99.9% quantile ~ 73)
    p = np.asarray(flowmaps.ict_noise_level_probs(41, 0.002, 80.0)[:40])
    counts = np.bincount(i, minlength=40)
    chi2 = np.sum((counts - n * p) ** 2 / np.maximum(n * p, 1e-9))
    assert chi2 < 73, chi2
    pseudo = flowmaps.pseudo_huber(f(x_hi, t_hi, 0.0), f(x_lo, t_lo, 0.0))
    expected = pseudo / (sig_hi - sig_lo)
    np.testing.assert_allclose(loss, expected, rtol=1e-9)
    assert float(jnp.min(pseudo)) > 0


@pytest.mark.parametrize("solver_name,order", [("Euler", 1), ("Heun", 2)])
def test_consistency_distillation_loss_is_the_teachers_local_error(solver_name, order):
    """With the exact consistency function as student, the CD loss is the teacher step's local error: O(h^(p+1)).

    Teacher: the oracle velocity of N(mu, sd^2 I) and one jdiff.samplers step; student and target:
    the closed-form flow map to t_min. The fitted slope of log mean loss against log N is -(p + 1).
    """
    path = paths.VEGeometric()
    teacher = flowmaps.solver_step(getattr(samplers, solver_name)(), gaussian_oracle().as_model(path, "velocity"))
    phi = gaussian_flow(path)
    flow = as_flow(phi, path)
    x0 = MU[None, :] + SD * jax.random.normal(jax.random.key(0), (N, 2))
    run = jax.jit(
        lambda k: flowmaps.consistency_distillation_loss(
            flow, jax.random.key(1), x0, teacher_step=teacher, num_scales=k, huber_c=0.0
        )
    )
    ns = np.array([40, 80, 160, 320])
    errs = [float(jnp.mean(run(k))) for k in ns]
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(slope + (order + 1)) < 0.25, (slope, errs)
    # the exact teacher step (the flow map itself) gives a zero loss
    exact = flowmaps.consistency_distillation_loss(
        flow, jax.random.key(1), x0, teacher_step=lambda x, t, s, c: phi(x, t, s)
    )
    assert float(jnp.max(exact)) < 1e-12


# -----------------------------------------------------------------------------------
# Shortcut models and progressive distillation
# -----------------------------------------------------------------------------------


def test_shortcut_self_consistency_vanishes_for_exact_average_velocity():
    """Two d-steps of the exact average velocity equal one 2d-step: the self-consistency loss is ~0.

    A recording wrapper checks the (t, s) the loss asks for: dyadic steps d = 2^j delta inside
    [t_min, t_max], and the three evaluations (t, t - d), (t - d, t - 2d), (t, t - 2d).
    """
    gm, path, _, u, _ = oracle()
    seen = []

    def net(x, t, s, cond=None):
        seen.append((t, s))
        return u(x, t, s)

    x0 = gm.sample(jax.random.key(0), N)
    loss = flowmaps.shortcut_loss(
        flowmaps.FlowMap(net, path), jax.random.key(1), x0, max_steps=16, consistency_fraction=1.0
    )
    assert loss.shape == (N,)
    assert float(jnp.max(loss)) < 1e-14, float(jnp.max(loss))
    (t1, s1), (t2, s2), (t3, s3) = seen
    delta = (path.t_max - path.t_min) / 16
    d = t1 - s1
    np.testing.assert_allclose(t2, s1, rtol=1e-14)
    np.testing.assert_allclose(t2 - s2, d, rtol=1e-12)
    np.testing.assert_allclose(t3, t1, rtol=0)
    np.testing.assert_allclose(t3 - s3, 2 * d, rtol=1e-12)
    j = np.log2(np.asarray(d) / delta)
    np.testing.assert_allclose(j, np.round(j), atol=1e-9)
    assert set(np.round(j).astype(int)) == {0, 1, 2, 3}
    assert float(jnp.max(t1)) <= path.t_max + 1e-12 and float(jnp.min(s3)) >= path.t_min - 1e-12
    # flow-matching examples (s = t): the exact velocity's loss is E||v - v_cond||^2 > 0, and
    # u(x, t, t) = v is the minimizer: a perturbed velocity does worse
    _, _, _, _, v = oracle()
    fm, worse = (
        flowmaps.shortcut_loss(
            flowmaps.FlowMap(lambda x, t, s, c, a=a: a * v(x, t), path), jax.random.key(1), x0, consistency_fraction=0.0
        )
        for a in (1.0, 1.1)
    )
    assert 0.05 < float(jnp.mean(fm)) < float(jnp.mean(worse))
    # the average-velocity losses need the AverageVelocity parameterization
    with pytest.raises(TypeError, match="AverageVelocity"):
        flowmaps.shortcut_loss(flowmaps.FlowMap(net, path, flowmaps.DDIMDenoiser()), jax.random.key(1), x0)
    with pytest.raises(TypeError, match="AverageVelocity"):
        flowmaps.meanflow_loss(flowmaps.FlowMap(net, path, flowmaps.DDIMDenoiser()), jax.random.key(1), x0)


def test_progressive_distillation_target_and_order():
    """x~ makes one DDIM step land on the teacher's two; a student equal to the teacher misses by O(h).

    Teacher: the oracle eps-model with jdiff.samplers.DDIM. One DDIM step with x0 = x~ reproduces the
    two teacher steps to rounding; with the teacher as student the x0 gap is the difference of the
    one- and two-step local errors, O(h^2) / O(h) = O(h): the mean loss / weight falls as N^-2.
    """
    gm, path = mixture_2d(), paths.VPCosine()
    model = gm.as_model(path, "eps")
    teacher = flowmaps.solver_step(samplers.DDIM(), model)
    x0 = gm.sample(jax.random.key(0), 256)
    t = jax.random.uniform(jax.random.key(1), (256,), minval=0.2, maxval=0.9)
    z, _ = path.marginal(jax.random.key(2), x0, t)

    @jax.jit
    def two_steps(z, t):
        z2 = teacher(teacher(z, t, t - 0.05), t - 0.05, t - 0.1)
        return z2, flowmaps.ddim_target(path, z, t, z2, t - 0.1)

    z2, x_tilde = two_steps(z, t)
    s = t - 0.1
    a_t, s_t, a_s, s_s = (c[:, None] for c in (path.alpha(t), path.sigma(t), path.alpha(s), path.sigma(s)))
    ddim = a_s * x_tilde + s_s * (z - a_t * x_tilde) / s_t  # one DDIM step with the denoiser x~
    np.testing.assert_allclose(ddim, z2, rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(x_tilde - model.x0(z, t)))) > 1e-3  # x~ is not the teacher's x0

    ns = np.array([8, 16, 32, 64])
    losses = jax.jit(
        lambda k: flowmaps.progressive_distillation_loss(
            model, jax.random.key(3), x0, teacher_step=teacher, num_student_steps=k
        )
    )
    errs = [float(jnp.mean(losses(k))) for k in ns]
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(slope + 2.0) < 0.3, (slope, errs)


# -----------------------------------------------------------------------------------
# A trained 2-D flow map
# -----------------------------------------------------------------------------------


def test_trained_shortcut_model_one_and_two_step_samples():
    """A tiny FlowMapMLP trained with the shortcut loss (1000 adam steps, cosine decay) on the 2-D mixture.

    Sliced 1-Wasserstein to 4000 fresh data points (Monte-Carlo floor between two data sets:
    ~0.02; the prior itself: 0.36): one step < 0.12, and two steps closer than one by 15%.
    Measured over 4 seeds: one step 0.068-0.077, two steps 0.047-0.056 (ratio 0.68-0.72).
    """
    import optax
    from flax import nnx

    from jdiff import metrics

    gm, path = mixture_2d(jnp.float32), paths.Linear()
    model = models.FlowMapMLP(2, hidden=64, depth=2, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(optax.cosine_decay_schedule(3e-3, 1000)), wrt=nnx.Param)

    def loss_fn(m, key, x0):
        return jnp.mean(flowmaps.shortcut_loss(flowmaps.FlowMap(m, path), key, x0, max_steps=32))

    @nnx.jit
    def train(model, opt, key):
        def body(i, carry):
            model, opt = carry
            k = jax.random.fold_in(key, i)
            x0 = gm.sample(jax.random.fold_in(k, 0), 256)
            grads = nnx.grad(loss_fn)(model, jax.random.fold_in(k, 1), x0)
            opt.update(model, grads)
            return model, opt

        nnx.fori_loop(0, 1000, body, (model, opt))

    train(model, opt, jax.random.key(0))
    f = flowmaps.FlowMap(model, path, flowmaps.AverageVelocity())
    data = gm.sample(jax.random.key(5), 4000)
    x_T = path.prior_sample(jax.random.key(7), (4000, 2))

    @jax.jit
    def sw(grid):
        x = flowmaps.sample(f, x_T, grid)
        return metrics.sliced_wasserstein(jax.random.key(8), x, data, p=1.0)

    one = float(sw(jnp.array([path.t_max, path.t_min], jnp.float32)))
    two = float(sw(jnp.array([path.t_max, 0.5, path.t_min], jnp.float32)))
    prior = float(metrics.sliced_wasserstein(jax.random.key(8), x_T, data, p=1.0))
    assert prior > 0.3, prior
    assert one < 0.12, (one, two)
    assert two < 0.85 * one, (one, two)
