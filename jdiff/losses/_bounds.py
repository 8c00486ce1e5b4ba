"""Variational bounds in nats per example: the discrete-time VLB and the continuous-time VDM bound."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from jdiff._checks import check_batched, check_times_in_range, is_concrete
from jdiff._model import Model, check_model
from jdiff._shared import loss_batch, noised, sum_data
from jdiff.losses._regression import target_sq_error
from jdiff.losses._time import sample_times, stratified_time, time_dtype, uniform_time
from jdiff.paths import AbstractPath, expand_to
from jdiff.precision import as_state

# -----------------------------------------------------------------------------------
# Discrete-time variational bound (Sohl-Dickstein et al. 2015; Ho et al. 2020), in nats
# -----------------------------------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2) - 1.0)


def _log_ndtr_diff(lo, hi):
    """log(Phi(hi) - Phi(lo)) for lo < hi, stable in both tails (reflect to the left tail)."""
    flip = lo > 0.0
    lo, hi = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    log_hi, log_lo = jax.scipy.special.log_ndtr(hi), jax.scipy.special.log_ndtr(lo)
    return log_hi + jnp.log(-jnp.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(x, mean, log_scale, num_bins: int = 256):
    """log P(x) of a Gaussian N(mean, e^{2 log_scale}) discretized to `num_bins` bins on [-1, 1].

    Ho et al. (2020), eq. 13: x lies on the bin centres -1 + 2k/(num_bins-1); the bin of x is
    [x - h, x + h], h = 1/(num_bins-1), except that the first and last bins extend to -inf and
    +inf. Elementwise; arguments broadcast.
    """
    h = 1.0 / (num_bins - 1)
    inv = jnp.exp(-log_scale)
    lo, hi = inv * (x - h - mean), inv * (x + h - mean)
    k = jnp.round((x + 1.0) / (2.0 * h))
    first, last = k <= 0, k >= num_bins - 1
    middle = _log_ndtr_diff(jnp.where(first | last, -1.0, lo), jnp.where(first | last, 1.0, hi))
    return jnp.where(first, jax.scipy.special.log_ndtr(hi), jnp.where(last, jax.scipy.special.log_ndtr(-lo), middle))


def q_posterior(path: AbstractPath, x0, x_t, s, t):
    """Mean and log-variance of q(x_s | x_t, x0) for s < t on a continuous path.

    With a_{t|s} = a_t / a_s and s_{t|s}^2 = s_t^2 - a_{t|s}^2 s_s^2 (Kingma et al. 2021, eq. 29):
        mean = a_{t|s} s_s^2 / s_t^2 x_t + a_s s_{t|s}^2 / s_t^2 x0,  var = s_{t|s}^2 s_s^2 / s_t^2,
    written through r = s_{t|s}^2 / s_t^2 = 1 - SNR_t / SNR_s = -expm1(lambda_t - lambda_s),
    which keeps the variance accurate when s and t are close. `s`, `t` are scalars or (B,).
    Returns (mean, logvar), logvar of shape of `s`, expanded to broadcast with x0.
    """
    lam_s, lam_t = path.log_snr(s), path.log_snr(t)
    r = -jnp.expm1(lam_t - lam_s)
    a_s, a_t = path.alpha(s), path.alpha(t)
    c_xt = jnp.exp(lam_t - lam_s) * a_s / a_t
    mean = expand_to(c_xt, x_t, "t") * x_t + expand_to(a_s * r, x0, "t") * x0
    logvar = 2.0 * jnp.log(path.sigma(s)) + jnp.log(r)
    return mean, expand_to(logvar, x0, "t")


def vlb_prior(path: AbstractPath, x0, t=None):
    """L_T = KL(q(x_T | x0) || N(0, sigma(t_max)^2 I)) per example, in nats (T = `t`, default t_max)."""
    x0 = check_batched(as_state(x0, name="x0"), "x0")
    t = jnp.asarray(path.t_max if t is None else t, time_dtype(x0))
    a = expand_to(path.alpha(t), x0, "t")
    logvar = 2.0 * jnp.log(path.sigma(t))
    prior_logvar = 2.0 * jnp.log(path.prior_std()).astype(logvar.dtype)
    kl = normal_kl(a * x0, expand_to(logvar, x0, "t"), jnp.zeros_like(x0), prior_logvar)
    return sum_data(kl)


def vlb_diffusion_term(model: Model, key, x0, s, t, *, cond=None):
    """L_{s,t} = KL(q(x_s | x_t, x0) || p(x_s | x_t)) per example, in nats, x_t ~ q(x_t | x0).

    The reverse model is p(x_s | x_t) = q(x_s | x_t, x0_hat(x_t, t)) with the posterior variance
    (Ho et al. 2020's sigma_t^2 = beta_tilde) and x0_hat = `model.x0`, so the term equals
    0.5 (SNR_s - SNR_t) ||x0 - x0_hat||^2. `s` < `t` are scalars or (B,) times of `model.path`.
    """
    check_model(model)
    key, x0 = loss_batch(model, key, x0)
    path = model.path
    check_times_in_range(s, path, "s")
    check_times_in_range(t, path, "t")
    b, dt = jnp.shape(x0)[0], time_dtype(x0)
    s, t = jnp.broadcast_to(jnp.asarray(s, dt), (b,)), jnp.broadcast_to(jnp.asarray(t, dt), (b,))
    eps = jax.random.normal(key, jnp.shape(x0), jnp.result_type(x0))
    x_t = noised(path, x0, eps, t)
    x0_hat = model.x0(x_t, t, cond)
    mean_q, logvar = q_posterior(path, x0, x_t, s, t)
    mean_p, _ = q_posterior(path, x0_hat, x_t, s, t)
    return sum_data(normal_kl(mean_q, logvar, mean_p, logvar))


def vlb_reconstruction(model: Model, key, x0, *, cond=None, t0=None, num_bins: int | None = 256):
    """L_0 = -log p(x0 | x_{t0}) per example, in nats, x_{t0} ~ q(x_{t0} | x0) (t0 default t_min).

    The decoder is N(x0_hat(x_{t0}, t0), sigma_e^2) with x0_hat = `model.x0` and sigma_e =
    sigma(t0)/alpha(t0), EDM's noise level at t0 (Ho et al. 2020's sigma_1^2 = beta_1 in the
    discrete chain), discretized to `num_bins` bins on [-1, 1] (Ho et al. 2020 eq. 13; data must
    lie on the bin centres), or a density (continuous data) with `num_bins=None`.
    """
    check_model(model)
    key, x0 = loss_batch(model, key, x0)
    path = model.path
    check_times_in_range(t0, path, "t0")
    b, dt = jnp.shape(x0)[0], time_dtype(x0)
    t0 = jnp.broadcast_to(jnp.asarray(path.t_min if t0 is None else t0, dt), (b,))
    eps = jax.random.normal(key, jnp.shape(x0), jnp.result_type(x0))
    x_t = noised(path, x0, eps, t0)
    mean = model.x0(x_t, t0, cond)
    log_scale = expand_to(-0.5 * path.log_snr(t0), x0, "t")  # log(sigma / alpha)
    if num_bins is None:
        logp = -0.5 * ((x0 - mean) * jnp.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
    else:
        logp = discretized_gaussian_log_likelihood(x0, mean, log_scale, num_bins)
    return -sum_data(logp)


def _check_increasing_grid(grid, path):
    """The chain's grid t_0 < ... < t_T: 1-D, at least 2 times, strictly increasing and in the
    path's range where concrete (the order of `jdiff.samplers` grids, reversed)."""
    if jnp.ndim(grid) != 1 or jnp.shape(grid)[0] < 2:
        raise ValueError(f"`grid` must be a 1-D array of at least 2 increasing times; got shape {jnp.shape(grid)}")
    if is_concrete(grid):  # on the host: jnp.asarray inside a jit trace would make a tracer of it
        host = np.asarray(grid)
        check_times_in_range(host, path, "grid")
        diffs = np.diff(host.astype(np.float64))
        if not np.all(diffs > 0):
            i = int(np.argmax(diffs <= 0))
            raise ValueError(
                f"`grid` must be strictly increasing (t_0 = t_min near the data to t_T = t_max); got "
                f"grid[{i}] = {float(host[i])} >= grid[{i + 1}] = {float(host[i + 1])}"
            )
    return jnp.asarray(grid)


class BoundTerms(NamedTuple):
    """A negative-ELBO decomposed into its terms, each (B,) in nats per example."""

    prior: jax.Array  # KL(q(x_T | x0) || p(x_T))
    diffusion: jax.Array  # sum of the KL terms (discrete) or the VDM integral (continuous)
    reconstruction: jax.Array  # -log p(x0 | x_{t0})

    @property
    def total(self):
        return self.prior + self.diffusion + self.reconstruction


def vlb_terms(
    model: Model,
    key,
    x0,
    *,
    cond=None,
    num_steps: int = 1000,
    grid=None,
    num_bins: int | None = 256,
    sum_all_terms: bool = False,
) -> BoundTerms:
    """The discrete-time negative ELBO of a T-step chain on `model.path`, per example, in nats.

    On the grid t_0 < t_1 < ... < t_T (default `linspace(t_min, t_max, num_steps + 1)`):
        -ELBO = L_T + sum_{i=1..T} L_{t_{i-1}, t_i} + L_0,
    L_T = `vlb_prior` at t_T, L_{s,t} = `vlb_diffusion_term`, L_0 = `vlb_reconstruction` at t_0.
    The diffusion sum is estimated without bias by T L_{t_{i-1}, t_i} with one i ~ U{1..T} per
    example (one model call, for training), or summed exactly over all T terms with
    `sum_all_terms=True` (T model calls in a `lax.scan`, for evaluation).

    Args:
        model: the `jdiff.Model` whose denoiser defines the reverse chain.
        key: PRNG key.
        x0: (B, ...) data batch.
        cond: conditioning pytree passed to the model, or None.
        num_steps: T, the number of steps of the chain (when `grid` is None).
        grid: optional increasing array of T + 1 times (overrides `num_steps`).
        num_bins: decoder bins for data in [-1, 1] (256 for 8-bit images); None for a density.
        sum_all_terms: sum the T diffusion terms exactly instead of the one-term estimate.
    """
    check_model(model)
    key, x0 = loss_batch(model, key, x0)
    path = model.path
    dt = time_dtype(x0)
    if grid is None:
        grid = jnp.linspace(path.t_min, path.t_max, num_steps + 1, dtype=dt)
    else:
        grid = _check_increasing_grid(grid, path).astype(dt)
    n = grid.shape[0] - 1
    key_rec, key_i, key_d = jax.random.split(key, 3)
    prior = vlb_prior(path, x0, grid[-1])
    rec = vlb_reconstruction(model, key_rec, x0, cond=cond, t0=grid[0], num_bins=num_bins)
    if sum_all_terms:

        def body(acc, i):
            term = vlb_diffusion_term(model, jax.random.fold_in(key_d, i), x0, grid[i - 1], grid[i], cond=cond)
            return acc + term, None

        diffusion, _ = jax.lax.scan(body, jnp.zeros_like(prior), jnp.arange(1, n + 1))
    else:
        i = jax.random.randint(key_i, (jnp.shape(x0)[0],), 1, n + 1)
        diffusion = n * vlb_diffusion_term(model, key_d, x0, grid[i - 1], grid[i], cond=cond)
    return BoundTerms(prior, diffusion, rec)


def vlb(model: Model, key: PRNGKeyArray, x0: Float[Array, " batch *_rest"], **options) -> Float[Array, " batch"]:
    """The discrete-time negative ELBO per example in nats (the total of `vlb_terms`, same options)."""
    return vlb_terms(model, key, x0, **options).total


# -----------------------------------------------------------------------------------
# Continuous-time VDM bound (Kingma et al. 2021)
# -----------------------------------------------------------------------------------


def vdm_terms(
    model: Model,
    key,
    x0,
    *,
    cond=None,
    antithetic: bool = True,
    num_bins: int | None = 256,
    t=None,
) -> BoundTerms:
    """The continuous-time negative ELBO of VDM (Kingma et al. 2021, eq. 17), per example, in nats.

        diffusion = -0.5 (t_max - t_min) lambda'(t) ||eps - eps_hat(x_t, t)||^2,  t ~ U[t_min, t_max],

    an unbiased one-sample estimate of L_inf = -0.5 int_{t_min}^{t_max} lambda'(t) E||eps - eps_hat||^2 dt
    on `model.path`, eps_hat = `model.eps`, with lambda' from `path.d_log_snr` (forward-mode
    autodiff for learned schedules, e.g. `jdiff.schedules.LearnedLogSNR`, so gradients reach the
    schedule's parameters). Included terms: prior = KL(q(x_{t_max} | x0) || N(0, sigma(t_max)^2))
    (`vlb_prior`) and reconstruction = -log p(x0 | x_{t_min}) (`vlb_reconstruction`, discretized
    with `num_bins`, or a density with None). Times are stratified over the batch when
    `antithetic`; `t` (scalar or (B,)) fixes them.
    """
    check_model(model)
    key, x0 = loss_batch(model, key, x0)
    path = model.path
    key_t, key_eps, key_rec = jax.random.split(key, 3)
    sampler = stratified_time if antithetic else uniform_time
    t = sample_times(key_t, x0, path, sampler, t)
    eps = jax.random.normal(key_eps, jnp.shape(x0), jnp.result_type(x0))
    sq = sum_data(target_sq_error(model, "eps", x0, eps, t, cond))
    diffusion = -0.5 * (path.t_max - path.t_min) * path.d_log_snr(t) * sq
    prior = vlb_prior(path, x0)
    rec = vlb_reconstruction(model, key_rec, x0, cond=cond, t0=path.t_min, num_bins=num_bins)
    return BoundTerms(prior, diffusion, rec)


def vdm_loss(model: Model, key: PRNGKeyArray, x0: Float[Array, " batch *_rest"], **options) -> Float[Array, " batch"]:
    """The VDM continuous-time negative ELBO per example in nats (the total of `vdm_terms`, same options)."""
    return vdm_terms(model, key, x0, **options).total
