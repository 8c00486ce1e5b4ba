"""The exact oracle of a nested diffusion: a linear pyramid of a Gaussian mixture is one.

If x ~ sum_k w_k N(mu_k, S_k) on D = H W C pixels and the pyramid is the linear map A (average
pooling and the level scales, `Pyramid.matrix`), the stacked levels y = A x are again a
Gaussian mixture, sum_k w_k N(A mu_k, A S_k A^T) (a singular covariance: the coarse levels are
functions of the finest). Every level is noised on the same path with its own noise, so
y_t = alpha y + sigma eps is exactly the setting of `jdiff.analytic.GaussianMixture`, whose
marginals, score and denoiser are exact for t > 0 (where sigma^2 I makes the covariance
invertible). The joint denoiser E[y | y_t] is therefore exact for every level at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp

from jdiff._model import Model
from jdiff.analytic import GaussianMixture
from jdiff.nested._pyramid import Pyramid
from jdiff.paths import AbstractPath
from jdiff.samplers._pytree import ravel, unravel

__all__ = ["exact_model", "pyramid_mixture"]


def pyramid_mixture(gm: GaussianMixture, pyramid: Pyramid, image_shape: Sequence[int]) -> GaussianMixture:
    """The mixture of the stacked, flattened levels y = A x of images x ~ `gm` of shape
    `image_shape` (gm.dim = prod(image_shape)): means A mu_k, covariances A S_k A^T."""
    if gm.dim != math.prod(image_shape):
        raise ValueError(
            f"`image_shape` {tuple(image_shape)} has {math.prod(image_shape)} values; the mixture has dim {gm.dim}"
        )
    a = jnp.asarray(pyramid.matrix(image_shape), gm.means.dtype)
    covs = jnp.einsum("ij,kjl,ml->kim", a, gm.covs, a)
    return GaussianMixture(gm.weights, gm.means @ a.T, 0.5 * (covs + jnp.swapaxes(covs, 1, 2)), labels=gm.labels)


class _LevelsNet(eqx.Module):
    """A model of raveled levels as a network of level tuples: net(levels, t, cond) -> levels."""

    flat: Model
    shapes: tuple = eqx.field(static=True)

    def __call__(self, levels, t, cond=None):
        flat, spec = ravel(tuple(levels))
        if spec.shapes != self.shapes:
            raise ValueError(f"the levels must have per-example shapes {self.shapes}; got {spec.shapes}")
        return unravel(self.flat(flat, t, cond), spec)


def exact_model(
    gm: GaussianMixture, pyramid: Pyramid, image_shape: Sequence[int], path: AbstractPath, kind: str = "x0"
) -> Model:
    """The exact joint model of the levels of images x ~ `gm` on `path`, predicting `kind` for
    every level at once: a `jdiff.Model` whose network takes and returns a tuple of levels
    (B, h_l, w_l, C), finest first, as a nested network does (sample it with any jdiff solver
    from `pyramid.prior_sample`)."""
    stacked = pyramid_mixture(gm, pyramid, image_shape)
    net: Any = _LevelsNet(stacked.as_model(path, kind), pyramid.shapes(image_shape))
    return Model(net, path, kind)
