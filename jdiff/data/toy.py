"""Two-dimensional toy distributions as pure JAX samplers `(key, n) -> (n, 2)`.

Every sampler is a pure function of an explicit PRNG key (jittable with `n` static) and
returns float32 points of shape (n, 2) in the dtype asked for (default float32); with
`with_labels=True` it also returns int32 labels (n,) naming the mode each point came
from, for class-conditional experiments. The scalings follow the FFJORD toy sets
(Grathwohl et al. 2019), so every set has standard deviation of order 1-2 per axis.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jdiff.analytic import GaussianMixture

__all__ = [
    "checkerboard",
    "default_mixture",
    "eight_gaussians",
    "gaussian_mixture",
    "moons",
    "swiss_roll",
]

# One XLA program per (sampler, n, dtype): eager op-by-op dispatch would compile every primitive.
_jit = functools.partial(jax.jit, static_argnames=("n", "with_labels", "dtype"))


def _out(x, labels, with_labels, dtype):
    x = x.astype(dtype)
    return (x, labels.astype(jnp.int32)) if with_labels else x


@_jit
def moons(key, n: int, *, noise: float = 0.1, with_labels: bool = False, dtype=jnp.float32):
    """Two interleaved half circles (sklearn's make_moons), scaled by 2 and centred.

    noise: standard deviation of the isotropic Gaussian jitter added before scaling.
    Labels: 0 for the upper moon, 1 for the lower one.
    """
    ku, kl, kn = jax.random.split(key, 3)
    label = jax.random.bernoulli(kl, 0.5, (n,)).astype(jnp.int32)
    theta = jnp.pi * jax.random.uniform(ku, (n,))
    upper = jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)
    lower = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], -1)
    x = jnp.where(label[:, None] == 0, upper, lower)
    x = x + noise * jax.random.normal(kn, (n, 2))
    # Centre the pair of moons (mean (0.5, 0.25)) and scale as FFJORD does.
    x = 2.0 * (x - jnp.array([[0.5, 0.25]]))
    return _out(x, label, with_labels, dtype)


@_jit
def checkerboard(key, n: int, *, with_labels: bool = False, dtype=jnp.float32):
    """Uniform on the 8 dark squares of a 4x4 checkerboard on [-4, 4]^2 (FFJORD).

    Labels: the index 0..7 of the square a point fell in.
    """
    kx, ky, kc = jax.random.split(key, 3)
    u = 2.0 * jax.random.uniform(kx, (n,))  # position within a column pair's width
    col = jax.random.randint(kc, (n,), 0, 8)  # which dark square
    cx = col % 4  # column 0..3
    cy = col // 4  # 0 or 1: which of the two dark squares in that column
    x1 = -4.0 + 2.0 * cx + u
    # Dark squares alternate: in column cx, rows (cx % 2) and (cx % 2) + 2 of 4 rows.
    row = (cx % 2) + 2 * cy
    x2 = -4.0 + 2.0 * row + 2.0 * jax.random.uniform(ky, (n,))
    return _out(jnp.stack([x1, x2], -1), col, with_labels, dtype)


@_jit
def eight_gaussians(
    key, n: int, *, radius: float = 2.0 * math.sqrt(2.0), std: float = 0.5, with_labels: bool = False, dtype=jnp.float32
):
    """Eight isotropic Gaussians of standard deviation `std` equally spaced on a circle.

    radius: distance of the means from the origin (FFJORD: scale 4 then divide by 1.414).
    Labels: the component index 0..7 (component k sits at angle k pi / 4).
    """
    kc, kn = jax.random.split(key)
    comp = jax.random.randint(kc, (n,), 0, 8)
    angle = comp * (jnp.pi / 4)
    mean = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
    x = mean + std * jax.random.normal(kn, (n, 2))
    return _out(x, comp, with_labels, dtype)


@_jit
def swiss_roll(key, n: int, *, noise: float = 1.0, with_labels: bool = False, dtype=jnp.float32):
    """The 2-D Swiss roll (sklearn's make_swiss_roll, x-z plane) divided by 5 (FFJORD).

    noise: standard deviation of the Gaussian jitter, in the unscaled units.
    Labels: which of three equal arc-angle segments of the roll a point lies on (0 inner).
    """
    kt, kn = jax.random.split(key)
    u = jax.random.uniform(kt, (n,))
    t = 1.5 * jnp.pi * (1.0 + 2.0 * u)
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) + noise * jax.random.normal(kn, (n, 2))
    label = jnp.minimum((u * 3).astype(jnp.int32), 2)
    return _out(x / 5.0, label, with_labels, dtype)


def default_mixture(dtype=jnp.float32) -> GaussianMixture:
    """The 2-D mixture `gaussian_mixture` samples by default: 4 anisotropic components, 2 classes.

    Returned as the exact oracle, so a model trained on this set can be compared with
    the true score, denoiser and log-density (`jdiff.analytic`).
    """
    return GaussianMixture(
        weights=jnp.array([0.3, 0.2, 0.25, 0.25], dtype),
        means=jnp.array([[-2.0, -1.0], [-1.0, 2.0], [2.0, 1.0], [1.5, -2.0]], dtype),
        covs=jnp.array(
            [
                [[0.30, 0.10], [0.10, 0.20]],
                [[0.20, -0.05], [-0.05, 0.15]],
                [[0.10, 0.0], [0.0, 0.40]],
                [[0.25, 0.08], [0.08, 0.10]],
            ],
            dtype,
        ),
        labels=jnp.array([0, 0, 1, 1]),
    )


def gaussian_mixture(
    key, n: int, *, mixture: GaussianMixture | None = None, with_labels: bool = False, dtype=jnp.float32
):
    """Samples of a Gaussian mixture (default: `default_mixture()`), whose exact marginals
    under every path are known (`jdiff.analytic.GaussianMixture`).

    Labels: the mixture's class labels if it has them, else the component index.
    """
    mixture = default_mixture(dtype) if mixture is None else mixture  # built outside jit: it reads labels
    return _sample_mixture(key, n, mixture, with_labels, dtype)


@functools.partial(jax.jit, static_argnums=(1, 3, 4))
def _sample_mixture(key, n, mixture, with_labels, dtype):
    x, comp = mixture.sample(key, n, return_components=True)
    label = comp if mixture.labels is None else mixture.labels[comp]
    return _out(x, label, with_labels, dtype)
