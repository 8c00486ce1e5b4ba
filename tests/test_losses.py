"""jdiff.losses and jdiff.schedules against closed forms and the analytic Gaussian-mixture oracle."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.stats
from helpers import all_paths, count_compiles, mixture_2d

import jdiff
from jdiff import losses, paths, predictions, schedules

KINDS = predictions.KINDS
NAMED = {
    "snr": losses.SNRWeighting(),
    "min_snr": losses.MinSNRWeighting(5.0),
    "likelihood": losses.LikelihoodWeighting(),
    "edm": losses.EDMWeighting(0.5),
}

# One-dimensional Gaussian data N(M, C^2): every term of every bound is analytic.
M, C = 0.3, 0.4
NLL = 0.5 * math.log(2 * math.pi * C * C) + 0.5  # E[-log N(x0; M, C^2)]


def sample_1d(key, n):
    return M + C * jax.random.normal(key, (n, 1))


def gaussian_1d_model(path, kind):
    """The exact model for N(M, C^2) data in closed form: E[x0 | x_t] = M + a C^2 (x - a M) / (a^2 C^2 + s^2).

    (What `jdiff.GaussianMixture.as_model` gives for one component, cheaper to compile.)"""

    def net(x, t, cond=None):
        a, s = paths.expand_to(path.alpha(t), x), paths.expand_to(path.sigma(t), x)
        x0 = M + a * C * C * (x - a * M) / (a * a * C * C + s * s)
        return predictions.convert(x0, "x0", kind, x, t, path)

    return jdiff.Model(net, path, kind)


def mmse(snr):
    """E[(x0 - E[x0 | x_t])^2] for x0 ~ N(M, C^2) at signal-to-noise ratio snr."""
    return C * C / (1.0 + snr * C * C)


def mean_close(diff, target=0.0, n_se=4.5, rel=None, scale=None):
    """Assert mean(diff) == target within n_se standard errors, and that the standard error is
    below rel * |scale| (scale defaults to target), so that the test can fail."""
    diff = np.asarray(diff)
    se = diff.std() / math.sqrt(diff.size)
    assert abs(diff.mean() - target) < n_se * se + 1e-12, (diff.mean(), target, se)
    if rel is not None:
        assert se < rel * abs(target if scale is None else scale), (se, target, scale)


def recording(model, seen):
    """The same model, recording the (x_t, t) it is called with (use the records inside the same trace)."""

    def net(x, t, cond=None):
        seen.append((x, t))
        return model(x, t, cond)

    return jdiff.Model(net, model.path, model.kind)


def posterior_cov_trace(gm, x, t, path):
    """tr Cov[x0 | x_t = x] for a mixture, computed independently of jdiff.analytic (Bayes rule)."""
    a, s = path.alpha(t), path.sigma(t)
    eye = jnp.eye(gm.dim)
    covs_t = a * a * gm.covs + s * s * eye[None]
    gains = a * jnp.einsum("kij,kjl->kil", gm.covs, jnp.linalg.inv(covs_t))  # a S C^-1
    mus = gm.means + jnp.einsum("kij,kj->ki", gains, x[None, :] - a * gm.means)
    sigs = gm.covs - a * jnp.einsum("kij,kjl->kil", gains, gm.covs)
    logits = jnp.log(gm.weights) + jax.vmap(lambda m, c: jax.scipy.stats.multivariate_normal.logpdf(x, a * m, c))(
        gm.means, covs_t
    )
    r = jax.nn.softmax(logits)
    mean = r @ mus
    second = jnp.einsum("k,kij->ij", r, sigs + jnp.einsum("ki,kj->kij", mus, mus))
    return jnp.trace(second - jnp.outer(mean, mean))


def delta(x):
    """A smooth non-constant model error."""
    return 0.8 * jnp.sin(3.0 * x) + 0.4


def perturbed(model):
    """The oracle plus the error `delta` (in the model's own prediction space)."""
    return jdiff.Model(lambda x, t, cond=None: model(x, t, cond) + delta(x), model.path, model.kind)


# ---------------------------------------------------------------------------------
# Time samplers
# ---------------------------------------------------------------------------------


def _quantiles_close(sample, ppf, n_se=5.0):
    """Empirical quantiles of `sample` match the closed-form quantile function `ppf`."""
    sample = np.sort(np.asarray(sample))
    n = sample.size
    for p in (0.05, 0.25, 0.5, 0.75, 0.95):
        q = ppf(p)
        # standard error of the empirical p-quantile in probability units: sqrt(p(1-p)/n)
        emp_p = np.searchsorted(sample, q) / n
        assert abs(emp_p - p) < n_se * math.sqrt(p * (1 - p) / n), (p, emp_p)


def test_uniform_and_stratified_time():
    path = paths.VPCosine()
    lo, hi = path.t_min, path.t_max
    t = losses.uniform_time(jax.random.PRNGKey(0), (20000,), path)
    assert t.shape == (20000,) and float(t.min()) >= lo and float(t.max()) <= hi
    _quantiles_close(t, lambda p: lo + p * (hi - lo))

    n = 64
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    ts = jax.jit(jax.vmap(lambda k: losses.stratified_time(k, (n,), path)))(keys)
    u = (np.asarray(ts) - lo) / (hi - lo)
    # exactly one time per stratum [k/n, (k+1)/n) in every batch
    strata = np.sort(np.floor(u * n).astype(int), axis=1)
    np.testing.assert_array_equal(strata, np.broadcast_to(np.arange(n), strata.shape))
    # each element is marginally uniform
    _quantiles_close(u[:, 5], lambda p: p)
    # batch means: variance 1/(12 n^2) (one uniform offset in a stratum) vs 1/(12 n) i.i.d.
    var_strat = u.mean(axis=1).var()
    assert abs(var_strat * 12 * n * n - 1.0) < 0.1, var_strat * 12 * n * n
    ui = (np.asarray(jax.jit(jax.vmap(lambda k: losses.uniform_time(k, (n,), path)))(keys)) - lo) / (hi - lo)
    assert abs(ui.mean(axis=1).var() * 12 * n - 1.0) < 0.1


@pytest.mark.parametrize("path", [paths.VEGeometric(), paths.VPCosine()], ids=["ve", "vp_cosine"])
def test_lognormal_time_gives_edm_noise_levels(path):
    @jax.jit
    def draw(key):
        t = losses.lognormal_time(key, (20000,), path, p_mean=-1.2, p_std=1.2)
        return t, jnp.log(path.sigma(t) / path.alpha(t))

    t, log_sigma_e = draw(jax.random.PRNGKey(2))
    assert float(t.min()) >= path.t_min and float(t.max()) <= path.t_max
    _quantiles_close(log_sigma_e, lambda p: scipy.stats.norm.ppf(p, -1.2, 1.2))


def test_logit_normal_time():
    path = paths.Linear()
    sampler = functools.partial(losses.logit_normal_time, mean=0.5, std=0.8)  # as a loss's time_sampler=
    t = sampler(jax.random.PRNGKey(3), (20000,), path)
    u = (t - path.t_min) / (path.t_max - path.t_min)
    _quantiles_close(jnp.log(u) - jnp.log1p(-u), lambda p: scipy.stats.norm.ppf(p, 0.5, 0.8))


# ---------------------------------------------------------------------------------
# Weightings: the same objective in every target space
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp_linear", "ve", "linear", "custom"])
def test_weightings_agree_across_targets_and_with_closed_forms(name):
    path = all_paths()[name]
    x0 = mixture_2d().sample(jax.random.PRNGKey(4), 64)
    key = jax.random.PRNGKey(5)

    def net(x, t, cond=None):  # any imperfect eps-model: the identities hold per example
        return 0.5 * x + 0.2 * jnp.sin(3.0 * x) + 0.1 * t[:, None]

    model = jdiff.Model(net, path, "eps")
    # unweighted errors of the same predictions measured in each target space
    mse = {k: losses.dsm_loss(model, key, x0, target=k) for k in KINDS}
    t = losses.uniform_time(jax.random.split(key)[0], (64,), path)
    assert float(jnp.min(mse["x0"])) > 0.0
    # A weighting object is one objective whatever the regression space.
    for wname, w in NAMED.items():
        ref = losses.loss_weight(w, t, path, "x0") * mse["x0"]
        for k in KINDS:
            np.testing.assert_allclose(
                losses.loss_weight(w, t, path, k) * mse[k], ref, rtol=1e-9, err_msg=f"{wname} {k}"
            )
    # ... and dsm_loss applies it: eps-MSE = SNR-weighted x0-MSE (DDPM's simple loss)
    snr_x0 = losses.dsm_loss(model, key, x0, target="x0", weighting=losses.SNRWeighting())
    np.testing.assert_allclose(snr_x0, mse["eps"], rtol=1e-9)
    a, s = path.alpha(t), path.sigma(t)
    snr = (a / s) ** 2
    w = {wname: losses.loss_weight(wt, t, path, "x0") for wname, wt in NAMED.items()}
    # likelihood weighting = g^2 (path.diffusion2) on the score-MSE (Song et al. 2021)
    np.testing.assert_allclose(w["likelihood"] * mse["x0"], path.diffusion2(t) * mse["score"], rtol=1e-9)
    # min-SNR-gamma on eps: min(SNR, gamma)/SNR (Hang et al. 2023)
    np.testing.assert_allclose(w["min_snr"] * mse["x0"], jnp.minimum(snr, 5.0) / snr * mse["eps"], rtol=1e-9)
    # EDM: (sigma_e^2 + sd^2)/(sigma_e sd)^2 on the x0-MSE, sigma_e = s/a (Karras et al. 2022)
    se = s / a
    np.testing.assert_allclose(w["edm"], (se**2 + 0.25) / (se * 0.5) ** 2, rtol=1e-9)
    # a callable weighting acts on the target-space error directly
    custom = losses.dsm_loss(model, key, x0, target="v", weighting=lambda t, p: 2.0 + t)
    np.testing.assert_allclose(custom, (2.0 + t) * mse["v"], rtol=1e-12)
    if name == "vp_linear":  # on a VP path the v-MSE is the (1 + SNR)-weighted x0-MSE
        np.testing.assert_allclose(mse["v"], (1.0 + snr) * mse["x0"], rtol=1e-9)


def test_float32_weights_and_losses_finite_at_the_ends_of_every_path():
    x0 = mixture_2d(jnp.float32).sample(jax.random.PRNGKey(6), 4)

    def net(x, t, cond=None):
        return 0.5 * x + 0.1

    every_path = all_paths()
    model = jdiff.Model(net, every_path["vp_linear"], "eps")

    @jax.jit
    def everything(x0):
        out = {}
        for name, path in every_path.items():
            for end in ("t_min", "t_max"):
                t = jnp.full((4,), getattr(path, end), jnp.float32)
                for target in KINDS:
                    out[name, end, target] = jnp.stack([losses.loss_weight(w, t, path, target) for w in NAMED.values()])
        # and a whole loss on the path with the widest log-SNR range
        for end in ("t_min", "t_max"):
            t = jnp.full((4,), getattr(model.path, end), jnp.float32)
            out["vp_linear loss", end] = losses.dsm_loss(
                model, jax.random.PRNGKey(7), x0, t=t, target="score", weighting=losses.LikelihoodWeighting()
            )
        return out

    for k, v in everything(x0).items():
        assert v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v))), (k, v)


# ---------------------------------------------------------------------------------
# DSM / CFM / EDM against the oracle
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp_cosine"])
def test_dsm_minimum_is_the_posterior_variance_and_the_oracle_minimizes(name):
    """With the exact denoiser the x0-DSM loss equals E tr Cov[x0 | x_t] / D (Bayes rule, computed
    independently), and any other model pays exactly E||error||^2 / D more."""
    path = all_paths()[name]
    gm = mixture_2d()
    n = 10000
    x0 = gm.sample(jax.random.PRNGKey(8), n)
    oracle = gm.as_model(path, "x0")

    @jax.jit
    def run(key, x0):
        seen = []  # the recorded x_t is a tracer of this same trace
        best = losses.dsm_loss(recording(oracle, seen), key, x0, target="x0")
        x_t, t = seen[0]
        tr = jax.vmap(lambda x, tt: posterior_cov_trace(gm, x, tt, path))(x_t, t)
        worse = losses.dsm_loss(perturbed(oracle), key, x0, target="x0")
        excess = jnp.mean(delta(x_t) ** 2, axis=1)
        eps_loss = losses.dsm_loss(gm.as_model(path, "eps"), key, x0, target="x0")
        return best, tr, worse, excess, eps_loss

    best, tr, worse, excess, eps_loss = run(jax.random.PRNGKey(9), x0)
    mean_close(best - tr / gm.dim, rel=0.025, scale=tr.mean() / gm.dim)
    mean_close(worse - best - excess, rel=0.02, scale=excess.mean())
    # the eps-model measured in x0 space is the same loss, example by example
    np.testing.assert_allclose(eps_loss, best, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("kind", ["eps", "x0"])
def test_ddpm_loss_of_the_exact_model_is_the_irreducible_noise_error(kind):
    """For N(M, C^2) data the exact model's DDPM loss has the closed-form mean SNR(t) mmse(t).

    eps - eps_hat = (a / s)(x0_hat - x0) and x0 - E[x0 | x_t] ~ N(0, mmse) with mmse = C^2 / (1 + SNR C^2),
    so E[loss | t] = SNR C^2 / (1 + SNR C^2), whatever the model predicts (an x0-model is converted
    to eps). With the default uniform times the mean is its time average (quadrature); a model
    off the exact one pays more.
    """
    path = paths.VPCosine()
    x0 = sample_1d(jax.random.PRNGKey(32), 20000)
    model = gaussian_1d_model(path, kind)
    ts = (0.1, 0.5, 0.9)

    @jax.jit
    def run(key, x0):
        fixed = [losses.ddpm_loss(model, jax.random.fold_in(key, i), x0, t=t) for i, t in enumerate(ts)]
        return fixed, losses.ddpm_loss(model, key, x0), losses.ddpm_loss(perturbed(model), key, x0)

    fixed, uniform, worse = run(jax.random.PRNGKey(33), x0)

    def expected(t):
        snr = math.exp(float(path.log_snr(t)))
        return snr * mmse(snr)

    for t, v in zip(ts, fixed):
        mean_close(v, expected(t), rel=0.02)
    average = scipy.integrate.quad(expected, path.t_min, path.t_max, epsabs=1e-12)[0] / (path.t_max - path.t_min)
    mean_close(uniform, average, rel=0.02)
    assert float(jnp.mean(worse)) > 1.1 * float(jnp.mean(uniform))


def test_cfm_minimizer_is_the_oracle_velocity():
    path = paths.Linear()
    gm = mixture_2d()
    n = 16000
    x0 = gm.sample(jax.random.PRNGKey(10), n)
    key = jax.random.PRNGKey(11)
    oracle = gm.as_model(path, "velocity")
    t_fixed = jnp.linspace(0.2, 0.9, n)  # away from t = 0, where the target's variance grows as 1/t^2

    @jax.jit
    def run(key, x0):
        seen = []
        best = losses.cfm_loss(recording(oracle, seen), key, x0, t=t_fixed)
        x_t, t = seen[0]
        # irreducible: (a lambda'/2)^2 tr Cov[x0 | x_t] / D, a lambda'/2 = -1/t on the linear path
        tr = jax.vmap(lambda x, tt: posterior_cov_trace(gm, x, tt, path))(x_t, t)
        worse = losses.cfm_loss(perturbed(oracle), key, x0, t=t_fixed)
        excess = jnp.mean(delta(x_t) ** 2, axis=1)
        return best, tr / (gm.dim * t**2), worse - best - excess, worse - best

    best, irreducible, excess_gap, worse_minus_best = run(key, x0)
    mean_close(best - irreducible, rel=0.03, scale=irreducible.mean())
    mean_close(excess_gap, rel=0.02, scale=jnp.mean(worse_minus_best))
    # the target is u = x1 - x0: a zero model's loss is mean_d (x1 - x0)^2, independent of t
    x1 = jax.random.normal(jax.random.PRNGKey(12), x0.shape)
    zero = jdiff.Model(lambda x, t, c=None: jnp.zeros_like(x), path, "velocity")
    np.testing.assert_allclose(losses.cfm_loss(zero, key, x0, x1=x1), jnp.mean((x1 - x0) ** 2, 1), rtol=1e-12)


def _ot_problem(b=24):
    x0 = mixture_2d().sample(jax.random.PRNGKey(13), b)
    x1 = jax.random.normal(jax.random.PRNGKey(14), (b, 2))
    cost = np.sum((np.asarray(x0)[:, None] - np.asarray(x1)[None]) ** 2, -1)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return x0, x1, cost, cols, cost[rows, cols].sum()


def test_ot_coupling_inside_jit_matches_exact_assignment():
    x0, x1, _, cols, best_cost = _ot_problem()
    key = jax.random.PRNGKey(15)
    zero = jdiff.Model(lambda x, t, c=None: jnp.zeros_like(x), paths.Linear(), "velocity")

    @jax.jit
    def run(key, x0, x1):
        # through the loss: a zero velocity model on the linear path pays mean_d |x1 - x0|^2
        cfm = losses.cfm_loss(zero, key, x0, x1=x1, coupling="exact")
        return losses.ot_pairing(key, x0, x1, method="exact"), cfm

    j, cfm = run(key, x0, x1)
    np.testing.assert_array_equal(np.asarray(j), cols)
    np.testing.assert_allclose(float(jnp.sum(cfm)) * 2, best_cost, rtol=1e-10)
    indep = losses.cfm_loss(zero, key, x0, x1=x1)
    assert float(jnp.sum(indep)) * 2 > 1.5 * best_cost


@pytest.mark.slow  # ott-jax's Sinkhorn compiles slowly; the exact pairing above covers OT-CFM
def test_sinkhorn_coupling_approaches_exact_assignment():
    x0, x1, cost, cols, best_cost = _ot_problem()
    j = jax.jit(lambda k, a, c: losses.ot_pairing(k, a, c, method="sinkhorn"))(jax.random.PRNGKey(15), x0, x1)
    sinkhorn = np.asarray(j)
    # entropic OT (epsilon = 1e-3 of the mean cost): the same pairs up to near-ties
    assert np.sum(sinkhorn != cols) <= 2
    assert cost[np.arange(len(cols)), sinkhorn].sum() < 1.02 * best_cost


def test_edm_loss_is_unit_weight_mse_of_the_raw_network():
    """lambda(sigma) ||D - x0||^2 = ||F - (x0 - c_skip x_t) / c_out||^2 for the EDM-preconditioned D."""
    path = paths.VEGeometric()
    x0 = mixture_2d().sample(jax.random.PRNGKey(16), 256)
    w = jnp.array([[0.7, -0.2], [0.3, 1.1]])
    seen = []

    def net(x_in, c_noise, cond):
        seen.append(x_in)
        return x_in @ w + c_noise[:, None] * jnp.ones((1, 2))

    model = jdiff.edm_denoiser(net, path, sigma_data=0.5)
    t = losses.lognormal_time(jax.random.PRNGKey(17), (256,), path)
    val = losses.edm_loss(model, jax.random.PRNGKey(18), x0, t=t)
    c = predictions.edm_preconditioning(t, path, 0.5)
    x_t = seen[0] / c.c_in[:, None]
    f_target = (x0 - c.c_skip[:, None] * x_t) / c.c_out[:, None]
    np.testing.assert_allclose(val, jnp.mean((net(seen[0], c.c_noise, None) - f_target) ** 2, 1), rtol=1e-9)


# ---------------------------------------------------------------------------------
# Discrete-time VLB
# ---------------------------------------------------------------------------------


def test_normal_kl_and_discretized_gaussian_against_scipy():
    for m1, v1, m2, v2 in [(0.3, 0.5, -0.2, 2.0), (1.0, 1e-3, 1.01, 2e-3)]:
        p, q = scipy.stats.norm(m1, math.sqrt(v1)), scipy.stats.norm(m2, math.sqrt(v2))
        lo, hi = m1 - 12 * math.sqrt(v1), m1 + 12 * math.sqrt(v1)
        ref = scipy.integrate.quad(lambda x, p=p, q=q: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), lo, hi, epsabs=1e-13)[0]
        got = losses.normal_kl(m1, math.log(v1), m2, math.log(v2))
        np.testing.assert_allclose(got, ref, rtol=1e-7)

    x = jnp.linspace(-1.0, 1.0, 256)
    cases = [(0.1, 0.3), (-0.98, 0.01), (0.5, 1e-3), (0.99, 2.0)]
    means, scales = jnp.array(cases).T
    table = jax.jit(jax.vmap(losses.discretized_gaussian_log_likelihood, (None, 0, 0)))(x, means, jnp.log(scales))
    for (mean, scale), logp in zip(cases, table):
        edges = np.concatenate([[-np.inf], np.asarray(x[:-1]) + 1 / 255, [np.inf]])
        cdf = scipy.stats.norm.cdf(edges, mean, scale)
        ref = np.diff(cdf)
        ok = ref > 1e-8  # below that, differences of scipy's CDFs near 1 lose digits
        assert ok.sum() >= 2
        np.testing.assert_allclose(np.exp(logp)[ok], ref[ok], rtol=1e-8)
        np.testing.assert_allclose(float(jnp.sum(jnp.exp(logp))), 1.0, rtol=1e-10)
        assert bool(jnp.all(jnp.isfinite(logp)))
    # deep tail stays finite and matches the log of the Gaussian mass in the bin (reflection)
    far = losses.discretized_gaussian_log_likelihood(jnp.array(0.0), 0.9, math.log(0.01))
    log_hi, log_lo = (scipy.stats.norm.logcdf(e, 0.9, 0.01) for e in (1 / 255, -1 / 255))
    ref = log_hi + math.log(-math.expm1(log_lo - log_hi))  # about -4000: Phi differences underflow
    assert ref < -3000
    np.testing.assert_allclose(float(far), ref, rtol=1e-8)


@pytest.mark.parametrize("name", list(all_paths()))
def test_q_posterior_is_gaussian_conditioning(name):
    """q(x_s | x_t, x0) from the joint Gaussian of (x_s, x_t) given x0 (no log-SNR algebra)."""
    path = all_paths()[name]
    lo, hi = path.t_min, path.t_max
    s = jnp.array([lo + 0.01, 0.3, 0.5, 0.7])
    t = jnp.array([lo + 0.02, 0.31, 0.9, hi])
    x0 = jnp.array([[0.4, -1.0], [1.5, 0.2], [-0.3, 0.0], [2.0, 1.0]])
    x_t = jnp.array([[0.1, 0.9], [-0.5, 0.3], [1.0, -2.0], [0.2, 0.2]])
    mean, logvar = losses.q_posterior(path, x0, x_t, s, t)
    a_s, a_t, s_s, s_t = path.alpha(s), path.alpha(t), path.sigma(s), path.sigma(t)
    cov_st = (a_t / a_s) * s_s**2  # Cov(x_s, x_t | x0) of the Markov chain x_t = a_{t|s} x_s + noise
    ref_mean = a_s[:, None] * x0 + (cov_st / s_t**2)[:, None] * (x_t - a_t[:, None] * x0)
    ref_var = s_s**2 - cov_st**2 / s_t**2
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(jnp.exp(logvar[:, 0]), ref_var, rtol=1e-6, atol=1e-14)


def _vlb_closed_form(path, grid):
    """E[-ELBO] of the T-step chain for N(M, C^2) data, exact denoiser, Gaussian decoder (1-D)."""
    v = np.exp(np.asarray(path.log_snr(grid)))
    prior = 0.5 * v[-1] * (M * M + C * C)
    diffusion = np.sum(0.5 * (v[:-1] - v[1:]) * mmse(v[1:]))
    rec = 0.5 * math.log(2 * math.pi / v[0]) + 0.5 * mmse(v[0]) * v[0]
    return prior, diffusion, rec


def test_vlb_matches_closed_form_and_tightens_with_steps():
    path = paths.VEGeometric()
    x0 = sample_1d(jax.random.PRNGKey(19), 20000)
    model = gaussian_1d_model(path, "x0")
    steps = (10, 100, 1000)

    @jax.jit
    def run(key, x0):
        # all 10 terms summed exactly; 100 and 1000 steps with the one-term unbiased estimator
        return [
            losses.vlb_terms(model, jax.random.fold_in(key, T), x0, num_steps=T, num_bins=None, sum_all_terms=T == 10)
            for T in steps
        ]

    exact = {}
    for T, terms in zip(steps, run(jax.random.PRNGKey(20), x0)):
        prior, diff, rec = _vlb_closed_form(path, jnp.linspace(path.t_min, path.t_max, T + 1))
        exact[T] = prior + diff + rec
        mean_close(terms.prior, prior)
        mean_close(terms.diffusion, diff, rel=0.02)
        mean_close(terms.reconstruction, rec)
        mean_close(terms.total, exact[T])
    # the bound is above the continuous-time bound (itself >= the exact NLL), and its gap closes as 1/T
    cont = sum(_vdm_closed_form(path))
    assert exact[10] > exact[100] > exact[1000] > cont > NLL
    order = math.log((exact[100] - cont) / (exact[1000] - cont)) / math.log(10.0)
    assert abs(order - 1.0) < 0.1, order


# ---------------------------------------------------------------------------------
# Continuous-time VDM bound and the learnable schedule
# ---------------------------------------------------------------------------------


def _vdm_closed_form(path):
    v0 = float(jnp.exp(path.log_snr(path.t_min)))
    v1 = float(jnp.exp(path.log_snr(path.t_max)))
    prior = 0.5 * v1 * (M * M + C * C)
    diffusion = 0.5 * math.log((1 + v0 * C * C) / (1 + v1 * C * C))
    rec = 0.5 * math.log(2 * math.pi / v0) + 0.5 * mmse(v0) * v0
    return prior, diffusion, rec


@pytest.mark.parametrize("name", ["ve", "learned_a", "learned_b"])
def test_vdm_elbo_with_exact_model_matches_closed_form(name):
    """The bound depends on the schedule only through its endpoints: two random learned
    schedules with the same endpoints give the same expected bound."""
    if name == "ve":
        path = paths.VEGeometric()
    else:
        path = schedules.LearnedLogSNR(jax.random.PRNGKey(22 if name == "learned_a" else 23), hidden=16)
    x0 = sample_1d(jax.random.PRNGKey(23), 20000)
    terms = jax.jit(lambda k, x: losses.vdm_terms(gaussian_1d_model(path, "v"), k, x, num_bins=None))(
        jax.random.PRNGKey(24), x0
    )
    prior, diffusion, rec = _vdm_closed_form(path)
    mean_close(terms.prior, prior)
    mean_close(terms.diffusion, diffusion, rel=0.02)
    mean_close(terms.reconstruction, rec)
    total = prior + diffusion + rec
    assert total >= NLL and total - NLL < 0.01  # the bound is nearly tight at these endpoints
    mean_close(terms.total, total)


def test_vdm_weight_is_the_log_snr_derivative():
    """At fixed t, E[diffusion] = -0.5 (t_max - t_min) lambda'(t) SNR(t) mmse(t) (a path with non-constant lambda')."""
    path = paths.Linear()
    x0 = sample_1d(jax.random.PRNGKey(30), 20000)
    ts = (0.05, 0.3, 0.8)
    run = jax.jit(
        lambda k, x: [
            losses.vdm_terms(gaussian_1d_model(path, "eps"), jax.random.fold_in(k, i), x, num_bins=None, t=t).diffusion
            for i, t in enumerate(ts)
        ]
    )
    for t, d in zip(ts, run(jax.random.PRNGKey(31), x0)):
        snr = ((1 - t) / t) ** 2
        ref = -0.5 * (path.t_max - path.t_min) * (-2.0 / (t * (1 - t))) * snr * mmse(snr)
        mean_close(d, ref, rel=0.015)


def test_learned_schedule_is_monotone_and_trainable():
    path = schedules.LearnedLogSNR(jax.random.PRNGKey(25), hidden=16, gamma_0=-6.0, gamma_1=3.0)
    t = jnp.linspace(0.0, 1.0, 201)

    @jax.jit
    def evaluate(p):
        lam = p.log_snr(t)
        return lam, p.d_log_snr(t), p.t_from_log_snr(lam), p.alpha(t) ** 2 + p.sigma(t) ** 2

    lam, d_lam, t_back, one = evaluate(path)
    np.testing.assert_allclose([lam[0], lam[-1]], [6.0, -3.0], rtol=1e-12)
    assert bool(jnp.all(d_lam < 0.0))
    np.testing.assert_allclose(t_back, t, atol=1e-9)
    np.testing.assert_allclose(one, 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="gamma_1"):
        schedules.LearnedLogSNR(jax.random.PRNGKey(0), gamma_0=1.0, gamma_1=0.0)

    # gradients of the bound reach every leaf (through x_t, lambda'(t) by jax.jvp, and the endpoints)
    x0 = sample_1d(jax.random.PRNGKey(27), 512)

    def net(x, t, c=None):  # a fixed eps-network; the model binds it to the schedule being trained
        return 0.5 * x

    def mean_loss(p):
        return jnp.mean(losses.vdm_loss(jdiff.Model(net, p, "eps"), jax.random.PRNGKey(28), x0, num_bins=None))

    value_and_grad = jax.jit(jax.value_and_grad(mean_loss))
    _, grads = value_and_grad(path)
    for leaf in jax.tree_util.tree_leaves(grads):
        assert bool(jnp.all(jnp.isfinite(leaf))) and float(jnp.max(jnp.abs(leaf))) > 0.0
    # ... and agree with central finite differences of the same (common-random-number) objective
    for name in ("gamma_0", "raw_gamma_range", "raw_w1"):
        h = 1e-5
        plus = eqx.tree_at(lambda p, name=name: getattr(p, name), path, getattr(path, name) + h)
        minus = eqx.tree_at(lambda p, name=name: getattr(p, name), path, getattr(path, name) - h)
        fd = (value_and_grad(plus)[0] - value_and_grad(minus)[0]) / (2 * h)
        np.testing.assert_allclose(getattr(grads, name), fd, rtol=1e-5)
    i = 3
    plus = eqx.tree_at(lambda p: p.raw_w2, path, path.raw_w2.at[i].add(1e-5))
    minus = eqx.tree_at(lambda p: p.raw_w2, path, path.raw_w2.at[i].add(-1e-5))
    np.testing.assert_allclose(grads.raw_w2[i], (value_and_grad(plus)[0] - value_and_grad(minus)[0]) / 2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------
# API contract
# ---------------------------------------------------------------------------------


def test_losses_are_per_example_jit_without_recompiling_and_validate_arguments():
    x0 = mixture_2d().sample(jax.random.PRNGKey(29), 16)

    def net(x, t, c=None):
        return 0.5 * x + 0.1 * t[:, None]

    fn = jax.jit(lambda m, w, k, x: losses.dsm_loss(m, k, x, weighting=w))
    out = fn(jdiff.Model(net, paths.VPLinear(), "eps"), losses.MinSNRWeighting(5.0), jax.random.PRNGKey(0), x0)
    assert out.shape == (16,)
    with count_compiles() as n:  # a new path parameter and a new gamma are traced leaves
        again = fn(
            jdiff.Model(net, paths.VPLinear(beta_max=15.0), "eps"),
            losses.MinSNRWeighting(3.0),
            jax.random.PRNGKey(1),
            x0,
        )
    assert n() == 0 and again.shape == (16,)
    model = jdiff.Model(net, paths.VPLinear(), "eps")
    for fn_, kw, err, word in [
        (losses.dsm_loss, {"weighting": "snrr"}, TypeError, "weighting"),
        (losses.dsm_loss, {"target": "noise"}, ValueError, "target"),
        (losses.dsm_loss, {"time_sampler": "sobol"}, TypeError, "time_sampler"),
        (losses.cfm_loss, {"coupling": "hungarian"}, ValueError, "coupling"),
    ]:
        with pytest.raises(err, match=word):
            fn_(model, jax.random.PRNGKey(0), x0, **kw)
    # the error says what to pass instead of a name
    with pytest.raises(TypeError, match="MinSNRWeighting"):
        losses.dsm_loss(model, jax.random.PRNGKey(0), x0, weighting="min_snr")
    with pytest.raises(ValueError, match="gamma"):
        losses.MinSNRWeighting(0.0)
    # the model comes first and is a bound jdiff.Model
    for fn_ in (losses.dsm_loss, losses.ddpm_loss, losses.edm_loss, losses.cfm_loss, losses.vdm_loss, losses.vlb):
        with pytest.raises(TypeError, match="model"):
            fn_(net, jax.random.PRNGKey(0), x0)
    # bfloat16 data still gets float32 times (bfloat16 resolves t only to about 1/256)
    seen = []
    zero = recording(jdiff.Model(lambda x, t, c=None: jnp.zeros_like(x), paths.VPLinear(), "eps"), seen)
    v = losses.dsm_loss(zero, jax.random.PRNGKey(2), x0.astype(jnp.bfloat16))
    assert seen[0][1].dtype == jnp.float32 and v.shape == (16,) and bool(jnp.all(jnp.isfinite(v)))
