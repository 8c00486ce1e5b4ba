"""jdiff.likelihood against the Gaussian-mixture oracle and closed forms."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mixture_2d
from scipy import stats

from jdiff import Model, likelihood, paths
from jdiff.likelihood import Hutchinson

MIX = mixture_2d()
X = MIX.sample(jax.random.PRNGKey(0), 3)


def _exact(path, t, x=X):
    return jax.vmap(lambda z: MIX.marginal_log_prob(z, t, path))(x)


def _exact_prior(path):
    return lambda z: MIX.marginal_log_prob(z, path.t_max, path)


@pytest.mark.parametrize(
    "path, kind", [(paths.VPLinear(), "eps"), pytest.param(paths.VEGeometric(), "x0", marks=pytest.mark.slow)]
)
def test_exact_trace_matches_oracle(path, kind):
    # Integrating only to t_max and using the oracle's exact log p_{t_max} as the prior makes
    # the estimator exact up to the solver tolerance, so the error must be at solver level.
    # The batch is vmapped: each example keeps its own steps (different NFE).
    ll = jax.jit(
        lambda x: likelihood.ode_log_likelihood_batch(
            MIX.as_model(path, kind), x, rtol=1e-9, atol=1e-9, prior_log_prob=_exact_prior(path)
        )
    )(X)
    err = np.abs(np.asarray(ll.log_prob - _exact(path, path.t_min)))
    assert err.max() < 1e-6, err  # measured ~2e-9 (vp), ~4e-9 (ve)
    assert len(set(np.asarray(ll.nfe).tolist())) > 1, ll.nfe


def test_hutchinson_unbiased_with_the_closed_form_variance():
    # Probes are fixed along a solve, so a single-probe estimate is log p_T + v^T A v with
    # A = int J dt along the (probe-independent) trajectory. Basis probes e1, e2, e1 + e2
    # recover S = (A + A^T)/2 exactly; then the estimator's mean is log p_T + tr S (= exact)
    # and its variance is 2 |S|_F^2 (Gaussian) or 2 (|S|_F^2 - sum S_ii^2) (Rademacher).
    path = paths.VPCosine()
    model = MIX.as_model(path, "score")
    x = X[0]
    exact = float(MIX.marginal_log_prob(x, path.t_min, path))
    n = 400
    solve = jax.jit(
        jax.vmap(
            lambda v: (
                likelihood.ode_log_likelihood(
                    model,
                    x,
                    divergence=Hutchinson(),
                    probes=v,
                    rtol=1e-8,
                    atol=1e-8,
                    prior_log_prob=_exact_prior(path),
                ).log_prob
            )
        )
    )
    kr, kg = jax.random.split(jax.random.PRNGKey(1))
    basis = jnp.array([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
    rad = Hutchinson(n, "rademacher").sample(kr, (1, 2), x.dtype)
    gau = Hutchinson(n, "gaussian").sample(kg, (1, 2), x.dtype)
    out = np.asarray(solve(jnp.concatenate([basis, rad, gau])))
    log_pt, (a11, a22, a_sum) = out[0], out[1:4] - out[0]
    s12 = 0.5 * (a_sum - a11 - a22)
    assert log_pt + a11 + a22 == pytest.approx(exact, abs=1e-6)  # tr S is the divergence integral
    var = {"rademacher": 2 * (2 * s12**2), "gaussian": 2 * (a11**2 + a22**2 + 2 * s12**2)}
    for name, est in (("rademacher", out[4 : 4 + n]), ("gaussian", out[4 + n :])):
        se = math.sqrt(var[name] / n)
        assert abs(est.mean() - exact) < 4 * se, (name, est.mean(), exact, se)
        # Sample variance of n = 400 draws: relative sd ~ 0.1 (Rademacher) to 0.2 (Gaussian).
        assert est.var(ddof=1) == pytest.approx(var[name], rel=0.4), (name, est.var(ddof=1), var[name])


@pytest.mark.slow
def test_hutchinson_num_probes_divides_the_variance():
    # num_probes = 4 drawn from keys: unbiased, variance ~ 1/4 of the single-probe one,
    # measured against the single-Gaussian-probe sample variance (slow: two more solves).
    path = paths.VPCosine()
    model = MIX.as_model(path, "score")
    x = X[0]
    exact = float(MIX.marginal_log_prob(x, path.t_min, path))
    m = 200

    def estimates(num_probes, seed):
        def one(k):
            divergence = Hutchinson(num_probes=num_probes, probe="gaussian")
            return likelihood.ode_log_likelihood(
                model, x, key=k, divergence=divergence, rtol=1e-8, atol=1e-8, prior_log_prob=_exact_prior(path)
            ).log_prob

        return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(seed), m)))

    est4, est1 = estimates(4, 2), estimates(1, 3)
    se4 = math.sqrt(est4.var(ddof=1) / m)
    assert abs(est4.mean() - exact) < 4 * se4, (est4.mean(), exact, se4)
    assert 2.0 < est1.var(ddof=1) / est4.var(ddof=1) < 8.0


def _counting(model, calls):
    """`model` with a host callback that counts every network call (io_callback: never merged or dropped)."""

    def counted(x, t, cond):
        jax.experimental.io_callback(lambda: calls.append(1), None, ordered=True)
        return model(x, t, cond)

    return Model(counted, model.path, model.kind)


def test_default_prior_float32_image_shaped_and_nfe():
    # The path's own N(0, sigma(t_max)^2) prior adds only the prior mismatch, negligible on
    # the linear path (alpha(t_max) = 1e-4): within 1e-3 nats of the exact log p_{t_min} in
    # float32 (measured ~1e-4). Data of shape (1, 2, 1) are reshaped for the trace; the
    # result stays float32. NFE of the FSAL solver (Tsit5), counted by
    # samplers.diffrax_evals, equals the model calls counted by a callback: one per
    # evaluation of the augmented field (the jacfwd of the exact trace and the jvps of
    # Hutchinson's probes share the primal call).
    path = paths.Linear()
    base = MIX.as_model(path, "velocity")
    calls = []
    model = _counting(
        Model(lambda x, t, c: base(x.reshape(x.shape[0], 2), t, c).reshape(x.shape), path, "velocity"), calls
    )
    x = X[0].astype(jnp.float32).reshape(1, 2, 1)
    ll = jax.block_until_ready(likelihood.ode_log_likelihood(model, x, rtol=1e-6, atol=1e-6))
    assert ll.log_prob.dtype == jnp.float32
    assert abs(float(ll.log_prob) - float(_exact(path, path.t_min, X[:1])[0])) < 1e-3
    assert len(calls) == int(ll.nfe), (len(calls), ll.nfe)
    calls.clear()
    ll = jax.block_until_ready(
        likelihood.ode_log_likelihood(
            model, x, key=jax.random.PRNGKey(0), divergence=Hutchinson(3), rtol=1e-3, atol=1e-3
        )
    )
    assert len(calls) == int(ll.nfe), (len(calls), ll.nfe)


@pytest.mark.slow
def test_nfe_counts_evaluations_non_fsal():
    path = paths.Linear()
    calls = []
    model = _counting(MIX.as_model(path, "velocity"), calls)
    ll = jax.block_until_ready(likelihood.ode_log_likelihood(model, X[0], solver=diffrax.Heun(), rtol=1e-3, atol=1e-3))
    assert len(calls) == int(ll.nfe), (len(calls), ll.nfe)


def test_forward_mode_gradient_is_the_score():
    # d/dx log p_{t_min}(x) through the ODE solve equals the oracle's score at t_min.
    path = paths.Trigonometric()
    model = MIX.as_model(path, "v")
    f = lambda x: (
        likelihood.ode_log_likelihood(
            model, x, rtol=1e-9, atol=1e-9, prior_log_prob=_exact_prior(path), adjoint=diffrax.ForwardMode()
        ).log_prob
    )
    g = jax.jit(jax.jacfwd(f))(X[0])
    np.testing.assert_allclose(g, MIX.score(X[0], path.t_min, path), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_reverse_mode_gradient_is_the_score():
    # The default adjoint (RecursiveCheckpointAdjoint), vmapped over examples: what training
    # on the likelihood uses. (Slow: ~20 s of compilation; the forward-mode test covers the maths.)
    path = paths.Trigonometric()
    model = MIX.as_model(path, "v")
    f = lambda x: (
        likelihood.ode_log_likelihood(model, x, rtol=1e-9, atol=1e-9, prior_log_prob=_exact_prior(path)).log_prob
    )
    g = jax.jit(jax.vmap(jax.grad(f)))(X[:2])
    score = jax.vmap(lambda z: MIX.score(z, path.t_min, path))(X[:2])
    np.testing.assert_allclose(g, score, rtol=1e-5, atol=1e-5)


def test_bad_arguments_name_themselves():
    path = paths.Linear()
    model = MIX.as_model(path, "x0")
    net = lambda x, t, c: x
    key = jax.random.PRNGKey(0)
    # An unbound network where a jdiff.Model is expected.
    for fn in (
        lambda m: likelihood.ode_log_likelihood(m, X[0]),
        lambda m: likelihood.ode_log_likelihood_batch(m, X),
        lambda m: likelihood.vlb_bits_per_dim(m, key, X),
        lambda m: likelihood.elbo_bits_per_dim(m, key, X),
    ):
        with pytest.raises(TypeError, match="`model` must be a jdiff.Model"):
            fn(net)
    # The former string forms are refused with the accepted values.
    with pytest.raises(TypeError, match="divergence.*Hutchinson"):
        likelihood.ode_log_likelihood(model, X[0], divergence="hutchinson")
    with pytest.raises(ValueError, match="key"):
        likelihood.ode_log_likelihood(model, X[0], divergence=Hutchinson())
    with pytest.raises(ValueError, match="probe.*rademacher, gaussian"):
        Hutchinson(probe="sphere")
    with pytest.raises(ValueError, match="num_probes"):
        Hutchinson(num_probes=0)
    with pytest.raises(ValueError, match="probes.*Hutchinson"):
        likelihood.ode_log_likelihood(model, X[0], probes=jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="probes.*shape"):
        likelihood.ode_log_likelihood(model, X[0], divergence=Hutchinson(2), probes=jnp.ones((1, 2)))
    with pytest.raises(TypeError, match="solver.*SDE"):
        likelihood.ode_log_likelihood(model, X[0], solver=diffrax.ShARK())
    with pytest.raises(ValueError, match="solver"):
        likelihood.ode_log_likelihood(model, X[0], solver=diffrax.Kvaerno5())
    with pytest.raises(ValueError, match="num_time_samples"):
        likelihood.elbo_bits_per_dim(model, key, X, num_time_samples=0)
    with pytest.raises(ValueError, match="bin_width"):
        likelihood.bits_per_dim(jnp.zeros(()), 3, bin_width=0.0)


# -- units --------------------------------------------------------------------------


def test_uniform_density_is_exactly_8_bits():
    # q_x uniform on [-1, 1]^D has log q_x = -D log 2; the discrete distribution it induces
    # on 256 levels is uniform, so bits/dim must be exactly log2(256) = 8.
    d = 12
    assert float(likelihood.bits_per_dim(jnp.asarray(-d * math.log(2.0)), d)) == pytest.approx(8.0, abs=1e-12)
    # And data in [0, 1] (h = 1/256) with q uniform on [0, 1]: log q = 0 -> 8 bits.
    assert float(likelihood.bits_per_dim(jnp.asarray(0.0), (2, 3, 2), bin_width=1 / 256)) == pytest.approx(8.0)


def test_dequantized_gaussian_bound_matches_discrete_probability():
    # A Gaussian density q_x = N(m, s^2) on the scaled axis, 8-bit levels k. The exact
    # discrete probability is P(k) = Phi((b - m)/s) - Phi((a - m)/s) over the bin [a, b).
    # E_u log q_x(x) has a closed form (E over a uniform bin of (x - m)^2), so the
    # dequantized bits/dim is exact; it must bound -log2 P(k) from above with the Jensen
    # gap log E_u q - E_u log q ~ Var_u[log q] / 2 = (c - m)^2 h^2 / (24 s^4) nats (bin centre c).
    h, m, s = 2 / 256, 0.1, 0.05
    k = np.arange(100, 140)
    a, b = -1 + k * h, -1 + (k + 1) * h
    c = 0.5 * (a + b)
    e_sq = (c - m) ** 2 + h**2 / 12  # E_u (x - m)^2 for x uniform on [a, b)
    e_logq = -0.5 * e_sq / s**2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    bpd = np.asarray(likelihood.bits_per_dim(jnp.asarray(e_logq), 1))
    exact_bits = -np.log2(stats.norm.cdf((b - m) / s) - stats.norm.cdf((a - m) / s))
    gap = bpd - exact_bits
    assert np.all(gap >= -1e-12)
    # Measured: within 1% of the leading-order gap (up to 0.04 nats), 4e-5 nats at c = m.
    np.testing.assert_allclose(gap * math.log(2), (c - m) ** 2 * h**2 / (24 * s**4), rtol=0.02, atol=1e-4)


def test_dequantize_range_and_mean():
    # (float64: in float32, k + u rounds up to k + 1 with probability ~ k 2^-24.)
    k = jnp.arange(256)[None, :].repeat(400, 0)
    x = likelihood.dequantize(jax.random.PRNGKey(0), k, dtype=jnp.float64)
    assert float(x.min()) >= -1.0 and float(x.max()) < 1.0
    bins = np.floor((np.asarray(x) + 1) * 128).astype(int)
    np.testing.assert_array_equal(bins, np.asarray(k))
    # u is uniform: the mean offset within a bin is 1/2 bin.
    assert abs(float(jnp.mean((x + 1) * 128 - k)) - 0.5) < 0.01


# -- variational bounds in bits/dim ---------------------------------------------------


def test_vlb_and_elbo_bound_the_exact_nll_and_tighten_with_steps():
    # Oracle eps-model on VP-linear (t_min = 1e-3, so the density decoder at t_min is
    # well conditioned), continuous mixture data, density decoder (num_bins=None). The bounds
    # hold in expectation over the data: mean(-ELBO) >= mean(-log p_0(x0)) = cross-entropy.
    # Converting bits/dim back to nats also checks the scaling offset of the density term.
    path = paths.VPLinear(t_min=1e-3)
    model = MIX.as_model(path, "eps")
    x0 = MIX.sample(jax.random.PRNGKey(0), 1000)
    nll = -np.asarray(jax.vmap(MIX.log_prob)(x0))
    d, h = 2, likelihood.BIN_WIDTH_8BIT

    def to_nats(bits):
        return np.asarray(bits) * d * math.log(2) + d * math.log(h)

    @jax.jit
    def bounds(key):
        k1, k2, k3 = jax.random.split(key, 3)
        vlb = [
            likelihood.vlb_bits_per_dim(model, k, x0, num_steps=t, num_bins=None).total
            for k, t in ((k1, 32), (k2, 256))
        ]
        elbo = likelihood.elbo_bits_per_dim(model, k3, x0, num_time_samples=32, num_bins=None).total
        return vlb + [elbo]

    gaps = [to_nats(b) - nll for b in bounds(jax.random.PRNGKey(1))]
    mean = [g.mean() for g in gaps]
    se = [g.std(ddof=1) / math.sqrt(g.size) for g in gaps]
    # Gaps measured (nats, 2000 examples): T = 32: 94 +- 2.3, T = 128: 12 +- 0.3,
    # T = 512: 1.9 +- 0.07; continuous (VDM): -0.04 +- 0.3, i.e. tight for the exact model.
    print("gaps (nats)", mean, "standard errors", se)
    assert mean[0] > mean[1] + 10 * se[0] and mean[1] > 10 * se[1], (mean, se)
    assert mean[2] > -3 * se[2] and mean[2] < mean[1] - 3 * se[2], (mean, se)
