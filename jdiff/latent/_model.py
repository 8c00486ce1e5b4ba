"""A model in latent space plus the decoder back to data space, and its (latent) likelihood.

    lm = latent.LatentModel.from_autoencoder(jdiff.Model(net, path, "v"), autoencoder, (28, 28, 1))
    z_T = lm.prior_sample(key, 16)                      # noise of the latent shape
    x = lm.generate(lambda m, z: samplers.sample(samplers.Heun(), m, z, grid), z_T)   # decoded once
    guided = lm.map(lambda m: guidance.classifier_free(m, 2.0, null_cond=10))        # still latent

The bound object inside (`lm.model`: a `jdiff.Model`, a guided model, a `jdiff.flowmaps.FlowMap`)
is an ordinary jdiff object on latents, so every sampler, guidance rule and flow-map sampler runs
on it unchanged; the decoder is called once, on the final latents, by `generate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from jdiff import likelihood
from jdiff._model import Model, _as_pytree_net

__all__ = ["LATENT_LIKELIHOOD_NOTE", "LatentLikelihood", "LatentModel", "latent_log_likelihood"]

LATENT_LIKELIHOOD_NOTE = (
    "latent likelihood: log p(z) of the encoder's latent z = E(x) (normalized) under the latent model, in nats "
    "per example and bits per LATENT dimension; it is not a pixel bits/dim: the autoencoder is not invertible, "
    "its Jacobian and the decoder's reconstruction error are not included, and no dequantization offset applies"
)


class _Decode(eqx.Module):
    """The decoder of a `jdiff.models.AutoencoderKL` on normalized latents (a pytree: an nnx
    autoencoder inside stays an argument of jit, not a constant)."""

    autoencoder: Any

    def __call__(self, z):
        return self.autoencoder.from_latent(z)


class _Encode(eqx.Module):
    """The posterior mode of a `jdiff.models.AutoencoderKL`, normalized."""

    autoencoder: Any

    def __call__(self, x):
        return self.autoencoder.to_latent(x)


class LatentModel(eqx.Module):
    """A bound model on latents and the maps between latents and data.

    Args:
        model: the bound object in latent space: a `jdiff.Model` (plain, guided, converted) or a
            `jdiff.flowmaps.FlowMap`; samplers take it as they take any model.
        decoder: `decoder(z) -> x`, latents (B, *latent_shape) to data. Any callable (an nnx or
            equinox module stays a pytree leaf container, a plain function is held as static).
        latent_shape: the shape of one latent, e.g. (7, 7, 4): what the prior noise is drawn in.
        encoder: optional `encoder(x) -> z`, data to (normalized) latents: needed by `encode`
            and `latent_log_likelihood`.

    A `LatentModel` is an equinox pytree: it passes through `jax.jit` as an argument.
    """

    model: Any
    decoder: Any
    latent_shape: tuple = eqx.field(static=True)
    encoder: Any = None

    def __init__(self, model, decoder: Callable, latent_shape, encoder: Callable | None = None):
        if isinstance(model, LatentModel):
            raise TypeError("`model` is already a LatentModel; use lm.map(fn) to change the latent model")
        if not hasattr(model, "path"):
            raise TypeError(
                f"`model` must be a bound jdiff object (a jdiff.Model or jdiff.flowmaps.FlowMap) on "
                f"latents; got {type(model).__name__}"
            )
        for name, fn in (("decoder", decoder), ("encoder", encoder)):
            if fn is not None and not callable(fn):
                raise TypeError(f"`{name}` must be a callable; got {type(fn).__name__}")
        self.model = model
        self.decoder = _as_pytree_net(decoder)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.encoder = None if encoder is None else _as_pytree_net(encoder)

    @classmethod
    def from_autoencoder(cls, model, autoencoder, image_shape) -> LatentModel:
        """The latent model of a `jdiff.models.AutoencoderKL`: decoder `autoencoder.from_latent`
        (unnormalize, decode), encoder `autoencoder.to_latent` (posterior mode, normalize), latent
        shape `autoencoder.latent_shape(image_shape)`."""
        return cls(model, _Decode(autoencoder), autoencoder.latent_shape(image_shape), _Encode(autoencoder))

    @property
    def path(self):
        """The latent model's path."""
        return self.model.path

    def map(self, fn: Callable) -> LatentModel:
        """The same decoder around `fn(self.model)`: apply a model combinator (guidance,
        `as_kind`) in latent space."""
        return LatentModel(fn(self.model), self.decoder, self.latent_shape, self.encoder)

    def prior_sample(self, key, num: int, dtype=jnp.float32):
        """`num` draws of the path's prior noise in the latent shape: (num, *latent_shape)."""
        return self.model.path.prior_sample(key, (num, *self.latent_shape), dtype)

    def decode(self, z):
        """Data of latents z (B, *latent_shape)."""
        return self.decoder(z)

    def encode(self, x):
        """Latents of data x (needs an `encoder`)."""
        if self.encoder is None:
            raise ValueError("this LatentModel has no `encoder`; build it with one (or with from_autoencoder)")
        return self.encoder(x)

    def generate(self, draw: Callable, z_T):
        """`decode(draw(self.model, z_T))`: run any sampler on latents, then decode once.

        draw: `draw(model, z_T) -> z_0`, e.g. `lambda m, z: samplers.sample(solver, m, z, grid)`
            or `lambda m, z: flowmaps.sample(m, z, grid)`.
        """
        return self.decode(draw(self.model, z_T))


class LatentLikelihood(NamedTuple):
    """A likelihood in latent space, and what it is.

    log_prob: log p(z) in nats per example, z = encoder(x) (the latent model's density).
    bits_per_latent_dim: -log_prob / (latent_dim ln 2), per LATENT dimension (not a pixel bpd).
    nfe: evaluations of the ODE vector field per example.
    latent_dim: the number of latent dimensions per example.
    note: `LATENT_LIKELIHOOD_NOTE`, to print next to the numbers.
    """

    log_prob: jax.Array
    bits_per_latent_dim: jax.Array
    nfe: jax.Array
    latent_dim: int
    note: str


def latent_log_likelihood(lm: LatentModel, x, *, cond=None, key=None, **kwargs) -> LatentLikelihood:
    """The probability-flow ODE log-likelihood of the latents of data x, reported as a latent likelihood.

    Encodes x (B, ...) with `lm.encode` and runs `jdiff.likelihood.ode_log_likelihood_batch` on
    `lm.model` (a `jdiff.Model`) with the same keyword options (divergence, rtol, ...). The result
    is log p(z) of the latent: it is not comparable with pixel-space bits/dim (see
    `LATENT_LIKELIHOOD_NOTE`, which the result carries).
    """
    if not isinstance(lm, LatentModel):
        raise TypeError(f"`lm` must be a jdiff.latent.LatentModel; got {type(lm).__name__}")
    if not isinstance(lm.model, Model):
        raise TypeError(
            f"the latent likelihood needs a diffusion model (a jdiff.Model) in latent space; "
            f"this LatentModel holds a {type(lm.model).__name__}"
        )
    z = lm.encode(jnp.asarray(x))
    out = likelihood.ode_log_likelihood_batch(lm.model, z, cond=cond, key=key, **kwargs)
    dim = math.prod(z.shape[1:])
    return LatentLikelihood(out.log_prob, -out.log_prob / (dim * math.log(2.0)), out.nfe, dim, LATENT_LIKELIHOOD_NOTE)
