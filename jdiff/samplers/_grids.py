"""Time grids: decreasing 1-D arrays t_0 = t_start > t_1 > ... > t_N = t_end.

Every grid has `num_steps + 1` entries. `num_steps` is a Python int (it fixes the
length, hence the shape of the sampler's `lax.scan`); `t_start` and `t_end` may be
traced, so a new grid of the same length never recompiles a jitted sampler. By default
a grid spans the whole finite range of the path, `path.t_max -> path.t_min`.

The end points are set exactly (not through `t_from_log_snr`, whose bisection or
closed form may round), so every grid of a path starts and ends at the same times.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jdiff._checks import check_path
from jdiff.paths import AbstractPath

__all__ = ["uniform_grid", "log_snr_grid", "karras_grid", "quadratic_grid", "save_grid", "load_grid"]


def _ends(path, num_steps, t_start, t_end):
    check_path(path)
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a Python int >= 1 (it fixes the grid length); got {num_steps!r}")
    dtype = jnp.result_type(float)
    t_start = jnp.asarray(path.t_max if t_start is None else t_start, dtype)
    t_end = jnp.asarray(path.t_min if t_end is None else t_end, dtype)
    return t_start, t_end, dtype


def _pin_ends(ts, t_start, t_end):
    return ts.at[0].set(t_start).at[-1].set(t_end)


def uniform_grid(path: AbstractPath, num_steps: int, *, t_start=None, t_end=None) -> Float[Array, " n"]:
    """Equal steps in t: t_i = t_start + i / N (t_end - t_start)."""
    t_start, t_end, dtype = _ends(path, num_steps, t_start, t_end)
    u = jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    return t_start + u * (t_end - t_start)


def log_snr_grid(path: AbstractPath, num_steps: int, *, t_start=None, t_end=None) -> Float[Array, " n"]:
    """Equal steps in log-SNR lambda = log(alpha^2 / sigma^2), mapped back by `path.t_from_log_snr`.

    This is the grid of DPM-Solver (Lu et al. 2022, "logSNR" time steps): the exponential
    integrators are exact for a constant data prediction and their error is a function
    of the step h in lambda only.
    """
    t_start, t_end, dtype = _ends(path, num_steps, t_start, t_end)
    lam0, lam1 = path.log_snr(t_start), path.log_snr(t_end)
    u = jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    return _pin_ends(path.t_from_log_snr(lam0 + u * (lam1 - lam0)), t_start, t_end)


def karras_grid(path: AbstractPath, num_steps: int, *, rho=7.0, t_start=None, t_end=None) -> Float[Array, " n"]:
    """The EDM schedule (Karras et al. 2022, eq. 5) in EDM's noise level sigma_e = sigma / alpha.

    sigma_i = (sigma_max^(1/rho) + i/N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, with
    sigma_max, sigma_min the noise levels at t_start, t_end; rho = 7 is EDM's choice
    (their Fig. 13: the error is flat for rho in [5, 10]). Times come back through the path:
    t_i = t_from_log_snr(-2 log sigma_i).
    """
    t_start, t_end, dtype = _ends(path, num_steps, t_start, t_end)
    # sigma_e^(1/rho) = exp(-lambda / (2 rho)), computed from the log-SNR (finite where alpha -> 0).
    inv_rho = 1.0 / rho
    r0 = jnp.exp(-0.5 * inv_rho * path.log_snr(t_start))
    r1 = jnp.exp(-0.5 * inv_rho * path.log_snr(t_end))
    u = jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    lam = -2.0 * rho * jnp.log(r0 + u * (r1 - r0))
    return _pin_ends(path.t_from_log_snr(lam), t_start, t_end)


def quadratic_grid(path: AbstractPath, num_steps: int, *, t_start=None, t_end=None) -> Float[Array, " n"]:
    """Steps growing linearly away from the data: t_i = t_end + (1 - i/N)^2 (t_start - t_end).

    The "quadratic" skip schedule of DDIM (Song et al. 2021a, Appendix D.2), continuous form.
    """
    t_start, t_end, dtype = _ends(path, num_steps, t_start, t_end)
    u = 1.0 - jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    return t_end + u * u * (t_start - t_end)


def save_grid(file, grid):
    """Write `grid` as a plain float64 .npy array (`numpy.save`): N + 1 decreasing times."""
    grid = np.asarray(grid, np.float64)
    _check_saved(grid, file)
    np.save(file, grid, allow_pickle=False)


def load_grid(file, path: AbstractPath | None = None):
    """Read a grid written by `save_grid` (or any 1-D .npy of decreasing times).

    With `path`, the times must also lie in [path.t_min, path.t_max]. Errors name the file.
    """
    if not os.path.exists(file):
        raise FileNotFoundError(f"grid file {file!r} does not exist (write one with jdiff.samplers.save_grid)")
    grid = np.load(file, allow_pickle=False)
    _check_saved(grid, file)
    tol = 1e-6  # a float32 grid rounds its ends by up to ~6e-8 relative
    if path is not None and not (grid.min() >= path.t_min * (1 - tol) and grid.max() <= path.t_max * (1 + tol)):
        raise ValueError(
            f"grid file {file!r}: times must lie in [t_min, t_max] = [{path.t_min}, {path.t_max}] of "
            f"{type(path).__name__}; got [{grid.min()}, {grid.max()}]"
        )
    return jnp.asarray(grid)


def _check_saved(grid, file):
    if grid.ndim != 1 or grid.shape[0] < 2 or not np.issubdtype(grid.dtype, np.floating):
        raise ValueError(
            f"grid file {file!r}: a grid is a 1-D float array of at least 2 times; got shape "
            f"{grid.shape}, dtype {grid.dtype}"
        )
    if not (np.all(np.isfinite(grid)) and np.all(np.diff(grid) < 0)):
        raise ValueError(f"grid file {file!r}: the times must be finite and strictly decreasing")
