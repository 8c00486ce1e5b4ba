"""Time samplers: (key, shape, path, dtype=None) -> times in [path.t_min, path.t_max]."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jdiff._checks import check_path, check_time_shape, check_times_in_range
from jdiff._shared import t_from_log_edm_sigma
from jdiff.paths import AbstractPath


def _dtype(dtype):
    return jnp.result_type(float) if dtype is None else dtype


def _affine(u, path: AbstractPath):
    """Map u in [0, 1] to [t_min, t_max]."""
    check_path(path)
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
    t = t_from_log_edm_sigma(path, log_sigma).astype(dtype)
    return jnp.clip(t, path.t_min, path.t_max) if clip else t


def logit_normal_time(key, shape, path: AbstractPath, dtype=None, *, mean=0.0, std=1.0):
    """Logit-normal times (Esser et al. 2024, SD3): t = t_min + (t_max - t_min) sigmoid(mean + std z)."""
    return _affine(jax.nn.sigmoid(mean + std * jax.random.normal(key, shape, _dtype(dtype))), path)


def time_dtype(x0):
    """The dtype of the times of a batch x0: at least float32 (bfloat16 resolves t only to ~1/256)."""
    return jnp.promote_types(jnp.result_type(x0), jnp.float32)


def check_time_sampler(time_sampler):
    """`time_sampler` must be a callable; names live in experiments._names.get_time_sampler."""
    if not callable(time_sampler):
        raise TypeError(
            "`time_sampler` must be a callable (key, shape, path, dtype) -> t, such as "
            f"jdiff.losses.uniform_time or functools.partial(jdiff.losses.lognormal_time, p_mean=-1.2); "
            f"got {time_sampler!r} (names are looked up by experiments._names.get_time_sampler)"
        )
    return time_sampler


def sample_times(key, x0, path: AbstractPath, time_sampler, t):
    """One time per example (B,), drawn by `time_sampler` unless given as `t` (scalar or (B,))."""
    check_time_sampler(time_sampler)
    check_path(path)
    b = jnp.shape(x0)[0]
    if t is not None:
        check_times_in_range(check_time_shape(t, b, "t"), path, "t")
        return jnp.broadcast_to(jnp.asarray(t, time_dtype(x0)), (b,))
    return time_sampler(key, (b,), path, time_dtype(x0))
