"""A KL-regularized convolutional autoencoder in the Stable Diffusion VAE layout (NHWC, flax.nnx).

The layout is diffusers' `AutoencoderKL` (src/diffusers/models/autoencoders/autoencoder_kl.py and
vae.py, the "first stage" of Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"), so that `jdiff.latent.load_diffusers_autoencoder` can map a Stable Diffusion
VAE's `diffusion_pytorch_model.safetensors` onto it name for name:

    encoder   conv_in 3x3 -> down_blocks[i] (layers_per_block ResNet blocks of width
              block_out_channels[i], then a stride-2 3x3 conv on the input zero-padded by one
              row/column at the bottom/right, except after the last block) -> mid_block
              (ResNet, single-head self-attention, ResNet) -> GroupNorm, SiLU -> conv_out 3x3 to
              2 * latent_channels (mean and log-variance)
    quant_conv       1x1 on the 2 * latent_channels moments (absent when use_quant_conv=False: SD3, Flux)
    post_quant_conv  1x1 on the latent (absent when use_post_quant_conv=False)
    decoder   conv_in 3x3 -> mid_block -> up_blocks[i] (layers_per_block + 1 ResNet blocks of the
              reversed widths, then 2x nearest-neighbour upsampling and a 3x3 conv, except after
              the last block) -> GroupNorm, SiLU -> conv_out 3x3

A ResNet block is GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> conv3x3 plus the input
(through a 1x1 `conv_shortcut` when the width changes); every GroupNorm has eps 1e-6. The
spatial downsampling factor is 2^(len(block_out_channels) - 1): 8 for the SD VAEs (512x512x3 ->
64x64x4, or 64x64x16 for SD3 / Flux), 4 for 28x28 MNIST with three levels (-> 7x7).

`encode(x)` returns the diagonal Gaussian posterior q(z | x) (`DiagonalGaussian`: mean,
logvar clipped to [-30, 20] as diffusers does; `sample(key)`, `mode()`, `kl()`); `decode(z)`
maps a latent back to an image. The latent normalization that a diffusion model in latent space
uses, z_model = (z - shift) * scale (Rombach et al. 2022, Sec. 4.3.2 and App. D.1: scale = 1 / std
of the latents; SD3 and Flux also subtract a shift), is state of the module (`LatentNorm`
variables, not parameters), so it travels with every checkpoint: `to_latent(x)` / `from_latent(z)`
apply it. `jdiff.latent.estimate_latent_norm` estimates it from data and `jdiff.latent.
autoencoder_loss` keeps a running estimate up to date while the autoencoder trains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["AutoencoderKL", "DiagonalGaussian", "LatentMoments", "LatentNorm"]

_EPS = 1e-6  # every GroupNorm of the SD VAE (resnet_eps=1e-6, conv_norm_out eps=1e-6)
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps the log-variance here


class LatentNorm(nnx.Variable):
    """The latent normalization z_model = (z - shift) * scale: state, not a trained parameter."""


class LatentMoments(nnx.Variable):
    """Running (count, mean, mean of squares) of the posterior means seen in training."""


class DiagonalGaussian(eqx.Module):
    """The encoder's posterior q(z | x) = N(mean, diag(exp(logvar))), per example.

    mean, logvar: arrays of the latent's shape (B, h, w, latent_channels); logvar is clipped to
    [-30, 20] on construction (diffusers' DiagonalGaussianDistribution).
    """

    mean: jax.Array
    logvar: jax.Array

    def __init__(self, mean, logvar):
        self.mean = mean
        self.logvar = jnp.clip(logvar, *LOGVAR_RANGE)

    @property
    def std(self):
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self):
        return jnp.exp(self.logvar)

    def sample(self, key):
        """z = mean + std * eps, eps ~ N(0, I) from `key`."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self):
        """The posterior mean (its mode)."""
        return self.mean

    def kl(self):
        """KL(q(z | x) || N(0, I)) per example, summed over the latent's dimensions: (B,)."""
        axes = tuple(range(1, self.mean.ndim))
        return 0.5 * jnp.sum(jnp.square(self.mean) + self.var - 1.0 - self.logvar, axis=axes)


def _group_norm(ch, groups, dtype, rngs):
    if ch % groups:
        raise ValueError(f"`norm_num_groups`={groups} must divide every width in `block_out_channels`; got {ch}")
    return nnx.GroupNorm(ch, num_groups=groups, epsilon=_EPS, dtype=dtype, rngs=rngs)


def _conv(cin, cout, k=3, *, dtype, rngs, stride=1, padding="SAME"):
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=padding, dtype=dtype, rngs=rngs)


class ResnetBlock(nnx.Module):
    """diffusers' ResnetBlock2D without a time embedding: x + conv2(silu(norm2(conv1(silu(norm1(x))))))."""

    def __init__(self, cin: int, cout: int, groups: int, *, dtype, rngs: nnx.Rngs):
        self.norm1 = _group_norm(cin, groups, dtype, rngs)
        self.conv1 = _conv(cin, cout, dtype=dtype, rngs=rngs)
        self.norm2 = _group_norm(cout, groups, dtype, rngs)
        self.conv2 = _conv(cout, cout, dtype=dtype, rngs=rngs)
        self.conv_shortcut = _conv(cin, cout, 1, dtype=dtype, rngs=rngs) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the h*w positions with a residual connection (the mid
    block's `attentions[0]`: group_norm, to_q, to_k, to_v, to_out[0])."""

    def __init__(self, ch: int, groups: int, *, dtype, rngs: nnx.Rngs):
        self.group_norm = _group_norm(ch, groups, dtype, rngs)
        self.to_q = nnx.Linear(ch, ch, dtype=dtype, rngs=rngs)
        self.to_k = nnx.Linear(ch, ch, dtype=dtype, rngs=rngs)
        self.to_v = nnx.Linear(ch, ch, dtype=dtype, rngs=rngs)
        self.to_out = nnx.List([nnx.Linear(ch, ch, dtype=dtype, rngs=rngs)])

    def __call__(self, x):
        b, h, w, c = x.shape
        t = self.group_norm(x).reshape(b, h * w, 1, c)
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        # Softmax in float32 even under bf16 compute (jax.nn.dot_product_attention upcasts the logits).
        o = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c))
        return x + self.to_out[0](o.reshape(b, h * w, c)).reshape(b, h, w, c)


class MidBlock(nnx.Module):
    def __init__(self, ch: int, groups: int, attention: bool, *, dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(ch, ch, groups, dtype=dtype, rngs=rngs) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(ch, groups, dtype=dtype, rngs=rngs)]) if attention else None

    def __call__(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nnx.Module):
    """Zero-pad one row and column at the bottom/right, then a 3x3 conv of stride 2 (diffusers'
    Downsample2D with padding=0): n -> floor(n / 2), so 28 -> 14 -> 7 -> 3 and 512 -> 256."""

    def __init__(self, ch: int, *, dtype, rngs: nnx.Rngs):
        self.conv = _conv(ch, ch, dtype=dtype, rngs=rngs, stride=2, padding=((0, 1), (0, 1)))

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """2x nearest-neighbour upsampling, then a 3x3 conv (diffusers' Upsample2D with use_conv)."""

    def __init__(self, ch: int, *, dtype, rngs: nnx.Rngs):
        self.conv = _conv(ch, ch, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class DownBlock(nnx.Module):
    def __init__(self, cin, cout, layers, groups, downsample, *, dtype, rngs):
        self.resnets = nnx.List(
            [ResnetBlock(cin if i == 0 else cout, cout, groups, dtype=dtype, rngs=rngs) for i in range(layers)]
        )
        self.downsamplers = nnx.List([Downsample(cout, dtype=dtype, rngs=rngs)]) if downsample else None

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpBlock(nnx.Module):
    def __init__(self, cin, cout, layers, groups, upsample, *, dtype, rngs):
        self.resnets = nnx.List(
            [ResnetBlock(cin if i == 0 else cout, cout, groups, dtype=dtype, rngs=rngs) for i in range(layers)]
        )
        self.upsamplers = nnx.List([Upsample(cout, dtype=dtype, rngs=rngs)]) if upsample else None

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nnx.Module):
    def __init__(self, cin, latent_channels, widths, layers, groups, attention, *, dtype, rngs):
        kw = {"dtype": dtype, "rngs": rngs}
        self.conv_in = _conv(cin, widths[0], **kw)
        blocks, prev = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(DownBlock(prev, w, layers, groups, i < len(widths) - 1, **kw))
            prev = w
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(widths[-1], groups, attention, **kw)
        self.conv_norm_out = _group_norm(widths[-1], groups, dtype, rngs)
        self.conv_out = _conv(widths[-1], 2 * latent_channels, **kw)

    def __call__(self, x):
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(nnx.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):
    def __init__(self, latent_channels, cout, widths, layers, groups, attention, *, dtype, rngs):
        kw = {"dtype": dtype, "rngs": rngs}
        rev = list(reversed(widths))
        self.conv_in = _conv(latent_channels, rev[0], **kw)
        self.mid_block = MidBlock(rev[0], groups, attention, **kw)
        blocks, prev = [], rev[0]
        for i, w in enumerate(rev):
            blocks.append(UpBlock(prev, w, layers + 1, groups, i < len(rev) - 1, **kw))
            prev = w
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = _group_norm(widths[0], groups, dtype, rngs)
        self.conv_out = _conv(widths[0], cout, **kw)

    def features(self, z):
        """Activations entering the last layer (conv_out), after GroupNorm and SiLU."""
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return nnx.silu(self.conv_norm_out(h))

    def __call__(self, z):
        return self.conv_out(self.features(z))


class AutoencoderKL(nnx.Module):
    """A KL autoencoder: `encode(x) -> DiagonalGaussian`, `decode(z) -> x`, images NHWC.

    Args:
        in_channels: image channels C (3 for RGB, 1 for MNIST).
        out_channels: decoded channels (default in_channels).
        block_out_channels: the width of each resolution level (diffusers' name); the number of
            levels sets the downsampling factor 2^(levels - 1). SD VAEs: (128, 256, 512, 512).
        layers_per_block: ResNet blocks per encoder level (the decoder has one more), the depth.
        latent_channels: channels of the latent z (4 for SD 1.x/2.x/SDXL, 16 for SD3 / Flux).
        norm_num_groups: GroupNorm groups (32 in the SD VAEs); must divide every width.
        mid_block_add_attention: the mid blocks' self-attention (diffusers' default True).
        use_quant_conv, use_post_quant_conv: the 1x1 convs around the latent (False in SD3 / Flux).
        scaling_factor, shift_factor: the initial latent normalization z_model =
            (z - shift_factor) * scaling_factor (diffusers' config names; 0.18215 and no shift for
            SD 1.x/2.x, 0.13025 for SDXL, 1.5305 / 0.0609 for SD3, 0.3611 / 0.1159 for Flux).
            `jdiff.latent.estimate_latent_norm` / `set_latent_norm` replace it from data.
        dtype: compute dtype (jnp.bfloat16 on accelerators); parameters stay float32.
        rngs: nnx.Rngs for the initialization.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        *,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        widths = tuple(int(w) for w in block_out_channels)
        if not widths or min(widths) < 1:
            raise ValueError(
                f"`block_out_channels` must be a non-empty sequence of positive widths; got {block_out_channels!r}"
            )
        for name, v in (
            ("in_channels", in_channels),
            ("layers_per_block", layers_per_block),
            ("latent_channels", latent_channels),
            ("norm_num_groups", norm_num_groups),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {v!r}")
        if not (math.isfinite(scaling_factor) and scaling_factor > 0 and math.isfinite(shift_factor)):
            raise ValueError(
                f"`scaling_factor` must be finite and positive and `shift_factor` finite; got "
                f"{scaling_factor!r}, {shift_factor!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.block_out_channels = widths
        self.latent_channels = latent_channels
        self.downsampling_factor = 2 ** (len(widths) - 1)
        kw = {"dtype": dtype, "rngs": rngs}
        self.encoder = Encoder(
            in_channels, latent_channels, widths, layers_per_block, norm_num_groups, mid_block_add_attention, **kw
        )
        self.decoder = Decoder(
            latent_channels, self.out_channels, widths, layers_per_block, norm_num_groups, mid_block_add_attention, **kw
        )
        self.quant_conv = _conv(2 * latent_channels, 2 * latent_channels, 1, **kw) if use_quant_conv else None
        self.post_quant_conv = _conv(latent_channels, latent_channels, 1, **kw) if use_post_quant_conv else None
        self.scale = LatentNorm(jnp.asarray(scaling_factor, jnp.float32))
        self.shift = LatentNorm(jnp.asarray(shift_factor, jnp.float32))
        self.moments = LatentMoments(jnp.zeros((3,), jnp.float32))

    # -- shapes -----------------------------------------------------------------------
    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """The latent shape (h, w, latent_channels) of one image of shape (H, W, C)."""
        h, w = int(image_shape[0]), int(image_shape[1])
        for _ in range(len(self.block_out_channels) - 1):
            h, w = h // 2, w // 2  # pad 1 at the end, 3x3 conv of stride 2: floor((n + 1 - 3) / 2) + 1
        return h, w, self.latent_channels

    # -- the autoencoder --------------------------------------------------------------
    def encode(self, x) -> DiagonalGaussian:
        """The posterior q(z | x) of images x (B, H, W, in_channels)."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"`x` for this AutoencoderKL must have shape (B, H, W, {self.in_channels}); got {x.shape}")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(x.dtype), 2, axis=-1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z):
        """Images (B, H, W, out_channels) of latents z (B, h, w, latent_channels)."""
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(
                f"`z` for this AutoencoderKL must have shape (B, h, w, {self.latent_channels}); got {z.shape}"
            )
        h = z if self.post_quant_conv is None else self.post_quant_conv(z)
        return self.decoder(h).astype(z.dtype)

    def __call__(self, x, key=None):
        """(reconstruction, posterior): decode a posterior sample (with `key`) or its mode."""
        posterior = self.encode(x)
        z = posterior.mode() if key is None else posterior.sample(key)
        return self.decode(z), posterior

    # -- the latent space a diffusion model sees --------------------------------------
    def to_latent(self, x, key=None):
        """The normalized latent (z - shift) * scale of images x: the posterior's mode, or a
        posterior sample with `key`."""
        posterior = self.encode(x)
        z = posterior.mode() if key is None else posterior.sample(key)
        return self.normalize(z)

    def from_latent(self, z):
        """Images decoded from normalized latents: decode(z / scale + shift)."""
        return self.decode(self.unnormalize(z))

    def normalize(self, z):
        """(z - shift) * scale."""
        return ((z - self.shift[...]) * self.scale[...]).astype(z.dtype)

    def unnormalize(self, z):
        """z / scale + shift."""
        return (z / self.scale[...] + self.shift[...]).astype(z.dtype)
