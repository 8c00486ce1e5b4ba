"""Private helpers of the training objectives, shared by `jdiff.losses` and `jdiff.flowmaps`.

Each is written once here: noising along a path, the conditional velocity, per-example
reductions over the data axes, and EDM's noise level sigma_e = sigma / alpha as a function of
the path time (and back).
"""

from __future__ import annotations

import jax.numpy as jnp

from jdiff._checks import check_batched, check_key
from jdiff.paths import AbstractPath, expand_to


def loss_batch(owner, key, x0, name: str = "x0"):
    """The (key, x0) of a loss, checked: a PRNG key, and x0 a floating-point batch (B, ...) promoted
    to the state dtype of `owner` (a `jdiff.Model` or `flowmaps.FlowMap`): a bfloat16 batch trains
    a bfloat16 network on float32 noise, times and errors."""
    return check_key(key), check_batched(owner.state(x0, name), name)


def noised(path: AbstractPath, x0, eps, t):
    """x_t = alpha(t) x0 + sigma(t) eps, with t a scalar or one time per example."""
    return expand_to(path.alpha(t), x0, "t") * x0 + expand_to(path.sigma(t), x0, "t") * eps


def cond_velocity(path: AbstractPath, x0, eps, t):
    """The conditional flow-matching velocity d/dt x_t = alpha'(t) x0 + sigma'(t) eps."""
    return expand_to(path.d_alpha(t), x0, "t") * x0 + expand_to(path.d_sigma(t), x0, "t") * eps


def mean_data(x):
    """Mean over every axis but the leading (batch) one: one value per example (`mean_flat`)."""
    return jnp.mean(jnp.reshape(x, (jnp.shape(x)[0], -1)), axis=1)


def sum_data(x):
    """Sum over every axis but the leading (batch) one: one value per example."""
    return jnp.sum(jnp.reshape(x, (jnp.shape(x)[0], -1)), axis=1)


def edm_sigma(path: AbstractPath, t):
    """EDM's noise level sigma_e = sigma / alpha = exp(-lambda / 2) of the path at t."""
    return jnp.exp(-0.5 * path.log_snr(t))


def t_from_log_edm_sigma(path: AbstractPath, log_sigma):
    """The time whose EDM noise level is exp(log_sigma): the inverse of `edm_sigma` in log form."""
    return path.t_from_log_snr(-2.0 * log_sigma)
