"""Multistep flow-map sampling in one `lax.scan`, deterministic or with re-noising."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdiff._checks import check_batched, check_key
from jdiff.flowmaps._flowmap import FlowMap, check_flow
from jdiff.samplers import check_grid


def sample(flow: FlowMap, x_T, grid, *, cond=None, key=None, gamma=0.0):
    """Run a flow map along a decreasing time grid t_0 > t_1 > ... > t_n in one `lax.scan`.

    gamma = 0 (default) is the deterministic multistep map x_{i+1} = f(x_i, t_i, t_{i+1}); a
    one-step sampler is the 2-point grid [t_max, t_min]. With 0 < gamma <= 1 each step is
    CTM's gamma-sampling (Kim et al. 2023): jump to the time t' whose EDM noise level is
    sqrt(1 - gamma^2) sigma_e(t_{i+1}), rescale to alpha(t_{i+1}), and add fresh noise
    gamma sigma(t_{i+1}) z, so that x_{i+1} again has the marginal noise level of t_{i+1}.
    gamma = 1 jumps to the data end (path.t_min) and re-noises: the multistep consistency
    sampler of Song et al. (2023), Algorithm 1.

    Args:
        flow: the `FlowMap` f(x, t, s, cond) (its path gives alpha, sigma and the clock).
        x_T: starting points at grid[0] (a batch), e.g. `flow.path.prior_sample(key, shape)`.
        grid: (n + 1,) strictly decreasing times; a traced array (a new grid of the same length
            does not recompile).
        cond: conditioning pytree passed to the flow map, or None.
        key: PRNG key, required when gamma > 0 (step i uses `fold_in(key, i)`).
        gamma: re-noising fraction in [0, 1] (scalar, may be traced).

    Returns:
        The samples at grid[-1], in the state dtype (`flow.policy.state_dtype(x_T)`, at least float32).
    """
    check_flow(flow)
    path = flow.path
    x_T = check_batched(flow.state(x_T, "x_T"), "x_T")
    grid = check_grid(grid, path=path).astype(x_T.dtype)
    if key is None:
        if not (isinstance(gamma, (int, float)) and gamma == 0):
            raise ValueError("`key` is required when `gamma` is nonzero (re-noising draws fresh noise)")
        key = jax.random.key(0)  # unused: the noise is multiplied by gamma = 0
    else:
        check_key(key)
    gamma = jnp.asarray(gamma, grid.dtype)

    def step(x, inp):
        i, t, t_next = inp
        # Intermediate time t' with log-SNR lambda(t_next) - log(1 - gamma^2); t' = t_next exactly at gamma = 0.
        lam = path.log_snr(t_next) - jnp.log1p(-(gamma**2))
        t_mid = jnp.clip(path.t_from_log_snr(lam), jnp.minimum(path.t_min, t_next), t_next)
        t_mid = jnp.where(gamma == 0, t_next, t_mid)
        x_mid = flow(x, t, t_mid, cond)
        z = jax.random.normal(jax.random.fold_in(key, i), jnp.shape(x), jnp.result_type(x))
        scale = path.alpha(t_next) / path.alpha(t_mid)
        x_next = scale * x_mid + gamma * path.sigma(t_next) * z
        return x_next.astype(jnp.result_type(x)), None

    n = grid.shape[0] - 1
    x, _ = jax.lax.scan(step, x_T, (jnp.arange(n), grid[:-1], grid[1:]))
    return x
