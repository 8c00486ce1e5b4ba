"""The latent normalization z_model = (z - shift) * scale, estimated from data.

Rombach et al. 2022 (Sec. 4.3.2, App. D.1) rescale the autoencoder's latents "by the component-wise
standard deviation" so the diffusion model sees unit variance: scale = 1 / std(z) over every
latent entry of a batch of training images (Stable Diffusion's 0.18215); SD3 and Flux also
subtract a shift (their mean; 0.0609 and 0.1159). jdiff keeps the pair on the autoencoder as
`LatentNorm` state, so it is saved and restored with every checkpoint.

    scale, shift = latent.estimate_latent_norm(ae, x, shift=True)   # from images x
    latent.set_latent_norm(ae, scale, shift)                        # stored on the module

`jdiff.latent.autoencoder_loss` also keeps a running estimate while the autoencoder trains
(`update_latent_norm`): the running mean and mean square of the posterior means, so the
checkpoint of every step carries the scale of the encoder it holds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.models.autoencoder import AutoencoderKL

__all__ = ["encode_dataset", "estimate_latent_norm", "set_latent_norm", "update_latent_norm"]


def _check(autoencoder):
    if not isinstance(autoencoder, AutoencoderKL):
        raise TypeError(f"`autoencoder` must be a jdiff.models.AutoencoderKL; got {type(autoencoder).__name__}")


@functools.partial(jax.jit, static_argnums=(0, 4))
def _encode(graphdef, state, x, key, normalized):
    ae = nnx.merge(graphdef, state)
    post = ae.encode(x)
    z = post.mode() if key is None else post.sample(key)
    return ae.normalize(z) if normalized else z


def encode_dataset(
    autoencoder: AutoencoderKL, x, *, batch_size: int = 256, key=None, normalized: bool = True, dtype=np.float32
) -> np.ndarray:
    """The latents of images x (N, H, W, C) as a host array (N, h, w, latent_channels).

    batch_size: images per jitted call; the last batch is zero-padded to it (one compilation).
    key: None encodes the posterior mode; a PRNG key draws one posterior sample per image
        (batch i uses fold_in(key, i)).
    normalized: apply the autoencoder's normalization (z - shift) * scale (what a latent model sees).
    """
    _check(autoencoder)
    x = np.asarray(x)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size}")
    n = x.shape[0]
    graphdef, state = nnx.split(autoencoder)
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        xb = x[start : start + batch_size]
        pad = batch_size - xb.shape[0]
        if pad and n > batch_size:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        kb = None if key is None else jax.random.fold_in(key, i)
        z = np.asarray(jax.device_get(_encode(graphdef, state, jnp.asarray(xb), kb, normalized)))
        out.append(z[: min(batch_size, n - start)].astype(dtype))
    return np.concatenate(out) if out else np.zeros((0, *autoencoder.latent_shape(x.shape[1:])), dtype)


def estimate_latent_norm(
    autoencoder: AutoencoderKL, x, *, shift: bool = False, batch_size: int = 256, key=None
) -> tuple[float, float]:
    """(scale, shift) of the latents of images x: scale = 1 / std of every latent entry, shift =
    their mean (shift=True, as SD3 / Flux) or 0 (as SD 1.x / SDXL, which only rescale).

    The std is the centred one in both cases (Rombach et al.'s 1 / z.std()). Latents are the
    posterior modes, or one posterior sample per image with `key`.
    """
    z = encode_dataset(autoencoder, x, batch_size=batch_size, key=key, normalized=False, dtype=np.float64)
    if z.size < 2:
        raise ValueError(f"`x` must hold enough images for a standard deviation; got {np.shape(x)[0]}")
    std = float(z.std())
    if not (np.isfinite(std) and std > 0):
        raise ValueError(f"the latents of `x` have standard deviation {std}: no scale can normalize them")
    return 1.0 / std, float(z.mean()) if shift else 0.0


def set_latent_norm(autoencoder: AutoencoderKL, scale: float, shift: float = 0.0) -> AutoencoderKL:
    """Store (scale, shift) on the autoencoder (in place; returned for chaining)."""
    _check(autoencoder)
    if not (np.isfinite(scale) and scale > 0 and np.isfinite(shift)):
        raise ValueError(f"`scale` must be finite and positive and `shift` finite; got {scale!r}, {shift!r}")
    autoencoder.scale[...] = jnp.asarray(scale, jnp.float32)
    autoencoder.shift[...] = jnp.asarray(shift, jnp.float32)
    return autoencoder


def update_latent_norm(autoencoder: AutoencoderKL, z, *, shift: bool = False, decay: float = 0.99) -> None:
    """Fold a batch of latents z into the running moments and set scale = 1 / running std (and
    shift = running mean with shift=True). Traceable: use it inside a loss.

    The moments are exponential averages of the batch mean and mean square with decay
    min(decay, n / (n + 1)) at the n-th update, so the first batch counts alone (Rombach et
    al.'s first-batch estimate) and later ones track the encoder as it trains.
    """
    z = jax.lax.stop_gradient(jnp.asarray(z, jnp.float32))
    count, mean, sq = autoencoder.moments[...]
    d = jnp.minimum(decay, count / (count + 1.0))
    mean = d * mean + (1.0 - d) * jnp.mean(z)
    sq = d * sq + (1.0 - d) * jnp.mean(jnp.square(z))
    autoencoder.moments[...] = jnp.stack([count + 1.0, mean, sq])
    var = jnp.maximum(sq - jnp.square(mean), 1e-12)
    autoencoder.scale[...] = jax.lax.rsqrt(var)
    autoencoder.shift[...] = mean if shift else jnp.zeros_like(mean)
