"""Prediction conversions: round trips for every path x kind, float32 ends, PF-ODE, EDM scalings."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import all_paths, mixture_2d

from jdiff import paths, predictions
from jdiff.predictions import KINDS

PATHS = all_paths()


@pytest.mark.parametrize("name", PATHS)
def test_round_trips_every_pair(name):
    """(x0, eps) -> kind A -> kind B -> (x0, eps) recovers the pair, for random t in the path's range."""
    path = PATHS[name]
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    n = 64
    x0 = jax.random.normal(k1, (n, 3))
    eps = jax.random.normal(k2, (n, 3))
    t = jax.random.uniform(k3, (n,), minval=path.t_min, maxval=path.t_max)
    t = t.at[:2].set(jnp.array([path.t_min, path.t_max]))
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    x = a * x0 + s * eps
    for ka, kb in itertools.product(KINDS, KINDS):
        pa = predictions.from_x0_eps(x0, eps, ka, x, t, path)
        pb = predictions.convert(pa, ka, kb, x, t, path)
        x0r, epsr = predictions.to_x0_eps(pb, kb, x, t, path)
        # conversions divide by a or s near the ends: compare with scale-aware tolerances
        np.testing.assert_allclose(epsr, eps, rtol=1e-6, atol=1e-6 * (1 + jnp.max(jnp.abs(1 / s))), err_msg=f"{ka}->{kb}")
        np.testing.assert_allclose(a * x0r, a * x0, rtol=1e-6, atol=1e-6, err_msg=f"{ka}->{kb}")


@pytest.mark.parametrize("name", PATHS)
def test_float32_finite_at_ends(name):
    path = PATHS[name]
    x = jnp.array([[0.3, -1.2], [1.5, 0.2]], jnp.float32)
    pred = jnp.array([[0.1, 0.4], [-0.7, 0.9]], jnp.float32)
    for t in (path.t_min, path.t_max):
        t = jnp.float32(t)
        for ka, kb in itertools.product(KINDS, KINDS):
            out = predictions.convert(pred, ka, kb, x, t, path)
            assert out.dtype == jnp.float32
            assert jnp.all(jnp.isfinite(out)), (name, float(t), ka, kb)


def test_linear_path_velocity_closed_forms():
    """Rectified flow: u = eps - x0, x0 = x - t u, v = ..."""
    path = paths.Linear()
    x0, eps, t = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.3]), jnp.float64(0.25)
    x = (1 - t) * x0 + t * eps
    u = predictions.from_x0_eps(x0, eps, "velocity", x, t, path)
    np.testing.assert_allclose(u, eps - x0)
    np.testing.assert_allclose(predictions.convert(u, "velocity", "x0", x, t, path), x - t * u)
    np.testing.assert_allclose(predictions.convert(u, "velocity", "eps", x, t, path), x + (1 - t) * u)


def test_oracle_velocity_solves_pf_ode_to_the_marginal():
    """The PF-ODE velocity from an eps prediction matches f x - g^2/2 score (the SDE form)."""
    gm, path = mixture_2d(), paths.VPLinear()
    x, t = jnp.array([0.4, -0.3]), jnp.float64(0.37)
    eps = gm.predict("eps", x, t, path)
    u = predictions.pf_ode_velocity(eps, "eps", x, t, path)
    score = gm.score(x, t, path)
    np.testing.assert_allclose(u, path.drift(t) * x - 0.5 * path.diffusion2(t) * score, rtol=1e-10)
    drift, diff = predictions.reverse_sde(eps, "eps", x, t, path, churn=1.0)
    np.testing.assert_allclose(drift, path.drift(t) * x - path.diffusion2(t) * score, rtol=1e-10)
    np.testing.assert_allclose(diff, jnp.sqrt(path.diffusion2(t)))
    drift0, diff0 = predictions.reverse_sde(eps, "eps", x, t, path, churn=0.0)
    np.testing.assert_allclose(drift0, u, rtol=1e-12)
    assert diff0 == 0


@pytest.mark.parametrize("name", ["ve", "vp_linear", "linear"])
def test_edm_preconditioning(name):
    """On VE, the scalings are EDM's Table 1; on every path, c_skip x + c_out target = x0 has unit-variance target."""
    path = PATHS[name]
    t = jnp.linspace(path.t_min, path.t_max, 7)
    sd = 0.5
    c = predictions.edm_preconditioning(t, path, sd)
    if name == "ve":
        sig = path.sigma(t)
        np.testing.assert_allclose(c.c_skip, sd**2 / (sig**2 + sd**2), rtol=1e-12)
        np.testing.assert_allclose(c.c_out, sig * sd / jnp.sqrt(sig**2 + sd**2), rtol=1e-12)
        np.testing.assert_allclose(c.c_in, 1 / jnp.sqrt(sig**2 + sd**2), rtol=1e-12)
        np.testing.assert_allclose(c.c_noise, jnp.log(sig) / 4, rtol=1e-12)
    # unit variance of the network input and of its training target for data of std sd
    a, s = path.alpha(t), path.sigma(t)
    np.testing.assert_allclose(c.c_in**2 * (a**2 * sd**2 + s**2), 1.0, rtol=1e-12)
    var_target = ((1 - c.c_skip * a) ** 2 * sd**2 + (c.c_skip * s) ** 2) / c.c_out**2
    np.testing.assert_allclose(var_target, 1.0, rtol=1e-9)


def test_edm_denoiser_wraps_network():
    path = paths.VEGeometric()
    net = lambda x, c_noise, cond: jnp.zeros_like(x)
    den = predictions.edm_denoiser(net, path)
    x, t = jnp.ones((3, 2)), jnp.array([0.1, 0.5, 0.9])
    c = predictions.edm_preconditioning(t, path)
    np.testing.assert_allclose(den(x, t), c.c_skip[:, None] * x)


def test_as_kind():
    gm, path = mixture_2d(), paths.Trigonometric()
    eps_model = gm.as_model(path, "eps")
    x0_model = predictions.as_kind(eps_model, "eps", "x0", path)
    x = jax.random.normal(jax.random.key(3), (5, 2))
    np.testing.assert_allclose(x0_model(x, 0.4), gm.as_model(path, "x0")(x, 0.4), rtol=1e-9, atol=1e-12)
    assert predictions.as_kind(eps_model, "eps", "eps", path) is eps_model


def test_bad_kind_and_shapes():
    path = paths.VPLinear()
    with pytest.raises(ValueError, match="accepted: eps, x0, v, score, velocity"):
        predictions.convert(jnp.ones(2), "noise", "x0", jnp.ones(2), 0.5, path)
    with pytest.raises(ValueError, match="`to_kind`"):
        predictions.convert(jnp.ones(2), "eps", "data", jnp.ones(2), 0.5, path)
    with pytest.raises(ValueError, match="`pred` has shape"):
        predictions.convert(jnp.ones(3), "eps", "x0", jnp.ones(2), 0.5, path)
    with pytest.raises(ValueError, match="`t` has shape"):
        predictions.convert(jnp.ones((4, 2)), "eps", "x0", jnp.ones((4, 2)), jnp.ones(3), path)
