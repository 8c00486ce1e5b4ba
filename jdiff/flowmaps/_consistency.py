"""Consistency models: improved consistency training and consistency distillation."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jdiff._shared import edm_sigma, loss_batch, noised, sum_data, t_from_log_edm_sigma
from jdiff.flowmaps._flowmap import FlowMap, check_flow


def pseudo_huber(x, y, c=None):
    """Per-example pseudo-Huber distance sqrt(||x - y||^2 + c^2) - c (Song & Dhariwal 2023).

    c defaults to 0.00054 sqrt(d), d the number of values in one example (their Section 3.3:
    c = 0.03 for 64x64x3 images).
    """
    if c is None:
        c = 0.00054 * math.sqrt(math.prod(jnp.shape(x)[1:]))
    return jnp.sqrt(sum_data(jnp.square(x - y)) + c * c) - c


def ict_num_scales(step, total_steps: int, s0: int = 10, s1: int = 1280):
    """Number of discretization steps N(k) of improved consistency training.

    N(k) = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2(s1 / s0) + 1))
    (Song & Dhariwal 2023, Eq. 8: the exponential curriculum, doubling every K' steps).
    `step` may be traced.
    """
    k_prime = max(math.floor(total_steps / (math.log2(s1 / s0) + 1)), 1)
    doublings = jnp.floor_divide(jnp.asarray(step), k_prime)
    n = jnp.minimum(s0 * 2.0 ** jnp.minimum(doublings, 62), s1)
    return n.astype(jnp.int32) + 1


def karras_sigmas(i, n, sigma_min, sigma_max, rho: float = 7.0):
    """The i-th of n EDM noise levels, i = 0 .. n - 1 increasing from sigma_min to sigma_max.

    sigma_i = (sigma_min^(1/rho) + i / (n - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho
    (Karras et al. 2022, Eq. 5, rho = 7). `i` and `n` may be traced.
    """
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + i / (n - 1) * (hi - lo)) ** rho


def ict_noise_level_probs(num_scales, sigma_min, sigma_max, *, rho=7.0, p_mean=-1.1, p_std=2.0, max_scales=1280):
    """Probabilities of the iCT noise-level pairs (sigma_i, sigma_{i+1}), i = 0 .. max_scales - 1.

    p(i) is proportional to erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i -
    P_mean) / (sqrt 2 P_std)) for i < num_scales - 1 and 0 beyond (Song & Dhariwal 2023, Sec. 3.5:
    the discretized lognormal with P_mean = -1.1, P_std = 2). The table has the fixed size
    `max_scales` (the curriculum's s1), so `num_scales` may be traced.
    """
    idx = jnp.arange(max_scales)
    lo = jnp.log(karras_sigmas(idx, num_scales, sigma_min, sigma_max, rho))
    hi = jnp.log(karras_sigmas(idx + 1, num_scales, sigma_min, sigma_max, rho))
    scale = 1.0 / (math.sqrt(2.0) * p_std)
    mass = jax.scipy.special.erf((hi - p_mean) * scale) - jax.scipy.special.erf((lo - p_mean) * scale)
    mass = jnp.where(idx < num_scales - 1, mass, 0.0)
    return mass / jnp.sum(mass)


def _edm_range(path, sigma_min, sigma_max):
    sigma_min = edm_sigma(path, jnp.asarray(path.t_min)) if sigma_min is None else sigma_min
    sigma_max = edm_sigma(path, jnp.asarray(path.t_max)) if sigma_max is None else sigma_max
    return sigma_min, sigma_max


def _t_of_sigma(path, sigma, dtype):
    return t_from_log_edm_sigma(path, jnp.log(sigma)).astype(dtype)


def _consistency_pair(path, key, x0, n, sigma_min, sigma_max, rho, index_logits=None):
    """Draw a discretization index per example (from `index_logits`, or uniform in 0 .. n - 2);
    return (t_i, t_{i+1}, eps, weight 1 / (sigma_{i+1} - sigma_i))."""
    k_idx, k_eps = jax.random.split(key)
    if index_logits is None:
        i = jax.random.randint(k_idx, jnp.shape(x0)[:1], 0, n - 1)
    else:
        i = jax.random.categorical(k_idx, index_logits, shape=jnp.shape(x0)[:1])
    s_lo = karras_sigmas(i, n, sigma_min, sigma_max, rho)
    s_hi = karras_sigmas(i + 1, n, sigma_min, sigma_max, rho)
    dtype = jnp.result_type(x0)
    eps = jax.random.normal(k_eps, jnp.shape(x0), dtype)
    return _t_of_sigma(path, s_lo, dtype), _t_of_sigma(path, s_hi, dtype), eps, (1.0 / (s_hi - s_lo)).astype(dtype)


def _target_flow(flow, target_flow):
    return flow if target_flow is None else check_flow(target_flow, "target_flow")


def consistency_training_loss(
    flow: FlowMap,
    key,
    x0,
    *,
    cond=None,
    step,
    total_steps: int,
    target_flow: FlowMap | None = None,
    s0: int = 10,
    s1: int = 1280,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    rho: float = 7.0,
    sigma_min=None,
    sigma_max=None,
    huber_c=None,
):
    """Improved consistency training (iCT; Song & Dhariwal 2023), per example.

    lambda(sigma_i) d(f(x0 + sigma_{i+1} z, sigma_{i+1}), sg f(x0 + sigma_i z, sigma_i)) with
    the same z at both levels, written on any path: x_t = alpha(t) x0 + sigma(t) z at the times
    t_i whose EDM noise level sigma_e = sigma/alpha is the Karras level sigma_i (rho = 7) of
    N(step) = `ict_num_scales(step, total_steps, s0, s1)` levels; i is drawn with probability
    proportional to erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i - P_mean)
    / (sqrt 2 P_std)) (lognormal, P_mean = -1.1, P_std = 2); lambda = 1 / (sigma_{i+1} - sigma_i);
    d = `pseudo_huber` with c = 0.00054 sqrt(dim). The consistency function maps to the time
    t_end of sigma_min (path.t_min by default; VE defaults are EDM's 0.002 and 80).

    Args:
        flow: the online `FlowMap` f(x, t, s, cond) being trained (its path is the clock).
        key: PRNG key for the noise level and the noise.
        x0: a batch of data (N, ...).
        cond: conditioning pytree or None.
        step, total_steps: the training step k (may be traced) and the total K, for N(k).
        target_flow: the target ("teacher") `FlowMap` f^- on the same path; None uses the
            online one under stop_gradient, as iCT does (EMA decay 0 for the target).
        s0, s1: the curriculum's initial and final number of steps (iCT: 10, 1280).
        p_mean, p_std: the lognormal of the noise-level choice (iCT: -1.1, 2).
        rho: the Karras level spacing (7).
        sigma_min, sigma_max: EDM noise range; defaults are the path's at t_min and t_max.
        huber_c: pseudo-Huber c; default 0.00054 sqrt(dim).
    """
    check_flow(flow)
    key, x0 = loss_batch(flow, key, x0)
    path = flow.path
    target_flow = _target_flow(flow, target_flow)
    sigma_min, sigma_max = _edm_range(path, sigma_min, sigma_max)
    n = ict_num_scales(step, total_steps, s0, s1)
    probs = ict_noise_level_probs(n, sigma_min, sigma_max, rho=rho, p_mean=p_mean, p_std=p_std, max_scales=s1)
    logits = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
    t_lo, t_hi, eps, weight = _consistency_pair(path, key, x0, n, sigma_min, sigma_max, rho, logits)
    t_end = _t_of_sigma(path, jnp.asarray(sigma_min), jnp.result_type(x0))
    target = jax.lax.stop_gradient(target_flow(noised(path, x0, eps, t_lo), t_lo, t_end, cond))
    pred = flow(noised(path, x0, eps, t_hi), t_hi, t_end, cond)
    return weight * pseudo_huber(pred, target, huber_c)


def consistency_distillation_loss(
    flow: FlowMap,
    key,
    x0,
    *,
    cond=None,
    teacher_step: Callable,
    target_flow: FlowMap | None = None,
    num_scales=18,
    rho: float = 7.0,
    sigma_min=None,
    sigma_max=None,
    huber_c=None,
):
    """Consistency distillation (Song et al. 2023, Algorithm 2), per example.

    d(f(x_{t_{n+1}}, t_{n+1}), sg f^-(x_hat_{t_n}, t_n)), x_{t_{n+1}} = alpha x0 + sigma z and
    x_hat_{t_n} = teacher_step(x_{t_{n+1}}, t_{n+1}, t_n, cond): one step of an ODE solver on the
    teacher's PF-ODE (`solver_step` builds it from any jdiff.Model and jdiff.samplers solver).
    The N = `num_scales` levels (may be traced; their CD uses 18) are Karras's (rho = 7) on the
    EDM range, n uniform; d is the pseudo-Huber distance (c = 0.00054 sqrt(dim); pass
    huber_c=0 for the L2 distance).

    Args:
        flow: the online `FlowMap` (the student; its path is the clock).
        key: PRNG key for the level index and the noise.
        x0: a batch of data (N, ...).
        cond: conditioning pytree or None (passed to the teacher step and the flow maps).
        teacher_step: (x, t, s, cond) -> x_s with per-example t, s (shape x.shape[:1]).
        target_flow: the EMA target `FlowMap` f^- (Song et al. use EMA decay 0.95 for CD);
            None uses the online one under stop_gradient.
        num_scales, rho, sigma_min, sigma_max: the Karras levels (defaults: 18, 7, the path's range).
        huber_c: pseudo-Huber c; default 0.00054 sqrt(dim).
    """
    check_flow(flow)
    key, x0 = loss_batch(flow, key, x0)
    path = flow.path
    target_flow = _target_flow(flow, target_flow)
    sigma_min, sigma_max = _edm_range(path, sigma_min, sigma_max)
    t_lo, t_hi, eps, _ = _consistency_pair(path, key, x0, num_scales, sigma_min, sigma_max, rho)
    t_end = _t_of_sigma(path, jnp.asarray(sigma_min), jnp.result_type(x0))
    x_hi = noised(path, x0, eps, t_hi)
    x_lo = jax.lax.stop_gradient(teacher_step(x_hi, t_hi, t_lo, cond))
    target = jax.lax.stop_gradient(target_flow(x_lo, t_lo, t_end, cond))
    return pseudo_huber(flow(x_hi, t_hi, t_end, cond), target, huber_c)
