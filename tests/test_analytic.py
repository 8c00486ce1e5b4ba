"""The Gaussian-mixture oracle against autodiff, Tweedie, Monte Carlo and quadrature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_paths, count_compiles, mixture_1d, mixture_2d

import jdiff
from jdiff import paths

PATHS = all_paths()


@pytest.mark.parametrize("name", PATHS)
def test_score_is_grad_log_prob_and_tweedie(name):
    gm, path = mixture_2d(), PATHS[name]
    xs = jax.random.normal(jax.random.key(0), (6, 2))
    for t in (path.t_min, 0.3, 0.7, path.t_max):
        t = jnp.float64(t)
        for x in xs:
            g = jax.grad(gm.marginal_log_prob)(x, t, path)
            np.testing.assert_allclose(gm.score(x, t, path), g, rtol=1e-8, atol=1e-10)
            # Tweedie: E[x0 | x_t] = (x_t + sigma^2 score) / alpha
            a, s = path.alpha(t), path.sigma(t)
            if a > 1e-3:
                np.testing.assert_allclose(gm.denoiser(x, t, path), (x + s**2 * g) / a, rtol=1e-7, atol=1e-8)
            for kind in ("eps", "v", "velocity", "score", "x0"):
                p = gm.predict(x, t, path, kind=kind)
                assert jnp.all(jnp.isfinite(p))


def test_class_conditional_consistency():
    gm, path = mixture_2d(), paths.VPLinear()
    x, t = jnp.array([0.2, -0.4]), jnp.float64(0.5)
    logpost = gm.class_log_posterior(x, t, path)
    np.testing.assert_allclose(jnp.exp(logpost).sum(), 1.0, rtol=1e-12)
    # Bayes: log p(x|c) + log p(c) - log p(x) = log p(c|x)
    prior = jnp.array([0.8, 0.2])
    for c in range(2):
        lhs = gm.marginal_log_prob(x, t, path, cond=c) + jnp.log(prior[c]) - gm.marginal_log_prob(x, t, path)
        np.testing.assert_allclose(lhs, logpost[c], rtol=1e-10)
        # conditional score = score + grad log p(c | x)
        gpost = jax.grad(lambda y, c=c: gm.class_log_posterior(y, t, path)[c])(x)
        np.testing.assert_allclose(gm.score(x, t, path, cond=c), gm.score(x, t, path) + gpost, rtol=1e-8, atol=1e-10)


def test_denoiser_monte_carlo():
    """E[x0 | x_t] by self-normalized importance sampling from the prior p_0."""
    gm, path = mixture_2d(), paths.VPLinear()
    x, t = jnp.array([0.5, 0.1]), jnp.float64(0.35)
    x0 = gm.sample(jax.random.key(1), 400_000)
    a, s = path.alpha(t), path.sigma(t)
    logw = -0.5 * jnp.sum((x[None, :] - a * x0) ** 2, axis=1) / s**2
    w = jax.nn.softmax(logw)
    mc = jnp.sum(w[:, None] * x0, axis=0)
    ess = 1.0 / jnp.sum(w**2)
    assert ess > 1000
    np.testing.assert_allclose(gm.denoiser(x, t, path), mc, atol=5 * 0.6 / jnp.sqrt(ess))


@pytest.mark.parametrize("t", [0.0, 0.2, 0.9])
def test_density_integrates_to_one_1d(t):
    gm, path = mixture_1d(), paths.VPLinear()
    grid = jnp.linspace(-12, 12, 20001)
    logp = jax.vmap(lambda x: gm.marginal_log_prob(x[None], jnp.float64(t), path))(grid)
    np.testing.assert_allclose(jnp.trapezoid(jnp.exp(logp), grid), 1.0, rtol=1e-8)


def test_data_log_prob_and_sampling_moments():
    gm = mixture_2d()
    x, comp = gm.sample(jax.random.key(2), 100_000, return_components=True)
    occ = jnp.bincount(comp, length=3) / comp.shape[0]
    np.testing.assert_allclose(occ, gm.weights, atol=5 * np.sqrt(0.25 / comp.shape[0]))
    for k in range(3):
        xk = x[comp == k]
        np.testing.assert_allclose(xk.mean(0), gm.means[k], atol=0.01)
        np.testing.assert_allclose(jnp.cov(xk.T), gm.covs[k], atol=0.005)
    p = jdiff.paths.VPLinear()
    np.testing.assert_allclose(gm.log_prob(x[0]), gm.marginal_log_prob(x[0], 0.0, p), rtol=1e-12)


def test_as_model_batched_and_no_recompile():
    gm, path = mixture_2d(), paths.VPLinear()
    exact = gm.as_model(path, "eps")
    model = jax.jit(lambda x, t: exact(x, t))
    x = jax.random.normal(jax.random.key(0), (8, 2))
    x2 = x + 1.0
    with count_compiles() as n:
        out1 = model(x, 0.3)
        model(x2, 0.6)
    assert n() == 1
    np.testing.assert_allclose(out1[3], gm.predict(x[3], 0.3, path, kind="eps"), rtol=1e-12)
    cond = jnp.array([0, 1] * 4)
    out = gm.as_model(path, "x0")(x, jnp.full((8,), 0.3), cond)
    np.testing.assert_allclose(out[1], gm.denoiser(x[1], 0.3, path, cond=1), rtol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="exactly one of `covs`"):
        jdiff.GaussianMixture(jnp.ones(2), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="`weights` must have shape"):
        jdiff.GaussianMixture(jnp.ones(3), jnp.zeros((2, 2)), stds=jnp.ones(2))
    gm = mixture_1d()
    with pytest.raises(ValueError, match="`x` must have shape"):
        gm.score(jnp.ones(2), 0.5, paths.VPLinear())
    with pytest.raises(ValueError, match="labels"):
        gm.class_log_posterior(jnp.ones(1), 0.5, paths.VPLinear())
