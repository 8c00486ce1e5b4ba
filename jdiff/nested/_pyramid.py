"""The pyramid of resolutions a nested diffusion runs on, and its shifted noise schedules.

Matryoshka diffusion (Gu et al. 2023) diffuses jointly over z^r_t = alpha^r_t D^r(x) +
sigma^r_t eps^r, r = 1..R, with D^r average pooling and a resolution-specific schedule. jdiff
keeps ONE path and clock for every level and realises each level's schedule shift as a scale
of its data: on a path (alpha, sigma), level l diffuses y_l = c_l D_l(x) with c_l =
exp(delta_l / 2), whose log-SNR is exactly lambda(t) + delta_l. On a variance-exploding path
this *is* the shifted schedule (x_t / c_l is the VE process of D_l(x) with sigma / c_l); on a
variance-preserving one it is the shifted schedule up to a time-dependent rescaling of the
level's x_t (Chen 2023, "On the importance of noise scheduling", input scaling), the form
MDM's code uses without `schedule_shifted`. Either way every level shares the solver's
coefficients, so the levels form one state any jdiff fixed-step solver integrates.

Default shifts follow MDM's `get_schedule_shifted`: the coarsest level keeps the path's
schedule and a level r times finer has its SNR divided by r^p (delta = -p log r; p = 1 in their
256x256 config, 2 in the 1024x1024 one and in simple diffusion's 2 log(64 / d) shift).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Pyramid", "avg_pool", "resolution_shifts"]


def avg_pool(x, factor: int):
    """Average pooling of (B, H, W, C) images over non-overlapping factor x factor windows."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    if h % factor or w % factor:
        raise ValueError(f"image size ({h}, {w}) is not divisible by the pooling factor {factor}")
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def resolution_shifts(factors: Sequence[int], power: float = 1.0) -> tuple:
    """Log-SNR shifts delta_l = -power * log(f_max / f_l): the coarsest level (largest pooling
    factor f_max) keeps the path's schedule, a level r = f_max / f_l times finer has SNR / r^power."""
    f_max = max(factors)
    return tuple(-float(power) * math.log(f_max / f) for f in factors)


class Pyramid(eqx.Module):
    """Levels l = 0..L-1 of an image: y_l = c_l avg_pool(x, factors[l]), c_l = exp(delta_l / 2).

    Args:
        factors: strictly increasing pooling factors, finest first, e.g. (1, 2, 4) for 28x28,
            14x14 and 7x7 MNIST. Each must divide the image size.
        log_snr_shifts: delta_l per level (default `resolution_shifts(factors, shift_power)`);
            all zero is the unshifted schedule.
        shift_power: p of the default shifts.
    """

    factors: tuple = eqx.field(static=True)
    log_snr_shifts: tuple = eqx.field(static=True)

    def __init__(
        self, factors: Sequence[int], *, log_snr_shifts: Sequence[float] | None = None, shift_power: float = 1.0
    ):
        factors = tuple(factors)
        if (
            not factors
            or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors)
            or any(b <= a for a, b in itertools.pairwise(factors))
        ):
            raise ValueError(
                f"`factors` must be strictly increasing ints >= 1 (finest level first), e.g. (1, 2, 4); got {factors!r}"
            )
        shifts = (
            resolution_shifts(factors, shift_power)
            if log_snr_shifts is None
            else tuple(float(s) for s in log_snr_shifts)
        )
        if len(shifts) != len(factors) or not all(math.isfinite(s) for s in shifts):
            raise ValueError(f"`log_snr_shifts` must be {len(factors)} finite numbers, one per level; got {shifts!r}")
        self.factors, self.log_snr_shifts = factors, shifts

    @property
    def num_levels(self) -> int:
        return len(self.factors)

    @property
    def scales(self) -> tuple:
        """c_l = exp(delta_l / 2): the data scale that shifts level l's log-SNR by delta_l."""
        return tuple(math.exp(0.5 * s) for s in self.log_snr_shifts)

    def __call__(self, x):
        """The levels (tuple, finest first) of images x (B, H, W, C), each scaled by c_l."""
        return tuple(c * avg_pool(x, f) for f, c in zip(self.factors, self.scales))

    def images(self, levels):
        """The images of the levels: level l divided by c_l (each at its own resolution)."""
        if len(levels) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels; got {len(levels)}")
        return tuple(y / c for y, c in zip(levels, self.scales))

    def shapes(self, image_shape: Sequence[int]) -> tuple:
        """The per-example shape (h, w, C) of every level of images of shape (H, W, C)."""
        h, w, c = image_shape
        for f in self.factors:
            if h % f or w % f:
                raise ValueError(f"image size ({h}, {w}) is not divisible by the pooling factor {f}")
        return tuple((h // f, w // f, c) for f in self.factors)

    def matrix(self, image_shape: Sequence[int]) -> np.ndarray:
        """The linear map A (sum_l D_l, D) of the pyramid on flattened images: the levels of x,
        flattened per level and concatenated finest first, are A x.flatten()."""
        d = math.prod(image_shape)
        basis = jnp.eye(d).reshape(d, *image_shape)
        levels = self(basis)
        return np.concatenate([np.asarray(y).reshape(d, -1) for y in levels], axis=1).T

    def prior_sample(self, path, key, image_shape: Sequence[int], batch: int, dtype=jnp.float32):
        """Independent prior draws of every level at path.t_max: a tuple of (batch, h_l, w_l, C)."""
        keys = jax.random.split(key, self.num_levels)
        return tuple(path.prior_sample(k, (batch, *s), dtype) for k, s in zip(keys, self.shapes(image_shape)))
