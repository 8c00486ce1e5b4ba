"""Training the autoencoder: reconstruction + KL (+ perceptual) (+ a patch GAN with Esser et al.'s adaptive weight).

    pair = latent.AutoencoderGAN(ae, latent.PatchDiscriminator(1, rngs=rngs))   # or discriminator=None
    loss_fn = lambda pair, batch, key: latent.autoencoder_loss(pair, key, batch["x"], kl_weight=1e-6)
    step = training.make_train_step(loss_fn, graphdef, optax.adam(4.5e-6 * batch), ...)

The objective is the first stage of latent diffusion (Rombach et al. 2022, App. G; the
`LPIPSWithDiscriminator` of the LDM / taming-transformers code), per example i:

    rec_i  = sum over pixels of (l1_weight |x - x_rec| + l2_weight (x - x_rec)^2) + perceptual_weight P(x, x_rec)_i
    kl_i   = KL(q(z | x_i) || N(0, I)), summed over the latent
    gen_i  = -mean over patches of D(x_rec_i)                         (the generator's hinge term)
    disc_i = (mean relu(1 - D(x_i)) + mean relu(1 + D(x_rec_i))) / 2  (the discriminator's hinge loss)
    loss_i = rec_i + kl_weight kl_i + f (lambda gen_i + disc_i)

with f = 1 once `step` >= disc_start (0 before), and Esser et al. (2021, "Taming Transformers",
Eq. 7) adaptive weight lambda = disc_weight ||grad_W mean(rec)|| / (||grad_W mean(gen)|| + 1e-4),
clipped to [0, 1e4] and held constant (stop_gradient), W the decoder's last layer (conv_out). The
sums over pixels and latents, and the mean over the batch that the train step takes, are the LDM
code's `sum(.) / batch` normalization, so `kl_weight` means what it means there (1e-6 for the SD
VAEs). Not included: LDM's learned scalar output log-variance (it starts at 0, where the objective
is the one above).

Both players train in one `jdiff.training.make_train_step` update: the generator terms see the
discriminator under stop_gradient and the discriminator's hinge loss sees the reconstruction under
stop_gradient, so the gradient of the summed loss with respect to each network is that network's
own objective (a simultaneous step of both; an optimizer that treats every parameter on its own,
such as Adam, then acts as two optimizers with the same settings).

Every step also folds the batch's posterior means into the autoencoder's running latent moments
(`update_latent_norm`), so each checkpoint carries the scale (and shift) of its encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff.latent._scale import update_latent_norm
from jdiff.models.autoencoder import AutoencoderKL

__all__ = [
    "AutoencoderGAN",
    "AutoencoderLoss",
    "PatchDiscriminator",
    "adaptive_weight",
    "autoencoder_loss",
    "autoencoder_loss_terms",
    "feature_distance",
    "hinge_discriminator_loss",
]

ADAPTIVE_EPS = 1e-4  # taming-transformers' calculate_adaptive_weight: ||g_rec|| / (||g_gan|| + 1e-4)
ADAPTIVE_MAX = 1e4  # ... clamped to [0, 1e4]


class PatchDiscriminator(nnx.Module):
    """A PatchGAN discriminator (Isola et al. 2017; taming-transformers' NLayerDiscriminator): D(x) -> logits
    (B, h, w), one per overlapping patch.

    4x4 convs: stride 2 from `in_channels` to `ch` (LeakyReLU 0.2), then `num_layers - 1` stride-2
    convs doubling the width (up to 8 ch), a stride-1 conv, and a stride-1 conv to one logit, each
    hidden conv followed by a norm and LeakyReLU 0.2. The norm is GroupNorm (taming uses BatchNorm:
    a batch-statistics state that a pure train step would have to thread; GroupNorm has none).
    """

    def __init__(self, in_channels: int, *, ch: int = 64, num_layers: int = 3, dtype=None, rngs: nnx.Rngs):
        if num_layers < 1:
            raise ValueError(f"`num_layers` must be a positive integer; got {num_layers}")
        kw = {"dtype": dtype, "rngs": rngs}
        conv = lambda cin, cout, stride: nnx.Conv(
            cin, cout, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), **kw
        )
        widths = [ch * min(2**i, 8) for i in range(num_layers + 1)]
        self.conv_in = conv(in_channels, widths[0], 2)
        self.convs = nnx.List(
            [conv(widths[i - 1], widths[i], 2 if i < num_layers else 1) for i in range(1, num_layers + 1)]
        )
        self.norms = nnx.List([nnx.GroupNorm(w, num_groups=min(32, w // 4) or 1, **kw) for w in widths[1:]])
        self.conv_out = conv(widths[-1], 1, 1)

    def __call__(self, x):
        h = nnx.leaky_relu(self.conv_in(x), 0.2)
        for conv, norm in zip(self.convs, self.norms):
            h = nnx.leaky_relu(norm(conv(h)), 0.2)
        return self.conv_out(h)[..., 0].astype(jnp.float32)


class AutoencoderGAN(nnx.Module):
    """The autoencoder and its (optional) discriminator as one trainable module."""

    def __init__(self, autoencoder: AutoencoderKL, discriminator=None):
        if not isinstance(autoencoder, AutoencoderKL):
            raise TypeError(f"`autoencoder` must be a jdiff.models.AutoencoderKL; got {type(autoencoder).__name__}")
        if discriminator is not None and not callable(discriminator):
            raise TypeError(
                f"`discriminator` must be None or a callable D(x) -> patch logits; got {type(discriminator).__name__}"
            )
        self.autoencoder = autoencoder
        self.discriminator = discriminator


class AutoencoderLoss(NamedTuple):
    """Per-example terms (B,) of `autoencoder_loss_terms`, and the adaptive weight (a scalar)."""

    loss: jax.Array
    reconstruction: jax.Array
    kl: jax.Array
    generator: jax.Array
    discriminator: jax.Array
    adaptive_weight: jax.Array


def _per_example_sum(a):
    return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def _per_example_mean(a):
    return jnp.mean(a, axis=tuple(range(1, a.ndim)))


def hinge_discriminator_loss(logits_real, logits_fake):
    """(mean relu(1 - D(x)) + mean relu(1 + D(x_rec))) / 2 per example (means over patches)."""
    return 0.5 * (_per_example_mean(jax.nn.relu(1.0 - logits_real)) + _per_example_mean(jax.nn.relu(1.0 + logits_fake)))


def adaptive_weight(grad_rec, grad_gen, disc_weight: float = 1.0):
    """Esser et al.'s lambda = disc_weight ||grad_rec|| / (||grad_gen|| + 1e-4), clipped to [0, 1e4],
    under stop_gradient (the gradients are of the batch-mean losses w.r.t. the decoder's last layer)."""
    w = jnp.linalg.norm(jnp.ravel(grad_rec)) / (jnp.linalg.norm(jnp.ravel(grad_gen)) + ADAPTIVE_EPS)
    return jax.lax.stop_gradient(jnp.clip(w, 0.0, ADAPTIVE_MAX) * disc_weight)


def feature_distance(feature_fn: Callable, *, eps: float = 1e-10) -> Callable:
    """A perceptual distance P(x, y) -> (B,) from a feature network `feature_fn(x)` -> a feature
    array or a list of them (B, ...): per layer, features unit-normalized along the last axis,
    squared differences averaged over positions and summed over channels, summed over layers
    (LPIPS's form without its learned per-channel weights)."""

    def norm(f):
        return f / jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True) + eps)

    def distance(x, y):
        fx, fy = feature_fn(x), feature_fn(y)
        fx, fy = (fx, fy) if isinstance(fx, (list, tuple)) else ((fx,), (fy,))
        total = 0.0
        for a, b in zip(fx, fy):
            d = jnp.square(norm(a) - norm(b))
            total = total + (jnp.sum(d, axis=1) if d.ndim == 2 else _per_example_mean(jnp.sum(d, axis=-1)))
        return total

    return distance


def _conv_out(decoder, h, kernel):
    """The decoder's last layer (a 3x3 SAME conv) as a function of its kernel."""
    out = jax.lax.conv_general_dilated(
        h, kernel.astype(h.dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return out + decoder.conv_out.bias[...].astype(h.dtype)[None, None, None, :]


def autoencoder_loss_terms(
    model,
    key,
    x,
    *,
    l1_weight: float = 1.0,
    l2_weight: float = 0.0,
    kl_weight: float = 1e-6,
    perceptual_fn: Callable | None = None,
    perceptual_weight: float = 0.0,
    disc_weight: float = 0.5,
    disc_start: int = 0,
    step=None,
    sample_posterior: bool = True,
    update_norm: bool = True,
    shift: bool = False,
) -> AutoencoderLoss:
    """Every term of the autoencoder objective per example (see the module docstring).

    Args:
        model: an `AutoencoderGAN` (autoencoder and discriminator or None), or a bare
            `jdiff.models.AutoencoderKL` (no GAN terms).
        key: PRNG key of the posterior sample.
        x: images (B, H, W, C).
        l1_weight, l2_weight: weights of the per-pixel L1 and squared errors.
        kl_weight: weight of the KL term (1e-6 in the LDM / SD VAE configs).
        perceptual_fn: P(x, x_rec) -> (B,) (e.g. `feature_distance(feature_fn)`), used when
            perceptual_weight > 0.
        disc_weight: the factor on the adaptive weight (0.5 in the LDM configs).
        disc_start: step at which the GAN terms switch on (both players; 50001 in LDM's KL-f8).
        step: the train step (a traced int; `jdiff.training.ContextLoss` provides it); None: on.
        sample_posterior: decode a posterior sample (True, as LDM) or the posterior mean.
        update_norm, shift: fold the posterior means into the running latent normalization
            (`update_latent_norm`, with shift = running mean when `shift`).
    """
    ae = model.autoencoder if isinstance(model, AutoencoderGAN) else model
    disc = model.discriminator if isinstance(model, AutoencoderGAN) else None
    if not isinstance(ae, AutoencoderKL):
        raise TypeError(
            f"`model` must be a latent.AutoencoderGAN or a jdiff.models.AutoencoderKL; got {type(model).__name__}"
        )
    for name, v in (
        ("l1_weight", l1_weight),
        ("l2_weight", l2_weight),
        ("kl_weight", kl_weight),
        ("perceptual_weight", perceptual_weight),
        ("disc_weight", disc_weight),
    ):
        if not (isinstance(v, (int, float)) and v >= 0):
            raise ValueError(f"`{name}` must be a number >= 0; got {v!r}")
    if perceptual_weight and perceptual_fn is None:
        raise ValueError("`perceptual_fn` is required when perceptual_weight > 0 (e.g. latent.feature_distance(f))")
    posterior = ae.encode(x)
    if update_norm:
        update_latent_norm(ae, posterior.mean, shift=shift)
    z = posterior.sample(key) if sample_posterior else posterior.mode()
    h = ae.decoder.features(z if ae.post_quant_conv is None else ae.post_quant_conv(z))
    kernel = ae.decoder.conv_out.kernel[...]

    def rec_of(k):
        x_rec = _conv_out(ae.decoder, h, k).astype(x.dtype)
        err = l1_weight * jnp.abs(x - x_rec) + l2_weight * jnp.square(x - x_rec)
        rec = _per_example_sum(err)
        if perceptual_weight:
            rec = rec + perceptual_weight * perceptual_fn(x, x_rec)
        return rec, x_rec

    rec, x_rec = rec_of(kernel)
    kl = posterior.kl()
    zero = jnp.zeros_like(rec)
    if disc is None:
        return AutoencoderLoss(rec + kl_weight * kl, rec, kl, zero, zero, jnp.zeros((), rec.dtype))

    frozen = jax.tree.map(lambda a: jax.lax.stop_gradient(a) if isinstance(a, jax.Array) else a, disc)

    def gen_of(k):
        return -_per_example_mean(frozen(_conv_out(ae.decoder, h, k).astype(x.dtype)))

    gen = gen_of(kernel)
    g_rec = jax.grad(lambda k: jnp.mean(rec_of(k)[0]))(kernel)
    g_gen = jax.grad(lambda k: jnp.mean(gen_of(k)))(kernel)
    lam = adaptive_weight(g_rec, g_gen, disc_weight)
    d = hinge_discriminator_loss(disc(x), disc(jax.lax.stop_gradient(x_rec)))
    on = jnp.asarray(1.0, rec.dtype) if step is None else (jnp.asarray(step) >= disc_start).astype(rec.dtype)
    loss = rec + kl_weight * kl + on * (lam * gen + d)
    return AutoencoderLoss(loss, rec, kl, gen, d, lam * on)


def autoencoder_loss(model, key, x, **options):
    """The autoencoder objective per example (B,): `autoencoder_loss_terms(...).loss`."""
    return autoencoder_loss_terms(model, key, x, **options).loss
