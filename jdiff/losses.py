"""Training objectives: denoising / score matching, the variational bounds, flow matching, EDM.

Every loss is a pure function

    loss(model, path, key, x0, cond=None, *, kind=..., <options>) -> (B,) per-example values

of a batch x0 of shape (B, ...): it draws one time per example (or takes `t=`), noises
x_t = alpha(t) x0 + sigma(t) eps along `path`, calls `model(x_t, t, cond)` once with t of
shape (B,), and returns *unreduced* per-example values (the caller takes the mean, as
in optax). `model` is any callable predicting `kind` ("eps", "x0", "v", "score",
"velocity"); conversions go through `jdiff.predictions`.

Units. Regression losses (`dsm_loss`, `ddpm_loss`, `cfm_loss`, `edm_loss`) return the
weighted squared error *averaged* over the data dimensions of each example (Ho et al.
2020's `mean_flat`). The bounds (`vlb`, `vlb_terms`, `vdm_loss`, `vdm_terms` and their
per-term functions) return negative log-likelihood bounds in **nats per example**,
*summed* over the data dimensions; bits/dim = nats / (D log 2).

Weightings (`loss_weight`). A named weighting w is defined on the x0-space error
||x0_hat - x0||^2. At a fixed (x_t, t) every target's error is a scalar multiple of the x0
error (lambda = log-SNR, a = alpha, s = sigma, ' = d/dt):

    target     ||err||^2 / ||x0 err||^2
    "x0"       1
    "eps"      SNR = e^lambda
    "v"        (a^2 + s^2)^2 / s^2            (= 1 + SNR on variance-preserving paths)
    "score"    a^2 / s^4
    "velocity" a^2 lambda'^2 / 4

so the weight applied to the MSE in `target` space is w / (that ratio), evaluated in log
space to stay finite at the ends of the path. Hence the equivalences

    eps-MSE             = "snr"-weighted x0-MSE               (DDPM's simple loss)
    v-MSE (VP path)     = (1 + SNR)-weighted x0-MSE
    "min_snr" eps-MSE   = min(SNR, gamma) / SNR  eps-MSE      (Hang et al. 2023)
    "likelihood"        = g^2-weighted score-MSE = -lambda' eps-MSE   (Song et al. 2021)
    "edm"               = (sigma^2 + sd^2) / (sigma sd)^2 on the x0-MSE, sigma = s / a
                          (Karras et al. 2022, lambda(sigma) = 1 / c_out^2)

and "none" is the unit weight in the target space (plain MSE of the target).
0.5 * D * (t_max - t_min) * dsm_loss(..., target="eps", weighting="likelihood") with uniform t
is the diffusion term of the continuous-time VDM bound (`vdm_terms`), example by example
for the same t and noise.

Time samplers map (key, shape, path, dtype) to times in [path.t_min, path.t_max]:
`uniform_time`, `stratified_time` (antithetic / low-discrepancy, Kingma et al. 2021),
`lognormal_time` (EDM's log-normal noise level) and `logit_normal_time` (Esser et al.
2024). Losses take one as `time_sampler=` (a callable or a name in `TIME_SAMPLERS`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jdiff.paths import AbstractPath, expand_to
from jdiff.predictions import check_kind, convert, from_x0_eps

__all__ = [
    # time samplers
    "uniform_time",
    "stratified_time",
    "lognormal_time",
    "logit_normal_time",
    "TIME_SAMPLERS",
    "get_time_sampler",
    # weightings and regression losses
    "WEIGHTINGS",
    "loss_weight",
    "dsm_loss",
    "ddpm_loss",
    "edm_loss",
    # flow matching
    "COUPLINGS",
    "ot_pairing",
    "cfm_loss",
    # discrete-time variational bound
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "q_posterior",
    "vlb_prior",
    "vlb_diffusion_term",
    "vlb_reconstruction",
    "BoundTerms",
    "vlb_terms",
    "vlb",
    # continuous-time VDM bound
    "vdm_terms",
    "vdm_loss",
]


# -----------------------------------------------------------------------------------
# Time samplers
# -----------------------------------------------------------------------------------


def _dtype(dtype):
    return jnp.result_type(float) if dtype is None else dtype


def _affine(u, path: AbstractPath):
    """Map u in [0, 1] to [t_min, t_max]."""
    return path.t_min + (path.t_max - path.t_min) * u


def uniform_time(key, shape, path: AbstractPath, dtype=None):
    """t ~ U[t_min, t_max], i.i.d., of shape `shape`."""
    return _affine(jax.random.uniform(key, shape, _dtype(dtype)), path)


def stratified_time(key, shape, path: AbstractPath, dtype=None):
    """Antithetic / low-discrepancy times (Kingma et al. 2021, VDM appendix).

    u_i = (u_0 + i / n) mod 1 for i = 0 .. n-1 over the flattened `shape` (n elements) with a
    single u_0 ~ U[0, 1): each u_i is marginally uniform and the batch has exactly one time in
    each of the n strata [k/n, (k+1)/n), which lowers the variance of batch means of smooth
    functions of t from O(1/n) to O(1/n^2). Mapped affinely to [t_min, t_max].
    """
    dtype = _dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape)
    u0 = jax.random.uniform(key, (), dtype)
    u = jnp.mod(u0 + jnp.arange(n, dtype=dtype) / n, 1.0)
    return _affine(u.reshape(shape), path)


def lognormal_time(key, shape, path: AbstractPath, dtype=None, *, p_mean=-1.2, p_std=1.2, clip=True):
    """EDM's log-normal noise levels, reached through the path (Karras et al. 2022, Table 1).

    log sigma_e ~ N(p_mean, p_std^2) with sigma_e = sigma / alpha the EDM noise level, i.e.
    log-SNR lambda = -2 log sigma_e, mapped to t by `path.t_from_log_snr`. With `clip` (the
    default) times are clipped to [t_min, t_max] (for EDM's defaults on `VEGeometric`, a
    fraction of about 1e-5 of the draws lies outside sigma in [0.002, 80]).
    """
    dtype = _dtype(dtype)
    log_sigma = p_mean + p_std * jax.random.normal(key, shape, dtype)
    t = path.t_from_log_snr(-2.0 * log_sigma).astype(dtype)
    return jnp.clip(t, path.t_min, path.t_max) if clip else t


def logit_normal_time(key, shape, path: AbstractPath, dtype=None, *, mean=0.0, std=1.0):
    """Logit-normal times (Esser et al. 2024, SD3): t = t_min + (t_max - t_min) sigmoid(mean + std z)."""
    return _affine(jax.nn.sigmoid(mean + std * jax.random.normal(key, shape, _dtype(dtype))), path)


TIME_SAMPLERS = {
    "uniform": uniform_time,
    "stratified": stratified_time,
    "antithetic": stratified_time,
    "lognormal": lognormal_time,
    "logit_normal": logit_normal_time,
}


def get_time_sampler(name: str, **kwargs) -> Callable:
    """A time sampler by name (for configs), with keyword options bound (e.g. `p_mean=`)."""
    if name not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler {name!r} for `time_sampler`; accepted: {', '.join(TIME_SAMPLERS)}")
    return functools.partial(TIME_SAMPLERS[name], **kwargs) if kwargs else TIME_SAMPLERS[name]


def _time_dtype(x0):
    # at least float32: bfloat16 times would resolve t only to about 1/256
    return jnp.promote_types(jnp.result_type(x0), jnp.float32)


def _times(key, x0, path, time_sampler, t):
    """One time per example (B,), drawn by `time_sampler` unless given as `t`."""
    b = jnp.shape(x0)[0]
    if t is not None:
        return jnp.broadcast_to(jnp.asarray(t, _time_dtype(x0)), (b,))
    sampler = get_time_sampler(time_sampler) if isinstance(time_sampler, str) else time_sampler
    return sampler(key, (b,), path, _time_dtype(x0))


# -----------------------------------------------------------------------------------
# Weightings
# -----------------------------------------------------------------------------------

WEIGHTINGS = ("none", "snr", "min_snr", "likelihood", "edm")


def _log_error_ratio(target, t, path):
    """log(||err||^2 / ||x0 err||^2) for an error in `target` space at fixed (x_t, t)."""
    lam = path.log_snr(t)
    if target == "x0":
        return jnp.zeros_like(lam)
    if target == "eps":
        return lam
    log_s = jnp.log(path.sigma(t))
    if target == "v":
        # (a^2 + s^2)^2 / s^2 = s^2 (1 + e^lam)^2
        return 2.0 * log_s + 2.0 * jax.nn.softplus(lam)
    if target == "score":
        return lam - 2.0 * log_s
    # velocity: du/dx0 at fixed x_t is a' - s' a / s = a lambda' / 2
    return 2.0 * (jnp.log(path.alpha(t)) + jnp.log(jnp.abs(path.d_log_snr(t))) - math.log(2.0))


def _check_weighting(weighting):
    if not callable(weighting) and weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r} for `weighting`; accepted: {', '.join(WEIGHTINGS)} "
                         "or a callable (t, path) -> weight")
    return weighting


def loss_weight(weighting, t, path: AbstractPath, target: str = "x0", *, min_snr_gamma=5.0, sigma_data=0.5):
    """The per-example weight that multiplies the squared error in `target` space.

    Args:
        weighting: a name in `WEIGHTINGS`, defined on the x0-space error (module docstring):
            "none" (1 in `target` space), "snr" (SNR = alpha^2/sigma^2), "min_snr"
            (min(SNR, min_snr_gamma), Hang et al. 2023), "likelihood" (g^2 on the score error,
            Song et al. 2021, = -lambda' SNR on x0), "edm" ((sigma_e^2 + sigma_data^2) /
            (sigma_e sigma_data)^2, sigma_e = sigma/alpha, Karras et al. 2022); or a callable
            `weighting(t, path)` returning the weight on the `target`-space error directly.
        t: times, any shape.
        target: the prediction space in which the error is measured.
        min_snr_gamma: gamma of min-SNR-gamma (5 in Hang et al. 2023).
        sigma_data: the data standard deviation of EDM (0.5 for images in [-1, 1]).
    """
    check_kind(target, "target")
    if callable(_check_weighting(weighting)):
        return weighting(t, path)
    if weighting == "none":
        return jnp.ones_like(path.log_snr(t))
    lam = path.log_snr(t)
    if weighting == "snr":
        log_w = lam
    elif weighting == "min_snr":
        log_w = jnp.minimum(lam, math.log(min_snr_gamma))
    elif weighting == "likelihood":
        log_w = lam + jnp.log(-path.d_log_snr(t))
    else:  # edm: 1/sigma_e^2 + 1/sigma_data^2 with 1/sigma_e^2 = e^lam
        log_w = jnp.logaddexp(lam, -2.0 * math.log(sigma_data))
    return jnp.exp(log_w - _log_error_ratio(target, t, path))


# -----------------------------------------------------------------------------------
# Regression losses
# -----------------------------------------------------------------------------------


def _mean_data(x):
    """Mean over all axes but the first (per-example)."""
    return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def _sum_data(x):
    """Sum over all axes but the first (per-example)."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def _noised(path, x0, eps, t):
    return expand_to(path.alpha(t), x0, "t") * x0 + expand_to(path.sigma(t), x0, "t") * eps


def _target_sq_error(model, kind, target, path, x0, eps, t, cond):
    """Elementwise squared error (B, ...) of the model in `target` space at x_t = alpha x0 + sigma eps."""
    x_t = _noised(path, x0, eps, t)
    pred = convert(model(x_t, t, cond), kind, target, x_t, t, path)
    return (pred - from_x0_eps(x0, eps, target, x_t, t, path)) ** 2


def dsm_loss(
    model,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    kind: str = "eps",
    target: str | None = None,
    weighting="none",
    time_sampler="uniform",
    t=None,
    min_snr_gamma=5.0,
    sigma_data=0.5,
):
    """Weighted denoising score matching for any prediction kind and target space.

        loss_i = w(t_i) * mean_d (convert(model(x_t, t, cond), kind -> target) - target_true)^2

    with x_t = alpha x0 + sigma eps, eps ~ N(0, I), t ~ `time_sampler`. The minimizer (any
    weighting > 0) is the exact target E[target | x_t]; its irreducible value is
    w ratio_target E[tr Cov(x0 | x_t)] / D.

    Args:
        model: callable model(x, t, cond) predicting `kind`; called with t of shape (B,).
        path: the Gaussian path.
        key: PRNG key (split for the times and the noise).
        x0: (B, ...) data batch.
        cond: conditioning pytree passed to the model, or None.
        kind: what the model predicts.
        target: the space in which the error is measured (default: `kind`).
        weighting: a name in `WEIGHTINGS` or a callable; see `loss_weight`.
        time_sampler: a callable (key, shape, path, dtype) -> t or a name in `TIME_SAMPLERS`.
        t: optional (B,) or scalar times, overriding the sampler.
        min_snr_gamma, sigma_data: options of the "min_snr" and "edm" weightings.
    Returns:
        (B,) per-example losses.
    """
    check_kind(kind)
    target = kind if target is None else check_kind(target, "target")
    _check_weighting(weighting)
    key_t, key_eps = jax.random.split(key)
    t = _times(key_t, x0, path, time_sampler, t)
    eps = jax.random.normal(key_eps, jnp.shape(x0), jnp.result_type(x0))
    err = _mean_data(_target_sq_error(model, kind, target, path, x0, eps, t, cond))
    w = loss_weight(weighting, t, path, target, min_snr_gamma=min_snr_gamma, sigma_data=sigma_data)
    return w * err


def ddpm_loss(model, path: AbstractPath, key, x0, cond=None, *, kind: str = "eps", time_sampler="uniform", t=None):
    """DDPM's simple loss (Ho et al. 2020, eq. 14): mean_d ||eps - eps_hat(x_t, t)||^2, t uniform.

    Continuous-time form on any path; the model may predict any kind (it is converted to eps).
    """
    return dsm_loss(model, path, key, x0, cond, kind=kind, target="eps", weighting="none",
                    time_sampler=time_sampler, t=t)


def edm_loss(
    model,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    kind: str = "x0",
    p_mean=-1.2,
    p_std=1.2,
    sigma_data=0.5,
    t=None,
):
    """The EDM loss (Karras et al. 2022, eq. 8 and Table 1) on any path.

        loss_i = lambda(sigma_e) mean_d ||D(x_t, t) - x0||^2,  lambda = (sigma_e^2 + sd^2)/(sigma_e sd)^2,

    with log sigma_e ~ N(p_mean, p_std^2), sigma_e = sigma/alpha. Use it with the preconditioned
    denoiser `jdiff.predictions.edm_denoiser(net, path, sigma_data)` as `model` (kind "x0"): then
    lambda = 1 / c_out^2 and the loss is the unit-weight MSE of the raw network output against
    its effective target (x0 - c_skip x_t) / c_out, EDM's design.
    """
    sampler = functools.partial(lognormal_time, p_mean=p_mean, p_std=p_std)
    return dsm_loss(model, path, key, x0, cond, kind=kind, target="x0", weighting="edm",
                    time_sampler=sampler, t=t, sigma_data=sigma_data)


# -----------------------------------------------------------------------------------
# Flow matching
# -----------------------------------------------------------------------------------

COUPLINGS = ("independent", "exact", "sinkhorn")


def ot_pairing(key, x0, x1, *, method: str = "exact", epsilon=1e-3, max_iterations=2000):
    """Minibatch optimal-transport pairing of x1 to x0 under the squared Euclidean cost.

    Returns indices j of shape (B,) such that (x0[i], x1[j[i]]) are the coupled pairs
    (Tong et al. 2023, OT-CFM; Pooladian et al. 2023). Runs inside `jax.jit`.

    Args:
        key: PRNG key (used by "sinkhorn" to draw j[i] from row i of the plan).
        x0, x1: (B, ...) batches.
        method: "exact" (the Hungarian algorithm of optax, via `ott.tools.unreg.hungarian`:
            a permutation, O(B^3)) or "sinkhorn" (entropic OT with ott-jax's Sinkhorn,
            regularization `epsilon` relative to the mean cost; j[i] ~ plan[i, :], which for
            small epsilon is the exact assignment).
        epsilon: Sinkhorn regularization as a fraction of the mean pairwise cost.
        max_iterations: Sinkhorn iteration cap.
    """
    from ott.geometry import pointcloud  # imported here: ott-jax is only needed for OT-CFM

    if method not in ("exact", "sinkhorn"):
        raise ValueError(f"unknown OT method {method!r} for `method`; accepted: exact, sinkhorn")
    b = jnp.shape(x0)[0]
    xf = jax.lax.stop_gradient(jnp.reshape(x0, (b, -1)))
    yf = jax.lax.stop_gradient(jnp.reshape(x1, (b, -1)))
    # ott-jax relies on implicit rank promotion; allow it locally (the caller may run with "raise").
    with jax.numpy_rank_promotion("allow"):
        if method == "exact":
            from ott.tools import unreg

            _, out = unreg.hungarian(pointcloud.PointCloud(xf, yf))
            rows, cols = out.paired_indices
            return jnp.zeros((b,), cols.dtype).at[rows].set(cols)
        from ott.solvers import linear

        geom = pointcloud.PointCloud(xf, yf, epsilon=epsilon, relative_epsilon="mean")
        plan = linear.solve(geom, max_iterations=max_iterations).matrix
        return jax.random.categorical(key, jnp.log(jnp.maximum(plan, 1e-30)), axis=1)


def cfm_loss(
    model,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    kind: str = "velocity",
    coupling: str = "independent",
    time_sampler="uniform",
    t=None,
    x1=None,
    ot_epsilon=1e-3,
):
    """Conditional flow matching (Lipman et al. 2023; Liu et al. 2023) on any path.

        loss_i = mean_d || u_hat(x_t, t) - (alpha'(t) x0 + sigma'(t) x1) ||^2,  x_t = alpha x0 + sigma x1,

    x1 ~ N(0, I) (or the given source batch `x1`, e.g. samples of another distribution) paired
    with x0 by `coupling`: "independent" (CFM), or minibatch OT, "exact" or "sinkhorn"
    (OT-CFM, Tong et al. 2023; see `ot_pairing`, `ot_epsilon` its Sinkhorn regularization).
    With independent Gaussian x1 the minimizer is the marginal PF-ODE velocity E[u | x_t] of the
    path. The model may predict any kind; it is converted to a velocity.
    """
    check_kind(kind)
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r} for `coupling`; accepted: {', '.join(COUPLINGS)}")
    key_t, key_eps, key_ot = jax.random.split(key, 3)
    t = _times(key_t, x0, path, time_sampler, t)
    if x1 is None:
        x1 = jax.random.normal(key_eps, jnp.shape(x0), jnp.result_type(x0))
    elif jnp.shape(x1) != jnp.shape(x0):
        raise ValueError(f"`x1` has shape {jnp.shape(x1)} but `x0` has shape {jnp.shape(x0)}; they must match")
    if coupling != "independent":
        x1 = x1[ot_pairing(key_ot, x0, x1, method=coupling, epsilon=ot_epsilon)]
    return _mean_data(_target_sq_error(model, kind, "velocity", path, x0, x1, t, cond))


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
    t = jnp.asarray(path.t_max if t is None else t, _time_dtype(x0))
    a = expand_to(path.alpha(t), x0, "t")
    logvar = 2.0 * jnp.log(path.sigma(t))
    prior_logvar = 2.0 * jnp.log(path.prior_std()).astype(logvar.dtype)
    kl = normal_kl(a * x0, expand_to(logvar, x0, "t"), jnp.zeros_like(x0), prior_logvar)
    return _sum_data(kl)


def vlb_diffusion_term(model, path: AbstractPath, key, x0, s, t, cond=None, *, kind: str = "eps"):
    """L_{s,t} = KL(q(x_s | x_t, x0) || p(x_s | x_t)) per example, in nats, x_t ~ q(x_t | x0).

    The reverse model is p(x_s | x_t) = q(x_s | x_t, x0_hat(x_t, t)) with the posterior variance
    (Ho et al. 2020's sigma_t^2 = beta_tilde), so the term equals
    0.5 (SNR_s - SNR_t) ||x0 - x0_hat||^2. `s` < `t` are scalars or (B,).
    """
    check_kind(kind)
    b, dt = jnp.shape(x0)[0], _time_dtype(x0)
    s, t = jnp.broadcast_to(jnp.asarray(s, dt), (b,)), jnp.broadcast_to(jnp.asarray(t, dt), (b,))
    eps = jax.random.normal(key, jnp.shape(x0), jnp.result_type(x0))
    x_t = _noised(path, x0, eps, t)
    x0_hat = convert(model(x_t, t, cond), kind, "x0", x_t, t, path)
    mean_q, logvar = q_posterior(path, x0, x_t, s, t)
    mean_p, _ = q_posterior(path, x0_hat, x_t, s, t)
    return _sum_data(normal_kl(mean_q, logvar, mean_p, logvar))


def vlb_reconstruction(model, path: AbstractPath, key, x0, t0=None, cond=None, *, kind: str = "eps",
                       num_bins: int | None = 256):
    """L_0 = -log p(x0 | x_{t0}) per example, in nats, x_{t0} ~ q(x_{t0} | x0) (t0 default t_min).

    The decoder is N(x0_hat(x_{t0}, t0), sigma_e^2) with sigma_e = sigma(t0)/alpha(t0), EDM's
    noise level at t0 (Ho et al. 2020's sigma_1^2 = beta_1 in the discrete chain), discretized to
    `num_bins` bins on [-1, 1] (Ho et al. 2020 eq. 13; data must lie on the bin centres), or a
    density (continuous data) with `num_bins=None`.
    """
    check_kind(kind)
    b, dt = jnp.shape(x0)[0], _time_dtype(x0)
    t0 = jnp.broadcast_to(jnp.asarray(path.t_min if t0 is None else t0, dt), (b,))
    eps = jax.random.normal(key, jnp.shape(x0), jnp.result_type(x0))
    x_t = _noised(path, x0, eps, t0)
    mean = convert(model(x_t, t0, cond), kind, "x0", x_t, t0, path)
    log_scale = expand_to(-0.5 * path.log_snr(t0), x0, "t")  # log(sigma / alpha)
    if num_bins is None:
        logp = -0.5 * ((x0 - mean) * jnp.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
    else:
        logp = discretized_gaussian_log_likelihood(x0, mean, log_scale, num_bins)
    return -_sum_data(logp)


class BoundTerms(NamedTuple):
    """A negative-ELBO decomposed into its terms, each (B,) in nats per example."""

    prior: jax.Array  # KL(q(x_T | x0) || p(x_T))
    diffusion: jax.Array  # sum of the KL terms (discrete) or the VDM integral (continuous)
    reconstruction: jax.Array  # -log p(x0 | x_{t0})

    @property
    def total(self):
        return self.prior + self.diffusion + self.reconstruction


def vlb_terms(
    model,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    kind: str = "eps",
    num_steps: int = 1000,
    grid=None,
    num_bins: int | None = 256,
    sum_all_terms: bool = False,
) -> BoundTerms:
    """The discrete-time negative ELBO of a T-step chain on the path, per example, in nats.

    On the grid t_0 < t_1 < ... < t_T (default `linspace(t_min, t_max, num_steps + 1)`):
        -ELBO = L_T + sum_{i=1..T} L_{t_{i-1}, t_i} + L_0,
    L_T = `vlb_prior` at t_T, L_{s,t} = `vlb_diffusion_term`, L_0 = `vlb_reconstruction` at t_0.
    The diffusion sum is estimated without bias by T L_{t_{i-1}, t_i} with one i ~ U{1..T} per
    example (one model call, for training), or summed exactly over all T terms with
    `sum_all_terms=True` (T model calls in a `lax.scan`, for evaluation).

    Args:
        grid: optional increasing array of T + 1 times (overrides `num_steps`).
        num_bins: decoder bins for data in [-1, 1] (256 for 8-bit images); None for a density.
    """
    check_kind(kind)
    dt = _time_dtype(x0)
    grid = jnp.linspace(path.t_min, path.t_max, num_steps + 1, dtype=dt) if grid is None else jnp.asarray(grid, dt)
    n = grid.shape[0] - 1
    key_rec, key_i, key_d = jax.random.split(key, 3)
    prior = vlb_prior(path, x0, grid[-1])
    rec = vlb_reconstruction(model, path, key_rec, x0, grid[0], cond, kind=kind, num_bins=num_bins)
    if sum_all_terms:

        def body(acc, i):
            term = vlb_diffusion_term(model, path, jax.random.fold_in(key_d, i), x0, grid[i - 1], grid[i], cond,
                                      kind=kind)
            return acc + term, None

        diffusion, _ = jax.lax.scan(body, jnp.zeros_like(prior), jnp.arange(1, n + 1))
    else:
        i = jax.random.randint(key_i, (jnp.shape(x0)[0],), 1, n + 1)
        diffusion = n * vlb_diffusion_term(model, path, key_d, x0, grid[i - 1], grid[i], cond, kind=kind)
    return BoundTerms(prior, diffusion, rec)


def vlb(model, path: AbstractPath, key, x0, cond=None, **options):
    """The discrete-time negative ELBO per example in nats (the total of `vlb_terms`, same options)."""
    return vlb_terms(model, path, key, x0, cond, **options).total


# -----------------------------------------------------------------------------------
# Continuous-time VDM bound (Kingma et al. 2021)
# -----------------------------------------------------------------------------------


def vdm_terms(
    model,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    kind: str = "eps",
    antithetic: bool = True,
    num_bins: int | None = 256,
    t=None,
) -> BoundTerms:
    """The continuous-time negative ELBO of VDM (Kingma et al. 2021, eq. 17), per example, in nats.

        diffusion = -0.5 (t_max - t_min) lambda'(t) ||eps - eps_hat(x_t, t)||^2,  t ~ U[t_min, t_max],

    an unbiased one-sample estimate of L_inf = -0.5 int_{t_min}^{t_max} lambda'(t) E||eps - eps_hat||^2 dt,
    with lambda' from `path.d_log_snr` (forward-mode autodiff for learned schedules, e.g.
    `jdiff.schedules.LearnedLogSNR`, so gradients reach the schedule's parameters).
    Included terms: prior = KL(q(x_{t_max} | x0) || N(0, sigma(t_max)^2)) (`vlb_prior`) and
    reconstruction = -log p(x0 | x_{t_min}) (`vlb_reconstruction`, discretized with `num_bins`,
    or a density with None). Times are stratified over the batch when `antithetic`.
    """
    check_kind(kind)
    key_t, key_eps, key_rec = jax.random.split(key, 3)
    sampler = stratified_time if antithetic else uniform_time
    t = _times(key_t, x0, path, sampler, t)
    eps = jax.random.normal(key_eps, jnp.shape(x0), jnp.result_type(x0))
    sq = _sum_data(_target_sq_error(model, kind, "eps", path, x0, eps, t, cond))
    diffusion = -0.5 * (path.t_max - path.t_min) * path.d_log_snr(t) * sq
    prior = vlb_prior(path, x0)
    rec = vlb_reconstruction(model, path, key_rec, x0, path.t_min, cond, kind=kind, num_bins=num_bins)
    return BoundTerms(prior, diffusion, rec)


def vdm_loss(model, path: AbstractPath, key, x0, cond=None, **options):
    """The VDM continuous-time negative ELBO per example in nats (the total of `vdm_terms`)."""
    return vdm_terms(model, path, key, x0, cond, **options).total
