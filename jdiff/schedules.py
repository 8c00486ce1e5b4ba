"""Learnable noise schedules: paths whose parameters are array leaves, so `jax.grad` reaches them.

`LearnedLogSNR` is the monotone log-SNR network of Variational Diffusion Models (Kingma et
al. 2021, appendix H): a variance-preserving path (alpha^2 = sigmoid(lambda), sigma^2 =
sigmoid(-lambda)) with

    gamma(t) = -lambda(t) = gamma_0 + (gamma_1 - gamma_0) (phi(t) - phi(0)) / (phi(1) - phi(0)),
    phi(t)   = l1(t) + l3(2 sigmoid(l2(2t - 1)) - 1) / H,

where l1: R -> R, l2: R -> R^H, l3: R^H -> R are affine maps with positive weights (softplus of
free parameters; VDM takes absolute values) and the biases of l1 and l3 are dropped (the
normalization cancels them), so phi, gamma are increasing and lambda is
decreasing for every parameter value. The endpoints are learnable too, with gamma_1 > gamma_0
enforced by gamma_1 = gamma_0 + softplus(raw). Train it with `jdiff.losses.vdm_loss` (whose
weight lambda'(t) comes from `jax.jvp` through the network): in continuous time the
expected diffusion loss depends only on the endpoints, so their gradient comes from the
prior and reconstruction terms while the interior shape changes only the variance
(VDM, section 5; VDM minimizes that variance for the shape parameters).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from jdiff.paths import _f, _VPFromLogSNR

__all__ = ["LearnedLogSNR"]


def _inv_softplus(y):
    return y + jnp.log(-jnp.expm1(-y))


class LearnedLogSNR(_VPFromLogSNR):
    """VDM's learnable monotone log-SNR schedule as a variance-preserving path on [0, 1].

    Args:
        key: PRNG key for the hidden layer's initialization.
        hidden: width H of the monotone network (VDM uses 1024).
        gamma_0, gamma_1: initial endpoints gamma = -log-SNR at t = 0 and t = 1
            (VDM's -13.3 and 5.0: log-SNR from 13.3 down to -5).
        dtype: parameter dtype (default: JAX's default float).
    """

    gamma_0: jax.Array
    raw_gamma_range: jax.Array
    raw_w1: jax.Array
    raw_w2: jax.Array
    b2: jax.Array
    raw_w3: jax.Array
    t_min: float = eqx.field(static=True, default=0.0)
    t_max: float = eqx.field(static=True, default=1.0)

    def __init__(self, key, hidden: int = 1024, gamma_0=-13.3, gamma_1=5.0, dtype=None):
        if not gamma_1 > gamma_0:
            raise ValueError(f"`gamma_1` ({gamma_1}) must exceed `gamma_0` ({gamma_0}): -log-SNR increases in t")
        if hidden < 1:
            raise ValueError(f"`hidden` must be a positive integer; got {hidden}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        k2, k3, kb = jax.random.split(key, 3)
        self.gamma_0 = jnp.asarray(gamma_0, dtype)
        self.raw_gamma_range = _inv_softplus(jnp.asarray(gamma_1 - gamma_0, dtype))
        # l1 starts as the identity-like linear part (VDM initializes it to the linear schedule).
        self.raw_w1 = _inv_softplus(jnp.asarray(1.0, dtype))
        self.raw_w2 = jax.random.normal(k2, (hidden,), dtype)
        self.b2 = jax.random.normal(kb, (hidden,), dtype)
        self.raw_w3 = jax.random.normal(k3, (hidden,), dtype)

    @property
    def gamma_1(self):
        """gamma = -log-SNR at t = 1."""
        return self.gamma_0 + jax.nn.softplus(self.raw_gamma_range)

    def _phi(self, t):
        """The unnormalized increasing network phi(t), elementwise."""
        w1, w2, w3 = jax.nn.softplus(self.raw_w1), jax.nn.softplus(self.raw_w2), jax.nn.softplus(self.raw_w3)
        lead = (1,) * t.ndim  # broadcast the (H,) parameters explicitly against t[..., None]
        h = (2.0 * t - 1.0)[..., None] * w2.reshape(lead + (-1,)) + self.b2.reshape(lead + (-1,))
        h = 2.0 * jax.nn.sigmoid(h) - 1.0  # more stable than tanh (VDM)
        return w1 * t + jnp.sum(h * w3.reshape(lead + (-1,)), axis=-1) / w2.shape[0]

    def gamma(self, t):
        """gamma(t) = -lambda(t), increasing from gamma_0 to gamma_1."""
        t = _f(t)
        phi0, phi1 = self._phi(jnp.zeros((), t.dtype)), self._phi(jnp.ones((), t.dtype))
        frac = (self._phi(t) - phi0) / (phi1 - phi0)
        return self.gamma_0 + (self.gamma_1 - self.gamma_0) * frac

    def log_snr(self, t):
        return -self.gamma(t)
