"""Gaussian paths: SDE consistency, log-SNR inverse, float32 finiteness, closed forms, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import all_paths, count_compiles

from jdiff import paths

PATHS = all_paths()


def _grid(path, n=41, dtype=jnp.float64):
    return jnp.linspace(path.t_min, path.t_max, n, dtype=dtype)


@pytest.mark.parametrize("name", PATHS)
def test_sde_consistency(name):
    """d/dt sigma^2 = 2 f sigma^2 + g^2 and d/dt log alpha = f, by autodiff of alpha and sigma."""
    path = PATHS[name]
    t = _grid(path)[1:-1]
    dsig2 = jax.vmap(jax.grad(lambda s: path.sigma(s) ** 2))(t)
    dlog_a = jax.vmap(jax.grad(lambda s: jnp.log(path.alpha(s))))(t)
    f, g2 = path.drift(t), path.diffusion2(t)
    np.testing.assert_allclose(dlog_a, f, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dsig2, 2 * f * path.sigma(t) ** 2 + g2, rtol=1e-8, atol=1e-10)
    assert jnp.all(g2 > 0), "g^2 must be positive on the open interval"


@pytest.mark.parametrize("name", PATHS)
def test_closed_form_derivatives_match_autodiff(name):
    path = PATHS[name]
    t = _grid(path)[1:-1]
    np.testing.assert_allclose(path.d_alpha(t), jax.vmap(jax.grad(path.alpha))(t), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(path.d_sigma(t), jax.vmap(jax.grad(path.sigma))(t), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(path.d_log_snr(t), jax.vmap(jax.grad(path.log_snr))(t), rtol=1e-7)


@pytest.mark.parametrize("name", PATHS)
def test_log_snr_inverse_and_monotone(name):
    path = PATHS[name]
    t = _grid(path)
    lam = path.log_snr(t)
    assert jnp.all(jnp.diff(lam) < 0), "log-SNR must decrease in t"
    np.testing.assert_allclose(lam, 2 * jnp.log(path.alpha(t) / path.sigma(t)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(path.t_from_log_snr(lam), t, atol=1e-9)


@pytest.mark.parametrize("name", PATHS)
def test_float32_finite_at_both_ends(name):
    path = PATHS[name]
    t = jnp.array([path.t_min, path.t_max], jnp.float32)
    for fn in (path.alpha, path.sigma, path.d_alpha, path.d_sigma, path.log_snr, path.d_log_snr, path.drift,
               path.diffusion2):
        v = fn(t)
        assert v.dtype == jnp.float32, fn.__name__
        assert jnp.all(jnp.isfinite(v)), (name, fn.__name__, v)
    assert jnp.all(jnp.isfinite(path.t_from_log_snr(path.log_snr(t))))


def test_closed_forms():
    t = jnp.array([0.1, 0.5, 0.9])
    vp = paths.VPLinear()
    # alpha_bar(t) = exp(-(b0 t + (b1 - b0) t^2 / 2))
    np.testing.assert_allclose(vp.alpha(t) ** 2, jnp.exp(-(0.1 * t + 19.9 * t**2 / 2)), rtol=1e-12)
    np.testing.assert_allclose(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, 1.0, rtol=1e-12)
    ve = paths.VEGeometric(sigma_min=0.01, sigma_max=50.0)
    np.testing.assert_allclose(ve.sigma(t), 0.01 * (50 / 0.01) ** t, rtol=1e-12)
    np.testing.assert_allclose(ve.t_from_sigma(ve.sigma(t)), t, rtol=1e-12)
    lin = paths.Linear()
    np.testing.assert_allclose(lin.log_snr(t), 2 * jnp.log((1 - t) / t), rtol=1e-12)
    cos = paths.VPCosine()
    s = 0.008
    abar = jnp.cos((t + s) / (1 + s) * jnp.pi / 2) ** 2 / jnp.cos(s / (1 + s) * jnp.pi / 2) ** 2
    np.testing.assert_allclose(cos.alpha(t) ** 2, abar, rtol=1e-10)
    sub = paths.SubVP()
    np.testing.assert_allclose(sub.sigma(t), 1 - vp.alpha(t) ** 2, rtol=1e-12)
    trig = paths.Trigonometric()
    np.testing.assert_allclose(trig.alpha(t), jnp.cos(jnp.pi * t / 2), rtol=1e-12)


@pytest.mark.parametrize("name", ["vp_linear", "ve", "linear"])
def test_marginal_moments(name):
    path = PATHS[name]
    x0 = jnp.full((200_000, 1), 0.7)
    xt, eps = path.marginal(jax.random.key(0), x0, 0.4)
    np.testing.assert_allclose(xt, path.alpha(0.4) * x0 + path.sigma(0.4) * eps)
    # mean and std of x_t | x0 within 5 standard errors
    n = x0.shape[0]
    assert abs(xt.mean() - path.alpha(0.4) * 0.7) < 5 * path.sigma(0.4) / np.sqrt(n)
    assert abs(xt.std() - path.sigma(0.4)) < 5 * path.sigma(0.4) / np.sqrt(2 * n)
    # per-example times broadcast over trailing axes
    t = jnp.linspace(0.1, 0.9, 4)
    xt, eps = path.marginal(jax.random.key(1), jnp.ones((4, 3, 2)), t)
    np.testing.assert_allclose(xt, path.alpha(t)[:, None, None] + path.sigma(t)[:, None, None] * eps)


def test_paths_are_pytrees_through_jit_grad_vmap():
    @jax.jit
    def f(path, t):
        return path.log_snr(t)

    t = jnp.float64(0.3)
    with count_compiles() as n:
        f(paths.VPLinear(), t).block_until_ready()
        f(paths.VPLinear(beta_min=0.2, beta_max=15.0), jnp.float64(0.6)).block_until_ready()
    assert n() == 1, "a new schedule parameter or time must not recompile"
    g = jax.grad(lambda b: paths.VPLinear(beta_max=b).log_snr(0.5))(20.0)
    # lambda = -B - log(1 - e^-B), dB/dbeta_max = t^2/2
    b = 0.1 * 0.5 + 0.5 * 19.9 * 0.25
    np.testing.assert_allclose(g, (-1 - jnp.exp(-b) / (1 - jnp.exp(-b))) * 0.125, rtol=1e-10)
    out = jax.vmap(lambda bm: paths.VPLinear(beta_max=bm).sigma(0.5))(jnp.array([10.0, 20.0]))
    assert out.shape == (2,)


def test_get_path_errors():
    assert isinstance(paths.get_path("vp"), paths.VPLinear)
    assert paths.get_path("ve", sigma_max=50.0).sigma_max == 50.0
    with pytest.raises(ValueError, match="accepted names:.*linear.*vp"):
        paths.get_path("vpp")


def test_expand_to_shape_error():
    with pytest.raises(ValueError, match="`t` has shape"):
        paths.VPLinear().marginal(jax.random.key(0), jnp.ones((4, 2)), jnp.ones((3,)))


def test_prior():
    path = paths.VEGeometric()
    x = path.prior_sample(jax.random.key(0), (50_000, 2))
    np.testing.assert_allclose(x.std(), 80.0, rtol=0.01)
    xt = jnp.array([1.0, -2.0])
    ref = jax.scipy.stats.norm.logpdf(xt, scale=80.0).sum()
    np.testing.assert_allclose(path.prior_log_prob(xt), ref, rtol=1e-12)
