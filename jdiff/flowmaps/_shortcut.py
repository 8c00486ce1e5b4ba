"""Shortcut models (Frans et al. 2025): flow matching plus "two d-steps = one 2d-step"."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jdiff._shared import cond_velocity, loss_batch, mean_data, noised
from jdiff.flowmaps._flowmap import FlowMap, average_velocity_net
from jdiff.paths import expand_to


def shortcut_loss(
    flow: FlowMap,
    key,
    x0,
    *,
    cond=None,
    max_steps: int = 128,
    consistency_fraction: float = 0.25,
):
    """The shortcut-model loss (Frans et al. 2025), per example, on the flow map's path.

    The network u = `flow.net` of an `AverageVelocity` flow map is the average velocity
    u(x_t, t, s) over [s, t] (step size d = t - s). The first round(fraction * N) examples of
    the batch are self-consistency examples (their 1/4): d = 2^j delta with j uniform in
    {0, .., log2(max_steps) - 1}, delta = (t_max - t_min) / max_steps, t uniform on the grid
    t_min + 2d {1, 2, ..}, and target sg((u(x_t, t, t - d) + u(x', t - d, t - 2d)) / 2) with
    x' = x_t - d u(x_t, t, t - d) for u(x_t, t, t - 2d): two d-steps equal one 2d-step. The
    others are flow-matching examples (d = 0: s = t, target the conditional velocity
    alpha' x0 + sigma' eps), with t uniform on [t_min, t_max]. Returns the squared error
    ||u - target||^2 averaged over the example's values.

    Args:
        flow: a `FlowMap` with the `AverageVelocity()` parameterization.
        key: PRNG key (times, step sizes, noise).
        x0: (N, ...) data batch.
        cond: conditioning pytree (leaves lead with the batch axis) or None.
        max_steps: M, the finest step count (a power of two): the smallest d is span / M.
        consistency_fraction: the fraction of the batch used for self-consistency examples.
    """
    u = average_velocity_net(flow)
    key, x0 = loss_batch(flow, key, x0)
    path = flow.path
    levels = round(math.log2(max_steps))
    if 2**levels != max_steps or levels < 1:
        raise ValueError(f"`max_steps` must be a power of two >= 2; got {max_steps}")
    dtype = jnp.result_type(x0)
    n = jnp.shape(x0)[0]
    n_sc = round(consistency_fraction * n)
    k_t, k_j, k_m, k_eps = jax.random.split(key, 4)
    eps = jax.random.normal(k_eps, jnp.shape(x0), dtype)
    span = path.t_max - path.t_min
    delta = span / max_steps
    losses = []
    if n_sc < n:  # flow-matching part
        t_fm = path.t_min + span * jax.random.uniform(k_t, (n - n_sc,), dtype)
        x_fm, e_fm = x0[n_sc:], eps[n_sc:]
        c_fm = None if cond is None else jax.tree_util.tree_map(lambda c: c[n_sc:], cond)
        z_fm = noised(path, x_fm, e_fm, t_fm)
        losses.append(mean_data(jnp.square(u(z_fm, t_fm, t_fm, c_fm) - cond_velocity(path, x_fm, e_fm, t_fm))))
    if n_sc == 0:
        return losses[0]
    # Self-consistency part: 2d-steps on a grid that fits into [t_min, t_max].
    j = jax.random.randint(k_j, (n_sc,), 0, levels)
    scale = jnp.exp2(j.astype(dtype))  # 2^j in the state dtype (2.0**j of an int array is float64 under x64)
    d = (delta * scale).astype(dtype)
    m = jnp.floor(jax.random.uniform(k_m, (n_sc,), dtype) * (max_steps // 2) / scale) + 1.0  # 1 .. M / 2^(j+1)
    t = path.t_min + 2.0 * d * m
    x_sc, e_sc = x0[:n_sc], eps[:n_sc]
    c_sc = None if cond is None else jax.tree_util.tree_map(lambda c: c[:n_sc], cond)
    z = noised(path, x_sc, e_sc, t)
    u1 = u(z, t, t - d, c_sc)
    u2 = u(z - expand_to(d, z, "t") * u1, t - d, t - 2.0 * d, c_sc)
    target = jax.lax.stop_gradient(0.5 * (u1 + u2))
    loss_sc = mean_data(jnp.square(u(z, t, t - 2.0 * d, c_sc) - target))
    return jnp.concatenate([loss_sc] + losses)
