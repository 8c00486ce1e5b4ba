"""Stochastic samplers draw the oracle's data distribution.

Each sample is assigned to the mixture component with the largest posterior
w_k N(x; mu_k, S_k); the occupancy of each component and the mean and standard deviation
of each coordinate within it are compared with the same statistics of 400k exact samples
from the mixture, in units of their standard error:
    occupancy  se = sqrt(p (1 - p) / n),  mean  se = std / sqrt(n_k),  std  se = std / sqrt(2 n_k)
(both samples' errors added in quadrature). Every |z| must be below 5 (a false alarm has
probability ~6e-7 per statistic; 21 statistics per solver). The discretization bias of
each solver at its step count is part of what is tested: it must stay below that bound.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import samplers as S

from helpers import callback_oracle, mixture_2d

GM = mixture_2d()
N = 4000
Z_MAX = 5.0


def _assign(x):
    logpdf = jax.scipy.stats.multivariate_normal.logpdf
    logn = jax.vmap(lambda xi: jax.vmap(lambda m, c: logpdf(xi, m, c))(GM.means, GM.covs))(x)
    return jnp.argmax(logn + jnp.log(GM.weights)[None, :], axis=-1)


def _stats(x):
    comp = np.asarray(_assign(x))
    x = np.asarray(x)
    out = []
    for k in range(GM.weights.shape[0]):
        xk = x[comp == k]
        out.append((len(xk) / len(x), len(xk), xk.mean(0), xk.std(0)))
    return out


@pytest.fixture(scope="module")
def reference():
    return _stats(GM.sample(jax.random.PRNGKey(123), 400_000))


def _max_z(y, ref):
    zs = []
    n = len(y)
    for (p, nk, m, s), (p0, nk0, m0, s0) in zip(_stats(y), ref):
        zs.append(abs(p - p0) / np.sqrt(p0 * (1 - p0) * (1 / n + 1 / (n * 100))))
        zs.extend(np.abs(m - m0) / (s0 * np.sqrt(1 / nk + 1 / nk0)))
        zs.extend(np.abs(s - s0) / (s0 * np.sqrt(1 / (2 * nk) + 1 / (2 * nk0))))
    return max(zs)


_FIXED = {
    "ddpm": S.DDPM(),
    "ddim_eta1": S.DDIM(eta=1.0),
    "heun_churn": S.Heun(s_churn=20.0, s_tmin=0.01, s_tmax=0.9),
    "dpmpp_2m_sde": S.DPMSolverPP2MSDE(),
    "euler_maruyama": S.EulerMaruyama(),
    "pc": S.PredictorCorrector(S.EulerMaruyama(), n_corrector=1, snr=0.16),
    # A multistep predictor under Langevin correction: its start step runs, the history stays right.
    "pc_dpmpp_2m": S.PredictorCorrector(S.DPMSolverPP2M(), n_corrector=1, snr=0.16),
}


@pytest.fixture(scope="module")
def fixed_step_samples():
    # VP path, 100 steps uniform in log-SNR, eps model; one program for all seven solvers.
    # (Measured max |z|: 1.4 .. 2.9. On a grid uniform in t, DDPM's coarse last steps
    # shrink the stds by 0.025 (|z| = 7.7) and DPM-Solver++(2M)-SDE's step-ratio
    # extrapolation inflates them by 0.09 (|z| = 27); both vanish as N grows.)
    path = jdiff.VPLinear()
    model = callback_oracle(path, "eps")
    x = path.prior_sample(jax.random.PRNGKey(0), (N, 2), jnp.float64)
    # DDPM and DDIM(eta=1) share their key (see test_ddpm_is_ddim_with_eta_one).
    run = jax.jit(
        lambda x, g, key: {
            k: S.sample(sv, model, x, g, key=jax.random.fold_in(key, max(i, 1)))
            for i, (k, sv) in enumerate(_FIXED.items())
        }
    )
    return run(x, S.log_snr_grid(path, 100), jax.random.PRNGKey(1))


@pytest.mark.parametrize("name", list(_FIXED))
def test_fixed_step_stochastic_solver_matches_the_data_distribution(fixed_step_samples, reference, name):
    z = _max_z(fixed_step_samples[name], reference)
    assert z < Z_MAX, z


def test_ddpm_is_ddim_with_eta_one(fixed_step_samples):
    # The same posterior q(x_s | x_t, x0_hat) in two parameterizations, same noise draws.
    np.testing.assert_allclose(fixed_step_samples["ddpm"], fixed_step_samples["ddim_eta1"], atol=1e-9)


def test_the_distribution_check_has_power(fixed_step_samples, reference):
    # A 10% too narrow sample (correct occupancy and means) must fail it (measured |z| = 9.2).
    y = fixed_step_samples["ddpm"]
    comp = _assign(y)
    centre = GM.means[comp]
    assert _max_z(centre + 0.9 * (y - centre), reference) > Z_MAX


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_diffrax_reverse_sde_matches_the_data_distribution(reference, solver):
    path = jdiff.VPCosine()
    model = callback_oracle(path, "v")
    x = path.prior_sample(jax.random.PRNGKey(0), (N, 2), jnp.float64)
    dx_solver = {"euler": diffrax.Euler(), "heun": diffrax.Heun()}[solver]
    sol = jax.jit(lambda x, key: S.solve_reverse_sde(model, key, x, num_steps=100, solver=dx_solver))(
        x, jax.random.PRNGKey(2)
    )
    assert sol.nfe == {"euler": 100, "heun": 200}[solver]
    z = _max_z(sol.sample, reference)
    assert z < Z_MAX, z
