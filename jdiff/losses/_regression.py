"""Regression losses: weighted denoising score matching, DDPM's simple loss, EDM."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from jdiff._model import Model, check_model
from jdiff._shared import loss_batch, mean_data, noised
from jdiff.losses._time import lognormal_time, sample_times, uniform_time
from jdiff.losses._weighting import EDMWeighting, check_weighting, loss_weight
from jdiff.predictions import check_kind, from_x0_eps


def target_sq_error(model: Model, target, x0, eps, t, cond):
    """Elementwise squared error (B, ...) of the model in `target` space at x_t = alpha x0 + sigma eps."""
    path = model.path
    x_t = noised(path, x0, eps, t)
    pred = model.predict(x_t, t, cond, kind=target)
    return (pred - from_x0_eps(x0, eps, target, x_t, t, path)) ** 2


def dsm_loss(
    model: Model,
    key: PRNGKeyArray,
    x0: Float[Array, " batch *_rest"],
    *,
    cond=None,
    target: str | None = None,
    weighting=None,
    time_sampler=uniform_time,
    t=None,
) -> Float[Array, " batch"]:
    """Weighted denoising score matching for any prediction kind and target space.

        loss_i = w(t_i) * mean_d (model.predict(x_t, t, cond, kind=target) - target_true)^2

    with x_t = alpha x0 + sigma eps along `model.path`, eps ~ N(0, I), t ~ `time_sampler`. The
    minimizer (any weighting > 0) is the exact target E[target | x_t]; its irreducible value
    is w ratio_target E[tr Cov(x0 | x_t)] / D (ratio_target in `jdiff.losses.loss_weight`).

    Args:
        model: the `jdiff.Model` (network, path, prediction kind) being trained; called once
            with t of shape (B,).
        key: PRNG key (split for the times and the noise).
        x0: (B, ...) data batch.
        cond: conditioning pytree passed to the model, or None.
        target: the space in which the error is measured, "x0", "eps", "v", "score" or
            "velocity" (default: `model.kind`, the network's own output).
        weighting: None (unit weight in `target` space), an `AbstractWeighting` (defined on
            the x0 error: `SNRWeighting()`, `MinSNRWeighting(gamma)`, `LikelihoodWeighting()`,
            `EDMWeighting(sigma_data)`) or a callable (t, path) -> weight on the target-space
            error; see `loss_weight`.
        time_sampler: a callable (key, shape, path, dtype) -> t, e.g. `uniform_time`,
            `stratified_time`, `functools.partial(lognormal_time, p_mean=-1.2)`.
        t: optional (B,) or scalar times, overriding the sampler.
    Returns:
        (B,) per-example losses.
    """
    check_model(model)
    key, x0 = loss_batch(model, key, x0)
    target = model.kind if target is None else check_kind(target, "target")
    check_weighting(weighting)
    key_t, key_eps = jax.random.split(key)
    t = sample_times(key_t, x0, model.path, time_sampler, t)
    eps = jax.random.normal(key_eps, jnp.shape(x0), jnp.result_type(x0))
    err = mean_data(target_sq_error(model, target, x0, eps, t, cond))
    return loss_weight(weighting, t, model.path, target) * err


def ddpm_loss(
    model: Model, key: PRNGKeyArray, x0: Float[Array, " batch *_rest"], *, cond=None, time_sampler=uniform_time, t=None
) -> Float[Array, " batch"]:
    """DDPM's simple loss (Ho et al. 2020, eq. 14): mean_d ||eps - eps_hat(x_t, t)||^2, t uniform.

    Continuous-time form on `model.path`; the model may predict any kind (it is converted to eps).
    Its minimum, reached by the exact model, is SNR(t) E[tr Cov(x0 | x_t)] / D at each t.
    """
    return dsm_loss(model, key, x0, cond=cond, target="eps", weighting=None, time_sampler=time_sampler, t=t)


def edm_loss(
    model: Model,
    key: PRNGKeyArray,
    x0: Float[Array, " batch *_rest"],
    *,
    cond=None,
    p_mean=-1.2,
    p_std=1.2,
    sigma_data=0.5,
    t=None,
) -> Float[Array, " batch"]:
    """The EDM loss (Karras et al. 2022, eq. 8 and Table 1) on any path.

        loss_i = lambda(sigma_e) mean_d ||D(x_t, t) - x0||^2,  lambda = (sigma_e^2 + sd^2)/(sigma_e sd)^2,

    with log sigma_e ~ N(p_mean, p_std^2), sigma_e = sigma/alpha (`lognormal_time`), D the
    denoiser `model.x0`. Use it with the preconditioned model `jdiff.edm_denoiser(net, path,
    sigma_data)`: then lambda = 1 / c_out^2 and the loss is the unit-weight MSE of the raw
    network output against its effective target (x0 - c_skip x_t) / c_out, EDM's design.
    """
    sampler = functools.partial(lognormal_time, p_mean=p_mean, p_std=p_std)
    return dsm_loss(
        model, key, x0, cond=cond, target="x0", weighting=EDMWeighting(sigma_data), time_sampler=sampler, t=t
    )
