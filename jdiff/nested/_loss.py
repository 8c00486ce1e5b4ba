"""The nested (multi-resolution) denoising loss: per-level losses summed with weights."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jdiff._model import Model, check_model
from jdiff._shared import noised
from jdiff.losses import loss_weight, uniform_time
from jdiff.nested._pyramid import Pyramid
from jdiff.predictions import check_kind, from_x0_eps
from jdiff.samplers._pytree import ravel, raveled_model

__all__ = ["nested_loss", "progressive_weights"]


def _check_weights(weights, num_levels):
    if weights is None:
        return jnp.ones((num_levels,))
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (num_levels,):
        raise ValueError(f"`weights` must have one weight per level ({num_levels}); got shape {w.shape}")
    return w


def nested_loss(
    model: Model,
    key,
    x0,
    *,
    pyramid: Pyramid,
    weights: Sequence[float] | None = None,
    cond=None,
    target: str | None = None,
    weighting=None,
    time_sampler=uniform_time,
    t=None,
    return_levels: bool = False,
):
    """Matryoshka diffusion's loss (Gu et al. 2023, eq. 3): sum_l w_l MSE_l per example.

    The levels y_l = `pyramid`(x0) are noised at ONE time t per example, each with its own
    noise (MDM's training draws independent noise per resolution), and the network sees all
    of them at once: `model.net(levels_t, t, cond)` returns a prediction of `model.kind` per
    level. MSE_l is the squared error in `target` space (default model.kind) averaged over
    level l's values, times `weighting` (None: unit weight, as MDM), and w_l are `weights`
    (default all 1; MDM's 1024x1024 config uses 16:4:1 from the finest level down).

    Args:
        model: a `jdiff.Model` whose network maps a tuple of levels to a tuple of predictions
            (e.g. `jdiff.models.NestedUNet`).
        key: PRNG key (split for the time and the noise).
        x0: (B, H, W, C) images.
        pyramid: the `Pyramid` of levels and their log-SNR shifts.
        weights: (L,) per-level weights, finest first (may be traced: `progressive_weights`).
        cond, target, weighting, time_sampler, t: as `jdiff.losses.dsm_loss`.
        return_levels: also return the (B, L) per-level losses (unweighted by `weights`).

    Returns:
        (B,) per-example losses (and the (B, L) level losses with `return_levels`).
    """
    check_model(model)
    if not isinstance(pyramid, Pyramid):
        raise TypeError(f"`pyramid` must be a jdiff.nested.Pyramid; got {type(pyramid).__name__}")
    target = model.kind if target is None else check_kind(target, "target")
    w = _check_weights(weights, pyramid.num_levels)
    path = model.path
    flat, spec = ravel(pyramid(x0))
    b, dtype = flat.shape[0], flat.dtype
    key_t, key_eps = jax.random.split(key)
    t = time_sampler(key_t, (b,), path, dtype) if t is None else jnp.broadcast_to(jnp.asarray(t, dtype), (b,))
    eps = jax.random.normal(key_eps, flat.shape, dtype)
    x_t = noised(path, flat, eps, t)
    pred = raveled_model(model, spec).predict(x_t, t, cond, kind=target)
    err = (pred - from_x0_eps(flat, eps, target, x_t, t, path)) ** 2
    cuts = [0, *itertools.accumulate(spec.sizes)]
    levels = jnp.stack([jnp.mean(err[:, a:z], axis=1) for a, z in itertools.pairwise(cuts)], axis=1)
    levels = loss_weight(weighting, t, path, target)[:, None] * levels
    total = levels @ w.astype(levels.dtype)
    return (total, levels) if return_levels else total


def progressive_weights(weights: Sequence[float], start_steps: Sequence[int], step):
    """Progressive training (MDM, Sec. 3.3): level l's weight is 0 before train step
    start_steps[l], then weights[l]. E.g. start_steps = (2000, 1000, 0) trains 7x7 alone, adds
    14x14 at step 1000 and 28x28 at step 2000. `step` may be traced (jdiff.training.ContextLoss)."""
    w, s = jnp.asarray(weights, jnp.float32), jnp.asarray(start_steps, jnp.int32)
    if w.shape != s.shape or w.ndim != 1:
        raise ValueError(f"`weights` and `start_steps` need one entry per level; got {w.shape} and {s.shape}")
    return jnp.where(jnp.asarray(step) >= s, w, 0.0)
