"""MeanFlow (Geng et al. 2025): the average velocity trained through the MeanFlow identity."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jdiff._shared import cond_velocity, loss_batch, noised, sum_data
from jdiff.flowmaps._flowmap import FlowMap, average_velocity_net
from jdiff.losses import logit_normal_time
from jdiff.paths import expand_to


def meanflow_target(u: Callable, z, r, t, v, cond=None):
    """The MeanFlow identity's target u_tgt = v - (t - r) d/dt u(z_t, r, t) (Geng et al. 2025, Eq. 10).

    d/dt u = v . grad_z u + partial_t u is the total derivative along the trajectory, computed
    as one forward-mode product `jax.jvp` of (z, r, t) -> u with tangents (v, 0, 1).

    Args:
        u: the average-velocity network u(z, t, r, cond) over [r, t] (jdiff's argument order:
            from t to s = r), e.g. `flow.net` of an AverageVelocity `FlowMap`.
        z: points z_t (N, ...); r, t: (N,) times with r <= t; v: the velocity at (z, t) that
            drives the trajectory (the conditional velocity in training).

    Returns:
        (u(z, t, r), u_tgt), neither under stop_gradient.
    """
    u_val, dudt = jax.jvp(lambda z_, r_, t_: u(z_, t_, r_, cond), (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    return u_val, v - expand_to(t - r, z, "t") * dudt


def _where_tree(mask, a, b):
    """Per-example select between two pytrees whose leaves lead with the batch axis."""

    def pick(x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        y = jnp.broadcast_to(y, x.shape)
        return jnp.where(expand_to(mask, x, "cond"), x, y)

    return jax.tree_util.tree_map(pick, a, b)


def meanflow_loss(
    flow: FlowMap,
    key,
    x0,
    *,
    cond=None,
    fraction_r_neq_t: float = 0.25,
    time_mean: float = -0.4,
    time_std: float = 1.0,
    adaptive_p: float = 1.0,
    adaptive_c: float = 1e-3,
    guidance_scale=None,
    guidance_kappa: float = 0.0,
    null_cond=None,
    cond_drop_prob: float = 0.1,
):
    """The MeanFlow loss (Geng et al. 2025), per example, on the flow map's path.

    z_t = alpha x0 + sigma eps, v = alpha' x0 + sigma' eps, Delta = u(z_t, t, r) - sg(u_tgt)
    with u = `flow.net` and u_tgt from `meanflow_target`, and the adaptive weight
    w = sg(1 / (||Delta||^2 + c)^p) (their Eq. 20: p = 1, c = 1e-3); returns w ||Delta||^2, the
    squared norm summed over the example. Times: t, r each logit-normal (mean -0.4, std 1, their
    best; `logit_normal_time`), sorted so r <= t, and r = t for a fraction 1 - `fraction_r_neq_t`
    of examples (their best: 25% r != t).

    Guidance folded into the target (their Eq. 19 and its kappa variant, Appendix B.1): with
    `guidance_scale` omega the velocity becomes
    v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null), both u under
    stop_gradient; the class is dropped (cond -> null_cond, v~ -> v) with probability
    `cond_drop_prob`. One-step sampling of the resulting flow map is then guided at no extra cost.

    Args:
        flow: a `FlowMap` with the `AverageVelocity()` parameterization; its network is
            u(z, t, r, cond), the average velocity over [r, t] (jdiff's (x, t, s) order).
        key: PRNG key (times, noise, label dropping).
        x0: (N, ...) data batch.
        cond: conditioning pytree or None.
        fraction_r_neq_t: the fraction of examples with r != t.
        time_mean, time_std: the logit-normal of the times.
        adaptive_p, adaptive_c: the adaptive weight's p and c (p = 0: the plain squared error).
        guidance_scale: None (no guidance; no dropping) or omega >= 1.
        guidance_kappa: kappa of the guided target.
        null_cond: the "no class" conditioning, same structure as `cond` (leaves broadcastable
            to cond's); required with guidance_scale.
        cond_drop_prob: the probability of dropping the class with guidance.
    """
    u = average_velocity_net(flow)
    key, x0 = loss_batch(flow, key, x0)
    path = flow.path
    dtype = jnp.result_type(x0)
    n = jnp.shape(x0)[0]
    k_t, k_r, k_keep, k_eps, k_drop = jax.random.split(key, 5)
    a = logit_normal_time(k_t, (n,), path, dtype, mean=time_mean, std=time_std)
    b = logit_normal_time(k_r, (n,), path, dtype, mean=time_mean, std=time_std)
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    r = jnp.where(jax.random.uniform(k_keep, (n,), dtype) < fraction_r_neq_t, r, t)
    eps = jax.random.normal(k_eps, jnp.shape(x0), dtype)
    z = noised(path, x0, eps, t)
    v = cond_velocity(path, x0, eps, t)
    if guidance_scale is not None:
        if null_cond is None or cond is None:
            raise ValueError("`guidance_scale` needs both `cond` and `null_cond` (the unconditional token)")
        null = jax.tree_util.tree_map(
            lambda c, nc: jnp.broadcast_to(jnp.asarray(nc, jnp.result_type(c)), jnp.shape(c)), cond, null_cond
        )
        u_unc = u(z, t, t, null)
        u_cond = u(z, t, t, cond) if guidance_kappa else jnp.zeros_like(z)
        v_g = guidance_scale * v + guidance_kappa * u_cond + (1.0 - guidance_scale - guidance_kappa) * u_unc
        keep = jax.random.uniform(k_drop, (n,), dtype) >= cond_drop_prob
        v = jnp.where(expand_to(keep, z, "cond"), jax.lax.stop_gradient(v_g), v)
        cond = _where_tree(keep, cond, null)
    u_val, u_tgt = meanflow_target(u, z, r, t, v, cond)
    err = sum_data(jnp.square(u_val - jax.lax.stop_gradient(u_tgt)))
    w = jax.lax.stop_gradient(1.0 / (err + adaptive_c) ** adaptive_p)
    return w * err
