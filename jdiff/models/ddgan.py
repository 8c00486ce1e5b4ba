"""Denoising-diffusion-GAN networks (Xiao et al. 2022): generators and time-conditional discriminators.

    G(x_t, z, t, cond) -> x0_hat        D(x_prev, x_t, t, cond) -> (B,) logits

as `jdiff.adversarial` expects. The latent z enters the generator as in Xiao et al.'s NCSN++
generator: a mapping network (PixelNorm, then Linear + SiLU layers, their `z_transform`) turns
z into a style vector that modulates every normalisation layer (adaptive LayerNorm in the MLP,
adaptive GroupNorm in the conv net: gamma(z) * norm(h) + beta(z), gamma initialised at 1 and
beta at 0). Discriminators see the pair as a concatenation [x_prev, x_t] and the time through
an embedding added inside every block, with LeakyReLU(0.2) as theirs; they have no minibatch
standard-deviation layer, so examples never interact (the per-example R1 penalty of
`jdiff.adversarial.ddgan_loss` relies on it).

    GeneratorMLP / DiscriminatorMLP     flattened low-dimensional data (B, *shape), e.g. 2-D sets
    GeneratorConv / DiscriminatorConv   small NHWC images (8x8 digits, 28x28 MNIST)
    GANPair                             an nnx container with `.generator` and `.discriminator`
    DDGANMLP / DDGANConv                the two pairs, built from one set of keyword arguments

A pair is one nnx Module, so `jdiff.training` keeps both networks in one train state and
`jdiff.adversarial.two_player_optimizer` gives each its own optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff.models._common import axes, check_input, norm_dtype, num_groups, zeros_linear
from jdiff.models.embeddings import TimeEmbedding, batch_times, check_unconditional, class_embedding_or_none

__all__ = [
    "DDGANMLP",
    "DDGANConv",
    "DiscriminatorConv",
    "DiscriminatorMLP",
    "GANPair",
    "GeneratorConv",
    "GeneratorMLP",
]

OUTPUTS = ("none", "tanh")
_LEAK = 0.2  # Xiao et al.'s discriminators: LeakyReLU(0.2)


def _check_output(output):
    if output not in OUTPUTS:
        raise ValueError(
            f"`output` must be one of {OUTPUTS} (tanh bounds x0_hat to [-1, 1], as Xiao et al.'s "
            f"image generators); got {output!r}"
        )
    return output


def _check_latent(x, z, latent_dim):
    if jnp.shape(z) != (x.shape[0], latent_dim):
        raise ValueError(
            f"`z` must have shape ({x.shape[0]}, {latent_dim}) (one latent per example); got {jnp.shape(z)}"
        )


class _Mapping(nnx.Module):
    """z -> style: PixelNorm, then `layers` x (Linear, SiLU) (Xiao et al.'s z_transform)."""

    def __init__(self, latent_dim: int, dim: int, layers: int, *, dtype, rngs, param_dtype=jnp.float32):
        self.layers = nnx.List(
            [
                nnx.Linear(
                    latent_dim if i == 0 else dim,
                    dim,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                    kernel_metadata=axes(None, "embed"),
                )
                for i in range(max(layers, 1))
            ]
        )

    def __call__(self, z):
        z = z.astype(jnp.promote_types(z.dtype, jnp.float32))  # PixelNorm's statistics in float32 at least
        z = z * jax.lax.rsqrt(jnp.mean(z * z, axis=-1, keepdims=True) + 1e-8)
        for layer in self.layers:
            z = nnx.silu(layer(z))
        return z


class _Style(nnx.Module):
    """gamma(style), beta(style) for an adaptive norm of `ch` features: gamma starts at 1, beta at 0."""

    def __init__(self, style_dim: int, ch: int, *, dtype, rngs, param_dtype=jnp.float32):
        self.proj = zeros_linear(style_dim, 2 * ch, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, style):
        gamma, beta = jnp.split(self.proj(style), 2, axis=-1)
        return 1.0 + gamma, beta


# ---------------------------------------------------------------------------------------------
# MLPs for low-dimensional data
# ---------------------------------------------------------------------------------------------


class _GenBlock(nnx.Module):
    """h + Linear(SiLU(Linear(SiLU(AdaLN(h; z)) ) + temb)), last layer zero-initialised."""

    def __init__(self, hidden, style_dim, *, dtype, rngs, param_dtype=jnp.float32):
        self.norm = nnx.LayerNorm(
            hidden, use_scale=False, use_bias=False, dtype=norm_dtype(dtype), param_dtype=param_dtype, rngs=rngs
        )
        self.style = _Style(style_dim, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense1 = nnx.Linear(
            hidden, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_metadata=axes("embed", "mlp")
        )
        self.emb = nnx.Linear(
            hidden, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_metadata=axes("embed", "mlp")
        )
        self.dense2 = nnx.Linear(
            hidden,
            hidden,
            kernel_init=nnx.initializers.zeros,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            kernel_metadata=axes("mlp", "embed"),
        )

    def __call__(self, h, temb, style):
        gamma, beta = self.style(style)
        r = self.dense1(nnx.silu(gamma * self.norm(h) + beta)) + self.emb(temb)
        return h + self.dense2(nnx.silu(r))


class GeneratorMLP(nnx.Module):
    """Residual MLP generator G(x_t, z, t, cond) -> x0_hat for data (B, *shape), flattened.

    in_features: the flattened size of one example (2 for the toy sets).
    latent_dim: size of z (Xiao et al. use 100); z_layers: Linear + SiLU layers of the mapping
        network (their n_mlp = 3 or 4); hidden, depth: width and residual blocks.
    num_classes: None (unconditional) or K classes with a null class K (class embedding added
        to the time embedding).
    output: "none" (x0_hat unbounded) or "tanh" (bounded to [-1, 1], for images).
    dtype: compute dtype (normalisation in float32 at least); param_dtype: dtype of the parameters
        (float32 master weights).
    """

    def __init__(
        self,
        in_features: int,
        *,
        latent_dim: int = 32,
        hidden: int = 256,
        depth: int = 3,
        z_layers: int = 2,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        output: str = "none",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features, self.latent_dim = in_features, latent_dim
        self.num_classes, self.output, self.dtype = num_classes, _check_output(output), dtype
        self.time = TimeEmbedding(hidden, hidden, kind=time_embedding, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.label = class_embedding_or_none(num_classes, hidden, dtype, rngs, param_dtype)
        self.mapping = _Mapping(latent_dim, hidden, z_layers, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.inp = nnx.Linear(
            in_features, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_metadata=axes(None, "embed")
        )
        self.blocks = nnx.List(
            [_GenBlock(hidden, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for _ in range(depth)]
        )
        self.out_norm = nnx.LayerNorm(hidden, dtype=norm_dtype(dtype), param_dtype=param_dtype, rngs=rngs)
        self.out = nnx.Linear(
            hidden, in_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_metadata=axes("embed", None)
        )

    def __call__(self, x, z, t, cond=None):
        """x (B, ...) with prod(x.shape[1:]) = in_features; z (B, latent_dim); t scalar or (B,)."""
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"`x` must have shape (B, ...) with {self.in_features} features per example; got {x.shape}"
            )
        _check_latent(x, z, self.latent_dim)
        b = x.shape[0]
        temb = self.time(batch_times(t, x))
        if self.label is None:
            check_unconditional(cond, "GeneratorMLP")
        else:
            temb = temb + self.label(cond, b)
        temb, style = nnx.silu(temb), self.mapping(z.astype(temb.dtype))
        h = self.inp(x.reshape(b, self.in_features))
        for block in self.blocks:
            h = block(h, temb, style)
        y = self.out(nnx.silu(self.out_norm(h)))
        if self.output == "tanh":
            y = jnp.tanh(y)
        return y.reshape(x.shape).astype(x.dtype)


class _DiscBlock(nnx.Module):
    """h + Linear(LeakyReLU(Linear(LeakyReLU(h)) + temb))."""

    def __init__(self, hidden, *, dtype, rngs, param_dtype=jnp.float32):
        self.dense1 = nnx.Linear(
            hidden, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_metadata=axes("embed", "mlp")
        )
        self.emb = nnx.Linear(
            hidden, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_metadata=axes("embed", "mlp")
        )
        self.dense2 = nnx.Linear(
            hidden, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_metadata=axes("mlp", "embed")
        )

    def __call__(self, h, temb):
        r = self.dense1(nnx.leaky_relu(h, _LEAK)) + self.emb(temb)
        return h + self.dense2(nnx.leaky_relu(r, _LEAK))


class DiscriminatorMLP(nnx.Module):
    """Residual MLP discriminator D(x_prev, x_t, t, cond) -> (B,) logits on the pair [x_prev, x_t].

    in_features: the flattened size of one example; hidden, depth: width and residual blocks;
    num_classes: None or K classes (null class K), embedded with the time.
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: int = 256,
        depth: int = 3,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features, self.num_classes, self.dtype = in_features, num_classes, dtype
        self.time = TimeEmbedding(hidden, hidden, kind=time_embedding, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.label = class_embedding_or_none(num_classes, hidden, dtype, rngs, param_dtype)
        self.inp = nnx.Linear(
            2 * in_features,
            hidden,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            kernel_metadata=axes(None, "embed"),
        )
        self.blocks = nnx.List(
            [_DiscBlock(hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for _ in range(depth)]
        )
        self.out = nnx.Linear(
            hidden, 1, dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_metadata=axes("embed", None)
        )

    def __call__(self, x_prev, x_t, t, cond=None):
        """x_prev, x_t (B, ...) with in_features values each; t scalar or (B,); returns (B,) logits."""
        if x_t.ndim < 2 or math.prod(x_t.shape[1:]) != self.in_features or x_prev.shape != x_t.shape:
            raise ValueError(
                f"`x_prev` and `x_t` must both have shape (B, ...) with {self.in_features} features per "
                f"example; got {x_prev.shape} and {x_t.shape}"
            )
        b = x_t.shape[0]
        temb = self.time(batch_times(t, x_t))
        if self.label is None:
            check_unconditional(cond, "DiscriminatorMLP")
        else:
            temb = temb + self.label(cond, b)
        temb = nnx.leaky_relu(temb, _LEAK)
        h = self.inp(jnp.concatenate([x_prev.reshape(b, -1), x_t.reshape(b, -1)], axis=-1))
        for block in self.blocks:
            h = block(h, temb)
        return self.out(nnx.leaky_relu(h, _LEAK))[:, 0].astype(x_t.dtype)


# ---------------------------------------------------------------------------------------------
# Convolutional networks for small images
# ---------------------------------------------------------------------------------------------


def _conv(cin, cout, k=3, *, stride=1, zero=False, dtype, rngs, param_dtype=jnp.float32):
    kw = {"kernel_init": nnx.initializers.zeros} if zero else {}
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=(stride, stride),
        padding="SAME",
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        kernel_metadata=axes(None, None, "embed", "mlp"),
        **kw,
    )


class _AdaGNBlock(nnx.Module):
    """Residual block: AdaGN(z) -> SiLU -> conv3x3 (+ temb) -> AdaGN(z) -> SiLU -> conv3x3 (zero init)."""

    def __init__(self, cin, cout, emb_dim, style_dim, *, dtype, rngs, param_dtype=jnp.float32):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        norm = {**kw, "dtype": norm_dtype(dtype)}  # float32 statistics under a bfloat16 compute dtype
        self.norm1 = nnx.GroupNorm(cin, num_groups(cin), use_scale=False, use_bias=False, **norm)
        self.style1 = _Style(style_dim, cin, **kw)
        self.conv1 = _conv(cin, cout, **kw)
        self.emb = nnx.Linear(emb_dim, cout, kernel_metadata=axes("embed", "mlp"), **kw)
        self.norm2 = nnx.GroupNorm(cout, num_groups(cout), use_scale=False, use_bias=False, **norm)
        self.style2 = _Style(style_dim, cout, **kw)
        self.conv2 = _conv(cout, cout, zero=True, **kw)
        self.skip = _conv(cin, cout, 1, **kw) if cin != cout else None

    def __call__(self, x, temb, style):
        g, b = self.style1(style)
        h = self.conv1(nnx.silu(g[:, None, None] * self.norm1(x) + b[:, None, None]))
        h = h + self.emb(temb)[:, None, None, :]
        g, b = self.style2(style)
        h = self.conv2(nnx.silu(g[:, None, None] * self.norm2(h) + b[:, None, None]))
        return ((x if self.skip is None else self.skip(x)) + h) / math.sqrt(2.0)


class GeneratorConv(nnx.Module):
    """A small U-Net generator G(x_t, z, t, cond) -> x0_hat for NHWC images, z through AdaGN.

    image_size: H (square) or (H, W); channels: C. ch, ch_mult: base width and the width
    multiplier per resolution (one stride-2 downsampling between levels); num_res_blocks: per
    level (the decoder has one more). latent_dim, z_layers: the latent and its mapping network
    (Xiao et al.: nz = 100, z_emb_dim = 256, n_mlp = 4 on CIFAR-10). output: "tanh" (default,
    as theirs: images in [-1, 1]) or "none".
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        channels: int,
        *,
        ch: int = 32,
        ch_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        latent_dim: int = 32,
        z_layers: int = 2,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        output: str = "tanh",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.channels, self.latent_dim, self.num_classes = channels, latent_dim, num_classes
        self.output, self.dtype = _check_output(output), dtype
        if not ch_mult or num_res_blocks < 1:
            raise ValueError(f"need a non-empty `ch_mult` and `num_res_blocks` >= 1; got {ch_mult}, {num_res_blocks}")
        emb_dim = style_dim = 4 * ch
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.time = TimeEmbedding(ch, emb_dim, kind=time_embedding, **kw)
        self.label = class_embedding_or_none(num_classes, emb_dim, dtype, rngs, param_dtype)
        self.mapping = _Mapping(latent_dim, style_dim, z_layers, **kw)
        self.conv_in = _conv(channels, ch, **kw)
        down, skips, cin = [], [ch], ch
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                down.append(_AdaGNBlock(cin, ch * mult, emb_dim, style_dim, **kw))
                cin = ch * mult
                skips.append(cin)
            if i < len(ch_mult) - 1:
                down.append(_conv(cin, cin, stride=2, **kw))
                skips.append(cin)
        self.down = nnx.List(down)
        self.mid = _AdaGNBlock(cin, cin, emb_dim, style_dim, **kw)
        up = []
        for i, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                up.append(_AdaGNBlock(cin + skips.pop(), ch * mult, emb_dim, style_dim, **kw))
                cin = ch * mult
            if i > 0:
                up.append(_conv(cin, cin, **kw))  # after a nearest-neighbour upsampling
        self.up = nnx.List(up)
        norm = {**kw, "dtype": norm_dtype(dtype)}
        self.norm_out = nnx.GroupNorm(cin, num_groups(cin), **norm)
        self.conv_out = _conv(cin, channels, **kw)
        self.num_res_blocks, self.num_levels = num_res_blocks, len(ch_mult)

    def __call__(self, x, z, t, cond=None):
        """x (B, H, W, C); z (B, latent_dim); t scalar or (B,); cond None or (B,) labels."""
        check_input(x, 4, (*self.image_size, self.channels), "GeneratorConv")
        _check_latent(x, z, self.latent_dim)
        temb = self.time(batch_times(t, x))
        if self.label is None:
            check_unconditional(cond, "GeneratorConv")
        else:
            temb = temb + self.label(cond, x.shape[0])
        temb, style = nnx.silu(temb), self.mapping(z.astype(temb.dtype))
        h = self.conv_in(x)
        hs, blocks = [h], iter(self.down)
        for i in range(self.num_levels):
            for _ in range(self.num_res_blocks):
                h = next(blocks)(h, temb, style)
                hs.append(h)
            if i < self.num_levels - 1:
                h = next(blocks)(h)
                hs.append(h)
        h = self.mid(h, temb, style)
        blocks = iter(self.up)
        for i in reversed(range(self.num_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = next(blocks)(jnp.concatenate([h, hs.pop()], axis=-1), temb, style)
            if i > 0:
                size = hs[-1].shape[1:3]
                h = next(blocks)(jax.image.resize(h, (h.shape[0], *size, h.shape[-1]), "nearest"))
        y = self.conv_out(nnx.silu(self.norm_out(h)))
        if self.output == "tanh":
            y = jnp.tanh(y)
        return y.astype(x.dtype)


class _DownBlock(nnx.Module):
    """Xiao et al.'s DownConvBlock: LeakyReLU -> conv3x3 -> + temb -> LeakyReLU -> conv3x3, a
    residual 1x1 skip, optional stride-2 average pooling of both, output / sqrt(2)."""

    def __init__(self, cin, cout, emb_dim, downsample, *, dtype, rngs, param_dtype=jnp.float32):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv1 = _conv(cin, cout, **kw)
        self.emb = nnx.Linear(emb_dim, cout, kernel_metadata=axes("embed", "mlp"), **kw)
        self.conv2 = _conv(cout, cout, **kw)
        self.skip = _conv(cin, cout, 1, **kw)
        self.downsample = downsample

    def __call__(self, x, temb):
        h = self.conv1(nnx.leaky_relu(x, _LEAK)) + self.emb(temb)[:, None, None, :]
        h = self.conv2(nnx.leaky_relu(h, _LEAK))
        skip = self.skip(x)
        if self.downsample:
            h, skip = _avg_pool2(h), _avg_pool2(skip)
        return (h + skip) / math.sqrt(2.0)


def _avg_pool2(x):
    """2x2 average pooling (SAME: an odd side keeps its last row/column as a half window)."""
    return nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class DiscriminatorConv(nnx.Module):
    """Conv discriminator D(x_prev, x_t, t, cond) -> (B,) logits on the channel concatenation.

    image_size, channels: the images'; ch, ch_mult: widths of the downsampling blocks (one
    block per entry, each halving the resolution but the first). The features are summed over
    space, as Xiao et al.'s Discriminator_small, and mapped to one logit.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        channels: int,
        *,
        ch: int = 32,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.channels, self.num_classes, self.dtype = channels, num_classes, dtype
        if not ch_mult:
            raise ValueError("need a non-empty `ch_mult`")
        emb_dim = 4 * ch
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.time = TimeEmbedding(ch, emb_dim, kind=time_embedding, **kw)
        self.label = class_embedding_or_none(num_classes, emb_dim, dtype, rngs, param_dtype)
        self.conv_in = _conv(2 * channels, ch, 1, **kw)
        blocks, cin = [], ch
        for i, mult in enumerate(ch_mult):
            blocks.append(_DownBlock(cin, ch * mult, emb_dim, i > 0, **kw))
            cin = ch * mult
        self.blocks = nnx.List(blocks)
        self.out = nnx.Linear(cin, 1, kernel_metadata=axes("embed", None), **kw)

    def __call__(self, x_prev, x_t, t, cond=None):
        """x_prev, x_t (B, H, W, C); t scalar or (B,); returns (B,) logits."""
        check_input(x_t, 4, (*self.image_size, self.channels), "DiscriminatorConv")
        if x_prev.shape != x_t.shape:
            raise ValueError(f"`x_prev` must have the shape of `x_t` {x_t.shape}; got {x_prev.shape}")
        temb = self.time(batch_times(t, x_t))
        if self.label is None:
            check_unconditional(cond, "DiscriminatorConv")
        else:
            temb = temb + self.label(cond, x_t.shape[0])
        temb = nnx.leaky_relu(temb, _LEAK)
        h = self.conv_in(jnp.concatenate([x_prev, x_t], axis=-1))
        for block in self.blocks:
            h = block(h, temb)
        h = jnp.sum(nnx.leaky_relu(h, _LEAK), axis=(1, 2))
        return self.out(h)[:, 0].astype(x_t.dtype)


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------


class GANPair(nnx.Module):
    """The two networks of a GAN as one nnx Module: `.generator` and `.discriminator` (the
    names `jdiff.adversarial.two_player_optimizer` assigns optimizers by)."""

    def __init__(self, generator: nnx.Module, discriminator: nnx.Module):
        self.generator = generator
        self.discriminator = discriminator


class DDGANMLP(GANPair):
    """`GeneratorMLP` + `DiscriminatorMLP` for data of `in_features` values per example.

    hidden, depth: the generator's; d_hidden, d_depth: the discriminator's (default: the same).
    latent_dim, z_layers, output: the generator's; num_classes: both networks'.
    """

    def __init__(
        self,
        in_features: int,
        *,
        latent_dim: int = 32,
        hidden: int = 256,
        depth: int = 3,
        d_hidden: int | None = None,
        d_depth: int | None = None,
        z_layers: int = 2,
        num_classes: int | None = None,
        output: str = "none",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            GeneratorMLP(
                in_features,
                latent_dim=latent_dim,
                hidden=hidden,
                depth=depth,
                z_layers=z_layers,
                num_classes=num_classes,
                output=output,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            ),
            DiscriminatorMLP(
                in_features,
                hidden=d_hidden or hidden,
                depth=d_depth or depth,
                num_classes=num_classes,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            ),
        )


class DDGANConv(GANPair):
    """`GeneratorConv` + `DiscriminatorConv` for NHWC images of `image_size` and `channels`.

    ch, ch_mult, num_res_blocks, latent_dim, z_layers, output: the generator's; d_ch, d_ch_mult:
    the discriminator's (default ch and (1, 2, 2)); num_classes: both networks'.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        channels: int,
        *,
        ch: int = 32,
        ch_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        latent_dim: int = 32,
        z_layers: int = 2,
        d_ch: int | None = None,
        d_ch_mult: Sequence[int] = (1, 2, 2),
        num_classes: int | None = None,
        output: str = "tanh",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            GeneratorConv(
                image_size,
                channels,
                ch=ch,
                ch_mult=ch_mult,
                num_res_blocks=num_res_blocks,
                latent_dim=latent_dim,
                z_layers=z_layers,
                num_classes=num_classes,
                output=output,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            ),
            DiscriminatorConv(
                image_size,
                channels,
                ch=d_ch or ch,
                ch_mult=d_ch_mult,
                num_classes=num_classes,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            ),
        )
