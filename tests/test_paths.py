"""Gaussian paths: SDE consistency, log-SNR inverse, float32 finiteness, closed forms, jit."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_paths, count_compiles

from experiments import _names
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
    for fn in (
        path.alpha,
        path.sigma,
        path.d_alpha,
        path.d_sigma,
        path.log_snr,
        path.d_log_snr,
        path.drift,
        path.diffusion2,
    ):
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
    assert isinstance(_names.get_path("vp"), paths.VPLinear)
    assert _names.get_path("ve", sigma_max=50.0).sigma_max == 50.0
    with pytest.raises(ValueError, match="accepted:.*vp.*linear"):
        _names.get_path("vpp")


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


# -- construction: positional schedule parameters, keyword-only time range, validation ---------

_POSITIONAL = {
    "VPLinear": ((0.2, 15.0), {"beta_min": 0.2, "beta_max": 15.0}),
    "SubVP": ((0.2, 15.0), {"beta_min": 0.2, "beta_max": 15.0}),
    "VPCosine": ((0.01,), {"s": 0.01}),
    "VEGeometric": ((0.01, 50.0), {"sigma_min": 0.01, "sigma_max": 50.0}),
    "EDM": ((0.01, 50.0), {"sigma_min": 0.01, "sigma_max": 50.0}),
    "Linear": ((), {}),
    "Trigonometric": ((), {}),
}


@pytest.mark.parametrize("name", list(_POSITIONAL))
def test_positional_and_keyword_construction_agree(name):
    cls = getattr(paths, name)
    args, kwargs = _POSITIONAL[name]
    assert cls(*args) == cls(**kwargs)
    # The time range is never positional: one argument more than the schedule has is an error.
    with pytest.raises(TypeError):
        cls(*args, 0.1)


def test_the_readme_call_sets_the_schedule_not_the_time_range():
    ve, vp = paths.VEGeometric(0.002, 80.0), paths.VPLinear(0.1, 20.0)
    assert (ve.sigma_min, ve.sigma_max, ve.t_min, ve.t_max) == (0.002, 80.0, 0.0, 1.0)
    assert (vp.beta_min, vp.beta_max, vp.t_min, vp.t_max) == (0.1, 20.0, 1e-5, 1.0)
    np.testing.assert_allclose(float(ve.prior_std()), 80.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ve.sigma(jnp.array([0.0, 1.0]))), [0.002, 80.0], rtol=1e-6)
    assert paths.VPLinear(0.1, 20.0, t_min=1e-3).t_min == 1e-3
    assert paths.LogSNRPath(lambda t: 4.0 - 8.0 * t, t_min=0.1).t_min == 0.1


def test_a_user_path_gets_a_keyword_only_time_range_too():
    class MyPath(paths.AbstractPath):
        scale: float = 1.0
        t_min: float = 0.01
        t_max: float = 0.99

        def alpha(self, t):
            return jnp.cos(0.5 * jnp.pi * t)

        def sigma(self, t):
            return self.scale * jnp.sin(0.5 * jnp.pi * t)

    assert MyPath(2.0).scale == 2.0 and MyPath(2.0).t_min == 0.01
    with pytest.raises(TypeError):
        MyPath(2.0, 0.1)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: paths.VEGeometric(80.0, 0.002), "sigma_max` must exceed `sigma_min"),
        (lambda: paths.VEGeometric(0.0, 80.0), "sigma_min` must be > 0"),
        (lambda: paths.EDM(1.0, 0.5), "sigma_max` must exceed `sigma_min"),
        (lambda: paths.VPLinear(-0.1, 20.0), "beta_min` must be >= 0"),
        (lambda: paths.VPLinear(0.1, 0.05), "beta_max` must exceed `beta_min"),
        (lambda: paths.SubVP(0.1, 0.1), "beta_max` must exceed `beta_min"),
        (lambda: paths.VPCosine(-0.1), "`s` must be >= 0"),
        (lambda: paths.VPLinear(t_min=0.5, t_max=0.2), "0 <= t_min < t_max <= 1"),
        (lambda: paths.VEGeometric(t_max=80.0), "0 <= t_min < t_max <= 1"),
        (lambda: paths.Trigonometric(t_min=-0.1), "0 <= t_min < t_max <= 1"),
        (lambda: paths.Linear(t_min=0.0), "log_snr is not finite"),
        (lambda: paths.VPCosine(t_max=1.0), "not finite|positive"),
        (lambda: paths.CustomPath(lambda t: t, lambda t: 1.0 - t), "log-SNR must decrease"),
        (lambda: paths.LogSNRPath(lambda t: jnp.log(t)), "log-SNR must decrease"),
    ],
)
def test_bad_path_parameters_raise_naming_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_traced_parameters_are_not_checked_but_still_work():
    # Inside vmap/grad the schedule parameters are tracers: construction must not try to check them.
    out = jax.vmap(lambda s: paths.VEGeometric(sigma_max=s).sigma(1.0))(jnp.array([10.0, 50.0]))
    np.testing.assert_allclose(out, [10.0, 50.0], rtol=1e-12)
    # Concrete parameters inside a jit trace are still checked (eagerly), and the path works.
    np.testing.assert_allclose(jax.jit(lambda: paths.EDM(0.01, 10.0).sigma(0.5))(), 5.0, rtol=1e-12)
    with pytest.raises(ValueError, match="log_snr is not finite"):
        jax.jit(lambda: paths.Linear(t_min=0.0).alpha(0.5))()


# -- the EDM path: jdiff's Euler and Heun are k-diffusion's / EDM's integrators ------------------


def _edm_reference(denoise, x, sigmas, heun):
    """k-diffusion's sample_euler / sample_heun (EDM Algorithm 1, no churn) in sigma, written out."""
    for s, s_next in itertools.pairwise(sigmas):
        d = (x - denoise(x, s)) / s
        x_e = x + (s_next - s) * d
        if heun and s_next > 0:
            d2 = (x_e - denoise(x_e, s_next)) / s_next
            x_e = x + (s_next - s) * 0.5 * (d + d2)
        x = x_e
    return x


@pytest.mark.parametrize("solver_name", ["euler", "heun"])
def test_edm_path_euler_and_heun_are_the_edm_integrators(solver_name):
    from helpers import mixture_2d

    from jdiff import samplers as S

    gm = mixture_2d()
    edm, ve = paths.EDM(0.002, 80.0), paths.VEGeometric(0.002, 80.0)
    n, rho = 12, 7.0
    # EDM's sigma schedule (Karras et al. 2022, eq. 5), written out, and the oracle's denoiser in sigma
    i = np.arange(n + 1) / n
    sigmas = (80.0 ** (1 / rho) + i * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    np.testing.assert_allclose(np.asarray(edm.sigma(S.karras_grid(edm, n, rho=rho))), sigmas, rtol=1e-12)

    def denoise(x, s):  # E[x0 | x0 + s eps = x] through the VE path at its time for s
        return jax.vmap(lambda xi: gm.denoiser(xi, ve.t_from_sigma(s), ve))(x)

    x = 80.0 * jax.random.normal(jax.random.PRNGKey(0), (16, 2), jnp.float64)
    want = _edm_reference(denoise, x, sigmas, heun=solver_name == "heun")
    solver = {"euler": S.Euler(), "heun": S.Heun()}[solver_name]
    got = S.sample(solver, gm.as_model(edm, "x0"), x, S.karras_grid(edm, n, rho=rho))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
