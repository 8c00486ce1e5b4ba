"""Flow maps against the exact flow map of the Gaussian-mixture oracle.

The reference is the exact flow map Phi(x, t, s): a float64 Dopri8 solve (rtol 1e-11) of
the oracle's PF-ODE from t to s. Every example gets its own (t, s) through the time change
tau in [0, 1] -> t + tau (s - t), so one batched solve serves a batch of jumps.
"""

import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_paths, mixture_1d, mixture_2d

import jdiff
from jdiff import flowmaps, paths


def exact_flow(gm, path, rtol=1e-10):
    """Phi(x, t, s, cond): the exact PF-ODE flow map of the mixture `gm` on `path` (jitted)."""
    vel = gm.as_model(path, "velocity")

    @jax.jit
    def f(x, t, s, cond=None):
        n = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (n,))
        s = jnp.broadcast_to(jnp.asarray(s, x.dtype), (n,))

        def vf(tau, y, args):
            return (s - t)[:, None] * vel(y, t + tau * (s - t))

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vf), diffrax.Dopri8(), 0.0, 1.0, 0.1, x,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
            adjoint=diffrax.ForwardMode(), max_steps=4096,
        )
        return sol.ys[-1]

    return f


def exact_average_velocity(gm, path):
    """u(z, t, r) = (z - Phi(z, t, r)) / (t - r), jdiff's (x, t, s) order."""
    phi = exact_flow(gm, path)

    @jax.jit
    def u(z, t, r, cond=None):
        return (z - phi(z, t, r)) / (t - r)[:, None]

    return u


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


@functools.lru_cache(maxsize=None)
def oracle():
    """(mixture, Linear path, exact flow map, exact average velocity, exact velocity), shared."""
    gm, path = mixture_2d(), paths.Linear()
    return gm, path, exact_flow(gm, path), exact_average_velocity(gm, path), jax.jit(gm.as_model(path, "velocity"))


PARAMS = {"avg_velocity": flowmaps.AverageVelocity(), "ddim_denoiser": flowmaps.DDIMDenoiser(0.5)}


# -----------------------------------------------------------------------------------
# Parameterization
# -----------------------------------------------------------------------------------


def test_boundary_condition_is_exact():
    """f(x, t, t) = x bit for bit, every path and parameterization, float32 and float64, at both ends."""

    @jax.jit
    def run():
        out = {}
        for dtype in (jnp.float32, jnp.float64):
            net = tiny_net(jax.random.key(0), 3)
            x = 3.0 * jax.random.normal(jax.random.key(1), (64, 3), dtype)
            for name, path in all_paths().items():
                t = jax.random.uniform(jax.random.key(2), (64,), dtype, path.t_min, path.t_max)
                t = t.at[0].set(path.t_min).at[1].set(path.t_max)
                for pname, param in PARAMS.items():
                    f = flowmaps.flow_map(net, path, param)
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
    """With F such that D is the oracle denoiser, f(x, t, s) is the oracle's DDIM step (first order in t - s)."""
    (gm, path, phi, _, _), sd = oracle(), 0.5
    den = gm.as_model(path, "x0")

    def net(x_in, t, s, cond=None):  # invert the EDM preconditioning around the exact denoiser
        pre = jdiff.predictions.edm_preconditioning(t, path, sd)
        x = x_in / pre.c_in[:, None]
        return (den(x, t) - pre.c_skip[:, None] * x) / pre.c_out[:, None]

    f = jax.jit(flowmaps.flow_map(net, path, flowmaps.DDIMDenoiser(sd)))
    x = gm.sample(jax.random.key(0), N)
    t = jnp.full((N,), 0.6)
    x_t, _ = path.marginal(jax.random.key(1), x, t)
    errs = []
    hs = np.array([0.04, 0.02, 0.01, 0.005])
    for h in hs:
        s = t - h
        errs.append(float(jnp.mean(jnp.linalg.norm(f(x_t, t, s) - phi(x_t, t, s), axis=1))))
    order = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(order - 2.0) < 0.2, (order, errs)  # DDIM's local error is O(h^2)


# -----------------------------------------------------------------------------------
# The exact flow map and the MeanFlow identity
# -----------------------------------------------------------------------------------


def test_exact_average_velocity_tends_to_velocity():
    """u(z, t, r) -> v(z, t) as r -> t, first order in t - r (fitted)."""
    gm, path, _, u, v = oracle()
    z = path.prior_sample(jax.random.key(0), (N, 2), jnp.float64)
    t = jnp.full((N,), 0.7)
    hs = np.array([0.08, 0.04, 0.02, 0.01])
    errs = [float(jnp.mean(jnp.linalg.norm(u(z, t, t - h) - v(z, t), axis=1))) for h in hs]
    order = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(order - 1.0) < 0.15, (order, errs)
    assert errs[-1] < 0.05


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


@pytest.mark.parametrize("guided", [False, True])
def test_meanflow_loss_jvp_equals_finite_differences(monkeypatch, guided):
    """The jvp-based loss equals the same loss with a central finite-difference derivative."""
    path, dim = paths.Trigonometric(), 3
    base = tiny_net(jax.random.key(0), dim)

    def net(x, t, s, cond=None):  # a class-dependent net (cond: (N,) labels in {0, 1, 2})
        c = 0.0 if cond is None else 0.3 * cond.astype(x.dtype)[:, None]
        return base(x + c, t, s) * (1.0 + t - s)[:, None]

    x0 = jax.random.normal(jax.random.key(1), (256, dim))
    kw = {}
    cond = None
    if guided:
        cond = jax.random.randint(jax.random.key(2), (256,), 0, 2)
        kw = dict(guidance_scale=2.0, guidance_kappa=0.5, null_cond=jnp.asarray(2), cond_drop_prob=0.1)
    key = jax.random.key(3)
    # p = 0: the raw squared error ||u - u_tgt||^2 (the adaptive weight would squash it to ~1).
    def loss():
        return flowmaps.meanflow_loss(net, path, key, x0, cond, fraction_r_neq_t=0.5, adaptive_p=0.0, **kw)

    loss_jvp = jax.jit(loss)()
    monkeypatch.setattr(flowmaps, "meanflow_target", _fd_meanflow_target)
    loss_fd = jax.jit(lambda: loss())()  # a new function object: traced again with the patch
    assert loss_jvp.shape == (256,)
    np.testing.assert_allclose(loss_jvp, loss_fd, rtol=1e-7, atol=1e-12)
    assert float(jnp.std(loss_jvp)) > 1e-2 * float(jnp.mean(loss_jvp))  # per-example, not constant


def test_meanflow_loss_adaptive_weight():
    """w ||Delta||^2 with w = 1 / (||Delta||^2 + c)^p: p = 0 is the plain squared error, p = 1 is < 1."""
    path = paths.Linear()
    net = tiny_net(jax.random.key(0), 2)
    x0 = jax.random.normal(jax.random.key(1), (N, 2))

    @jax.jit
    def run():
        kw = dict(adaptive_c=1e-3)
        return [flowmaps.meanflow_loss(net, path, jax.random.key(2), x0, adaptive_p=p, **kw) for p in (0.0, 1.0, 0.5)]

    plain, adapt, half = run()
    np.testing.assert_allclose(adapt, plain / (plain + 1e-3), rtol=1e-10)
    np.testing.assert_allclose(half, plain / jnp.sqrt(plain + 1e-3), rtol=1e-10)
    assert float(jnp.max(plain)) > 1e-2
