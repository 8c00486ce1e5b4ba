"""One place for the prediction parameterizations and the conversions between them.

A network trained on a path predicts one of five quantities at (x_t, t), x_t = a x0 + s eps
(a = alpha(t), s = sigma(t), a', s' their time derivatives):

    "x0"        the denoiser E[x0 | x_t]                    (the currency of jdiff)
    "eps"       the noise E[eps | x_t]
    "v"         v = a eps - s x0                  (Salimans & Ho 2022, for any path)
    "score"     grad log p_t(x_t) = -eps / s
    "velocity"  u = a' x0 + s' eps, the probability-flow ODE velocity dx/dt

Every conversion goes through the pair (x0, eps), with closed forms chosen to stay finite
at the path's ends: "v" and "velocity" never divide by a or s alone, but by a^2 + s^2 and
a' s - a s' = a s lambda'/2 (nonzero wherever the log-SNR is strictly decreasing).

These are the low-level conversions of a prediction *value*; a network bound to its path and
kind (`jdiff.Model`) gives every view of its field as methods (`model.x0`, `model.velocity`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from jdiff._checks import check_path
from jdiff.paths import AbstractPath, expand_to

__all__ = [
    "KINDS",
    "Preconditioning",
    "check_kind",
    "convert",
    "edm_preconditioning",
    "from_x0_eps",
    "to_x0_eps",
]

KINDS = ("eps", "x0", "v", "score", "velocity")


def check_kind(kind: str, name: str = "kind") -> str:
    """Validate a prediction-kind name, raising a ValueError that lists the accepted names."""
    if kind not in KINDS:
        raise ValueError(f"unknown prediction kind {kind!r} for `{name}`; accepted: {', '.join(KINDS)}")
    return kind


def _coefs(path: AbstractPath, t, x):
    check_path(path)
    a = expand_to(path.alpha(t), x, "t")
    s = expand_to(path.sigma(t), x, "t")
    return a, s


def _check_shapes(pred, x):
    if jnp.shape(pred) != jnp.shape(x):
        raise ValueError(f"`pred` has shape {jnp.shape(pred)} but `x` has shape {jnp.shape(x)}; they must match")


def to_x0_eps(
    pred: Float[Array, "*x"], kind: str, x: Float[Array, "*x"], t: Float[ArrayLike, "*t"], path: AbstractPath
) -> tuple[Float[Array, "*x"], Float[Array, "*x"]]:
    """Return (x0, eps) implied by a prediction `pred` of kind `kind` at (x, t)."""
    check_kind(kind)
    _check_shapes(pred, x)
    a, s = _coefs(path, t, x)
    if kind == "x0":
        return pred, (x - a * pred) / s
    if kind == "eps":
        return (x - s * pred) / a, pred
    if kind == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    if kind == "v":
        n = a * a + s * s
        return (a * x - s * pred) / n, (s * x + a * pred) / n
    # velocity: u = a' x0 + s' eps and x = a x0 + s eps, solved as a 2x2 system.
    da, ds = expand_to(path.d_alpha(t), x, "t"), expand_to(path.d_sigma(t), x, "t")
    det = da * s - ds * a  # = a s lambda'/2 < 0
    return (s * pred - ds * x) / det, (da * x - a * pred) / det


def from_x0_eps(
    x0: Float[Array, "*x"],
    eps: Float[Array, "*x"],
    kind: str,
    x: Float[Array, "*x"],
    t: Float[ArrayLike, "*t"],
    path: AbstractPath,
) -> Float[Array, "*x"]:
    """The prediction of kind `kind` implied by the pair (x0, eps) at (x, t)."""
    check_kind(kind)
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    a, s = _coefs(path, t, x)
    if kind == "v":
        return a * eps - s * x0
    if kind == "score":
        return -eps / s
    da, ds = expand_to(path.d_alpha(t), x, "t"), expand_to(path.d_sigma(t), x, "t")
    return da * x0 + ds * eps


def convert(
    pred: Float[Array, "*x"],
    from_kind: str,
    to_kind: str,
    x: Float[Array, "*x"],
    t: Float[ArrayLike, "*t"],
    path: AbstractPath,
) -> Float[Array, "*x"]:
    """Convert a prediction between kinds (identity when the kinds agree)."""
    check_kind(from_kind, "from_kind")
    check_kind(to_kind, "to_kind")
    if from_kind == to_kind:
        _check_shapes(pred, x)
        check_path(path)
        return pred
    x0, eps = to_x0_eps(pred, from_kind, x, t, path)
    return from_x0_eps(x0, eps, to_kind, x, t, path)


class Preconditioning(NamedTuple):
    """EDM preconditioning x0_hat = c_skip x + c_out F(c_in x, c_noise) acting on x_t itself."""

    c_skip: jnp.ndarray
    c_out: jnp.ndarray
    c_in: jnp.ndarray
    c_noise: jnp.ndarray


def edm_preconditioning(t: Float[ArrayLike, "*t"], path: AbstractPath, sigma_data: float = 0.5) -> Preconditioning:
    """Karras et al. (2022) preconditioning, written for any path.

    EDM's noise level is sigma_e = s / a (x_t / a = x0 + sigma_e eps). Its scalings, expressed
    on x_t rather than x_t / a, are finite at both ends (a = 0 and s = 0):
        c_skip = a sd^2 / (s^2 + a^2 sd^2),   c_out = s sd / sqrt(s^2 + a^2 sd^2),
        c_in = 1 / sqrt(s^2 + a^2 sd^2),      c_noise = log(sigma_e) / 4 = -lambda / 8.
    The matching loss weight is 1 / c_out^2. `jdiff.edm_denoiser` builds the preconditioned model.
    """
    a, s = path.alpha(t), path.sigma(t)
    sd2 = sigma_data**2
    n2 = s * s + a * a * sd2
    return Preconditioning(
        c_skip=a * sd2 / n2,
        c_out=s * sigma_data / jnp.sqrt(n2),
        c_in=1.0 / jnp.sqrt(n2),
        c_noise=-path.log_snr(t) / 8.0,
    )
