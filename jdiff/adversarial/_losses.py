"""DDGAN's adversarial objective: non-saturating GAN losses with R1 on real samples.

For data x0, a step index k ~ U{1..T} per example and x_{t_k} ~ q(x_{t_k} | x0):

    real   x_{t_{k-1}} ~ q(x_{t_{k-1}} | x_{t_k}, x0)           (x0 itself when k = 1)
    fake   x_{t_{k-1}} ~ q(x_{t_{k-1}} | x_{t_k}, G(x_{t_k}, z, t_k))  (G's x0_hat when k = 1)

and the time-conditional discriminator D(x_{t_{k-1}}, x_{t_k}, t_k) sees both (Xiao et al. 2022,
eqs. 6-8 and their train_ddgan.py):

    d_loss = softplus(-D(real)) + softplus(D(fake)) + r1_gamma / 2 ||grad_{real} D(real)||^2
    g_loss = softplus(-D(fake))                       (the non-saturating generator loss)

The R1 penalty (Mescheder et al. 2018) is on real samples only, differentiated with respect to
the real x_{t_{k-1}} (x_{t_k} is a constant), as in their code. Their default r1_gamma is
0.05; the CIFAR-10 run uses 0.02.

`ddgan_loss` returns both players' losses from one draw of (x0, k, z) and their sum
`loss = d_loss + g_loss` arranged so that ONE gradient of `loss` with respect to both networks
is each network's own gradient: the fake sample enters d_loss under stop_gradient (so G gets no
gradient from D's objective), and g_loss calls the discriminator with its parameters under
stop_gradient (so D gets no gradient from G's objective). A single train step that applies two
optimizers to that gradient (`two_player_optimizer`) is simultaneous gradient descent on the
two objectives; for alternating updates differentiate `d_loss` and `g_loss` separately (XLA
drops what a gradient does not need).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jdiff._shared import noised, sum_data
from jdiff.adversarial._ddgan import DDGAN, check_ddgan, posterior_sample
from jdiff.paths import expand_to

__all__ = ["DEFAULT_R1_GAMMA", "GANLoss", "ddgan_loss", "frozen"]

DEFAULT_R1_GAMMA = 0.05  # Xiao et al.'s default (train_ddgan.py --r1_gamma); 0.02 on CIFAR-10


class GANLoss(NamedTuple):
    """Per-example (B,) terms of the DDGAN objective.

    loss: d_loss + g_loss, whose gradient is D's for the discriminator and G's for the generator.
    d_loss: softplus(-d_real) + softplus(d_fake) + r1 (fake under stop_gradient).
    g_loss: softplus(-d_fake) (discriminator parameters under stop_gradient).
    r1: r1_gamma / 2 ||grad D(real)||^2, included in d_loss.
    d_real, d_fake: the discriminator's logits on the real and the fake pair.
    """

    loss: jax.Array
    d_loss: jax.Array
    g_loss: jax.Array
    r1: jax.Array
    d_real: jax.Array
    d_fake: jax.Array


def frozen(module):
    """`module` with every floating-point array leaf under stop_gradient (same outputs, no
    parameter gradient). Works for nnx and equinox modules and any pytree of callables."""

    def stop(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact):
            return jax.lax.stop_gradient(x)
        return x

    return jax.tree.map(stop, module)


def _logits(discriminator, x_s, x_t, t, cond):
    out = discriminator(x_s, x_t, t, cond)
    b = jnp.shape(x_t)[0]
    if jnp.shape(out) != (b,):
        raise ValueError(
            f"the discriminator must return one logit per example, shape ({b},); got shape {jnp.shape(out)}"
        )
    return out


def ddgan_loss(ddgan: DDGAN, discriminator, key, x0, *, cond=None, r1_gamma: float = DEFAULT_R1_GAMMA) -> GANLoss:
    """The DDGAN objective per example (see the module docstring).

    Args:
        ddgan: the bound generator (`DDGAN(G, path, grid, latent_dim)`); its grid fixes the T
            steps the pairs are drawn from.
        discriminator: `D(x_prev, x_t, t, cond) -> (B,)` logits (x_prev the less noisy
            sample, t the time of x_t).
        key: PRNG key (split for the step index, the noise, the latent and both posteriors).
        x0: (B, ...) data batch.
        cond: conditioning pytree passed to both networks, or None.
        r1_gamma: weight of the R1 penalty (0 turns it off).

    Returns:
        `GANLoss` of (B,) arrays; train on `.loss` with a two-player optimizer.
    """
    check_ddgan(ddgan)
    if not callable(discriminator):
        raise TypeError(
            f"`discriminator` must be a callable D(x_prev, x_t, t, cond) -> (B,); got {type(discriminator).__name__}"
        )
    if not (isinstance(r1_gamma, (int, float)) and r1_gamma >= 0):
        raise ValueError(f"`r1_gamma` must be a number >= 0; got {r1_gamma!r}")
    path, grid = ddgan.path, ddgan.grid.astype(jnp.result_type(x0))
    b, n = jnp.shape(x0)[0], ddgan.num_steps
    k_idx, k_eps, k_real, k_z, k_fake = jax.random.split(key, 5)

    j = jax.random.randint(k_idx, (b,), 0, n)  # the step from grid[j] to grid[j + 1]
    t, s = grid[j], grid[j + 1]
    to_data = expand_to(j == n - 1, x0)
    eps = jax.random.normal(k_eps, jnp.shape(x0), jnp.result_type(x0))
    x_t = noised(path, x0, eps, t)
    real = jnp.where(to_data, x0, posterior_sample(path, k_real, x0, x_t, s, t))
    x0_hat = ddgan.x0(x_t, ddgan.latent(k_z, b, jnp.result_type(x0)), t, cond)
    fake = jnp.where(to_data, x0_hat, posterior_sample(path, k_fake, x0_hat, x_t, s, t))

    d_real, pullback = jax.vjp(lambda xs: _logits(discriminator, xs, x_t, t, cond), real)
    grad_real = pullback(jnp.ones_like(d_real))[0]  # per example: examples do not interact in D
    r1 = 0.5 * r1_gamma * sum_data(grad_real**2)
    d_fake_d = _logits(discriminator, jax.lax.stop_gradient(fake), x_t, t, cond)
    d_fake_g = _logits(frozen(discriminator), fake, x_t, t, cond)

    d_loss = jax.nn.softplus(-d_real) + jax.nn.softplus(d_fake_d) + r1
    g_loss = jax.nn.softplus(-d_fake_g)
    return GANLoss(d_loss + g_loss, d_loss, g_loss, r1, d_real, jax.lax.stop_gradient(d_fake_g))
