"""Prediction conversions: round trips for every path x kind, float32 ends, PF-ODE, EDM scalings."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_paths, count_compiles, mixture_2d

import jdiff
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
        np.testing.assert_allclose(
            epsr, eps, rtol=1e-6, atol=1e-6 * (1 + jnp.max(jnp.abs(1 / s))), err_msg=f"{ka}->{kb}"
        )
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
    model = gm.as_model(path, "eps")
    xb = x[None]
    u = model.velocity(xb, t)[0]
    score = gm.score(x, t, path)
    np.testing.assert_allclose(u, path.drift(t) * x - 0.5 * path.diffusion2(t) * score, rtol=1e-10)
    drift, diff = model.reverse_sde(xb, t, churn=1.0)
    np.testing.assert_allclose(drift[0], path.drift(t) * x - path.diffusion2(t) * score, rtol=1e-10)
    np.testing.assert_allclose(diff, jnp.sqrt(path.diffusion2(t)))
    drift0, diff0 = model.reverse_sde(xb, t, churn=0.0)
    np.testing.assert_allclose(drift0[0], u, rtol=1e-12)
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
    x, t = jnp.ones((3, 2)), jnp.array([0.1, 0.5, 0.9])
    c = predictions.edm_preconditioning(t, path)
    den = jdiff.edm_denoiser(lambda x, c_noise, cond: jnp.zeros_like(x), path)
    assert den.kind == "x0" and den.path is path
    np.testing.assert_allclose(den(x, t), c.c_skip[:, None] * x)
    # F = the ideal target (x0 - c_skip x) / c_out of x0 = 0 for every input: the denoiser is then 0.
    ones = jdiff.edm_denoiser(lambda x_in, c_noise, cond: jnp.ones_like(x_in), path)
    np.testing.assert_allclose(ones(x, t), c.c_skip[:, None] * x + c.c_out[:, None])


def test_bound_model_gives_every_view_of_one_field():
    gm, path = mixture_2d(), paths.Trigonometric()
    eps_model = gm.as_model(path, "eps")
    x = jax.random.normal(jax.random.key(3), (5, 2))
    for kind in predictions.KINDS:
        exact = gm.as_model(path, kind)(x, 0.4)
        np.testing.assert_allclose(eps_model.as_kind(kind)(x, 0.4), exact, rtol=1e-9, atol=1e-12, err_msg=kind)
        np.testing.assert_allclose(eps_model.predict(x, 0.4, kind=kind), exact, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(eps_model.x0(x, 0.4), jax.vmap(lambda xi: gm.denoiser(xi, 0.4, path))(x), rtol=1e-9)
    np.testing.assert_allclose(eps_model.score(x, 0.4), jax.vmap(lambda xi: gm.score(xi, 0.4, path))(x), rtol=1e-9)
    assert eps_model.as_kind("eps") is eps_model
    assert eps_model.as_kind("v").kind == "v" and eps_model.as_kind("v").path is path


def test_bound_model_is_a_pytree_for_jit_vmap_and_grad():
    # A Model passes through jax.jit as an argument (no recompile for new leaves), and jax.grad
    # reaches the parameters of the network inside it.
    path = paths.VPLinear()

    class Net(eqx.Module):
        w: jax.Array

        def __call__(self, x, t, cond=None):
            return self.w * x

    run = jax.jit(lambda m, x: m.x0(x, 0.5))
    x = jnp.ones((3, 2))
    with count_compiles() as n:
        y1 = run(jdiff.Model(Net(jnp.asarray(0.5)), path, "eps"), x)
        y2 = run(jdiff.Model(Net(jnp.asarray(0.25)), path, "eps"), x)
    assert n() == 1
    a, s = path.alpha(0.5), path.sigma(0.5)
    np.testing.assert_allclose(y1, (x - s * 0.5 * x) / a, rtol=1e-12)
    np.testing.assert_allclose(y2, (x - s * 0.25 * x) / a, rtol=1e-12)
    g = jax.grad(lambda m: jnp.sum(m.x0(x, 0.5)))(jdiff.Model(Net(jnp.asarray(0.5)), path, "eps"))
    np.testing.assert_allclose(g.net.w, -jnp.sum(s * x / a), rtol=1e-12)  # d/dw of sum (x - s w x) / a
    # A plain function is static data: still a valid jit argument.
    fm = jdiff.Model(lambda x, t, c: 0.5 * x, path, "eps")
    np.testing.assert_allclose(run(fm, x), y1, rtol=1e-12)
    out = jax.vmap(lambda w: jdiff.Model(Net(w), path, "eps").x0(x, 0.5))(jnp.array([0.5, 0.25]))
    np.testing.assert_allclose(out, jnp.stack([y1, y2]), rtol=1e-12)


def test_bound_model_keeps_the_sample_dtype():
    # A float64 network on a float32 batch (and a bfloat16 one) returns x's dtype: the model
    # boundary decides the precision, not the network.
    path = paths.VPLinear()
    x = jnp.ones((2, 2), jnp.float32)
    m64 = jdiff.Model(lambda x, t, c: jnp.asarray(x, jnp.float64), path, "eps")
    mbf = jdiff.Model(lambda x, t, c: x.astype(jnp.bfloat16), path, "eps")
    assert m64(x, 0.5).dtype == jnp.float32 and mbf(x, 0.5).dtype == jnp.float32


def test_bad_kind_and_shapes():
    path = paths.VPLinear()
    with pytest.raises(ValueError, match="accepted: eps, x0, v, score, velocity"):
        predictions.convert(jnp.ones(2), "noise", "x0", jnp.ones(2), 0.5, path)
    with pytest.raises(ValueError, match="`to_kind`"):
        predictions.convert(jnp.ones(2), "eps", "data", jnp.ones(2), 0.5, path)
    with pytest.raises(ValueError, match="`pred` has shape"):
        predictions.convert(jnp.ones(3), "eps", "x0", jnp.ones(2), 0.5, path)
    with pytest.raises(ValueError, match="`pred` has shape"):  # also when no conversion is needed
        predictions.convert(jnp.ones((2, 1)), "eps", "eps", jnp.ones((2, 2)), 0.5, path)
    with pytest.raises(TypeError, match="jdiff path"):
        jdiff.Model(lambda x, t, c: x, "vp", "eps")
    with pytest.raises(ValueError, match="accepted: eps, x0"):
        jdiff.Model(lambda x, t, c: x, path, "noise")
    with pytest.raises(ValueError, match="returned shape"):
        jdiff.Model(lambda x, t, c: x[:, :1], path, "eps").x0(jnp.ones((4, 2)), 0.5)
    with pytest.raises(ValueError, match="`t` has shape"):
        predictions.convert(jnp.ones((4, 2)), "eps", "x0", jnp.ones((4, 2)), jnp.ones(3), path)
