"""Loss weightings: small objects that define a weight on the x0-space squared error.

At a fixed (x_t, t) the error of every prediction target is a scalar multiple of the x0 error
(lambda = log-SNR, a = alpha, s = sigma, ' = d/dt):

    target     ||err||^2 / ||x0 err||^2
    "x0"       1
    "eps"      SNR = e^lambda
    "v"        (a^2 + s^2)^2 / s^2            (= 1 + SNR on variance-preserving paths)
    "score"    a^2 / s^4
    "velocity" a^2 lambda'^2 / 4

so a weighting w defined on the x0 error becomes w / (that ratio) on the error in `target`
space: one objective whatever the regression space. Everything is evaluated in log space,
so the weights stay finite in float32 at both ends of every path.
"""

from __future__ import annotations

import abc
import math
from numbers import Real

import equinox as eqx
import jax
import jax.numpy as jnp

from jdiff.paths import AbstractPath
from jdiff.predictions import check_kind


class AbstractWeighting(eqx.Module):
    """A loss weighting w(t) on the x0-space squared error ||x0_hat - x0||^2.

    Subclasses define `log_weight(t, path)` = log w(t); `loss_weight` turns it into the weight
    on the error in any target space. Hyperparameters are array-like fields, so a new value
    does not recompile a jitted loss.
    """

    @abc.abstractmethod
    def log_weight(self, t, path: AbstractPath):
        """log w(t) of the weight on the x0-space squared error, elementwise in t."""


def _check_positive(value, name, cls):
    if isinstance(value, Real) and not value > 0:
        raise ValueError(f"`{name}` of {cls} must be > 0; got {value}")


class SNRWeighting(AbstractWeighting):
    """w = SNR = alpha^2 / sigma^2 on the x0 error: the unweighted eps-MSE (DDPM's simple loss)."""

    def log_weight(self, t, path):
        return path.log_snr(t)


class MinSNRWeighting(AbstractWeighting):
    """w = min(SNR, gamma) on the x0 error: Min-SNR-gamma (Hang et al. 2023; gamma = 5 theirs).

    On the eps error it is min(SNR, gamma) / SNR; on the v error of a VP path min(SNR, gamma) / (1 + SNR).
    """

    gamma: float | jax.Array = 5.0

    def __check_init__(self):
        _check_positive(self.gamma, "gamma", "MinSNRWeighting")

    def log_weight(self, t, path):
        return jnp.minimum(path.log_snr(t), jnp.log(self.gamma))


class LikelihoodWeighting(AbstractWeighting):
    """w = -lambda' SNR on the x0 error = g^2 on the score error (Song et al. 2021) = -lambda' on eps.

    With it, 0.5 D (t_max - t_min) times the eps-space DSM loss under uniform t is the diffusion
    term of the continuous-time VDM bound (`vdm_terms`), example by example.
    """

    def log_weight(self, t, path):
        return path.log_snr(t) + jnp.log(-path.d_log_snr(t))


class EDMWeighting(AbstractWeighting):
    """w = (sigma_e^2 + sigma_data^2) / (sigma_e sigma_data)^2 on the x0 error, sigma_e = sigma / alpha.

    Karras et al. (2022): lambda(sigma) = 1 / c_out^2 for the EDM-preconditioned denoiser.
    `sigma_data` is the data standard deviation (0.5 for images in [-1, 1]).
    """

    sigma_data: float | jax.Array = 0.5

    def __check_init__(self):
        _check_positive(self.sigma_data, "sigma_data", "EDMWeighting")

    def log_weight(self, t, path):
        # 1 / sigma_e^2 + 1 / sigma_data^2 with 1 / sigma_e^2 = e^lambda
        return jnp.logaddexp(path.log_snr(t), -2.0 * jnp.log(self.sigma_data))


def _log_error_ratio(target, t, path):
    """log(||err||^2 / ||x0 err||^2) for an error in `target` space at fixed (x_t, t)."""
    lam = path.log_snr(t)
    if target == "x0":
        return jnp.zeros_like(lam)
    if target == "eps":
        return lam
    log_s = jnp.log(path.sigma(t))
    if target == "v":
        # (a^2 + s^2)^2 / s^2 = s^2 (1 + e^lam)^2
        return 2.0 * log_s + 2.0 * jax.nn.softplus(lam)
    if target == "score":
        return lam - 2.0 * log_s
    # velocity: du/dx0 at fixed x_t is a' - s' a / s = a lambda' / 2
    return 2.0 * (jnp.log(path.alpha(t)) + jnp.log(jnp.abs(path.d_log_snr(t))) - math.log(2.0))


def check_weighting(weighting):
    """None, an AbstractWeighting or a callable (t, path) -> weight; names live in experiments._names."""
    if weighting is None or isinstance(weighting, AbstractWeighting) or callable(weighting):
        return weighting
    raise TypeError(
        "`weighting` must be None (unit weight in the target space), a jdiff.losses weighting "
        "(SNRWeighting(), MinSNRWeighting(gamma), LikelihoodWeighting(), EDMWeighting(sigma_data)) or a "
        f"callable (t, path) -> weight on the target-space error; got {weighting!r} "
        "(names are looked up by experiments._names.get_weighting)"
    )


def loss_weight(weighting, t, path: AbstractPath, target: str = "x0"):
    """The per-example weight that multiplies the squared error in `target` space.

    Args:
        weighting: None, the unit weight in `target` space (plain MSE of the target); an
            `AbstractWeighting`, defined on the x0-space error and rescaled to `target` space
            by the exact error ratio (module docstring); or a callable `weighting(t, path)`
            returning the weight on the `target`-space error directly.
        t: times, any shape.
        path: the Gaussian path.
        target: the prediction space in which the error is measured ("x0", "eps", "v",
            "score", "velocity").
    Returns:
        The weights, of the shape of `t`.
    """
    check_kind(target, "target")
    check_weighting(weighting)
    if weighting is None:
        return jnp.ones_like(path.log_snr(t))
    if isinstance(weighting, AbstractWeighting):
        return jnp.exp(weighting.log_weight(t, path) - _log_error_ratio(target, t, path))
    return weighting(t, path)
