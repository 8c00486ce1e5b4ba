"""A DDPM++-style U-Net (Ho et al. 2020; Song et al. 2021, "DDPM++") for NHWC images.

Residual blocks GroupNorm -> SiLU -> conv3x3 (+ time/class embedding) -> GroupNorm -> SiLU
-> dropout -> conv3x3, with skip connections rescaled by 1/sqrt(2) (DDPM++'s
skip_rescale); self-attention at chosen resolutions; stride-2 conv downsampling and
nearest-neighbour upsampling + conv3x3. The last conv of every residual branch, of every
attention output and of the network output is zero-initialized (DDPM's init_scale=0), so
the fresh network is the identity on its residual stream and outputs zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff.models._common import Attention, axes, check_input, check_model_kind, norm_dtype, num_groups
from jdiff.models.embeddings import TimeEmbedding, batch_times, check_unconditional, class_embedding_or_none

__all__ = ["UNet"]

_SKIP_SCALE = 1.0 / math.sqrt(2.0)  # DDPM++ skip_rescale: keeps the residual stream's variance


def _conv(cin, cout, k=3, *, stride=1, zero=False, dtype, rngs, param_dtype=jnp.float32):
    kw = dict(kernel_init=nnx.initializers.zeros) if zero else {}
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


class ResBlock(nnx.Module):
    def __init__(
        self, cin: int, cout: int, emb_dim: int, dropout: float, *, dtype, rngs: nnx.Rngs, param_dtype=jnp.float32
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(dtype=norm_dtype(dtype), param_dtype=param_dtype, rngs=rngs)  # GroupNorm in float32
        self.norm1 = nnx.GroupNorm(cin, num_groups(cin), **norm)
        self.conv1 = _conv(cin, cout, **kw)
        self.emb = nnx.Linear(emb_dim, cout, kernel_metadata=axes("embed", "mlp"), **kw)
        self.norm2 = nnx.GroupNorm(cout, num_groups(cout), **norm)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.conv2 = _conv(cout, cout, zero=True, **kw)
        self.skip = _conv(cin, cout, 1, **kw) if cin != cout else None

    def __call__(self, x, emb):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, None, None, :]
        h = self.conv2(self.dropout(nnx.silu(self.norm2(h))))
        skip = x if self.skip is None else self.skip(x)
        return (skip + h) * _SKIP_SCALE


class AttnBlock(nnx.Module):
    def __init__(self, ch: int, num_heads: int, *, dtype, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.norm = nnx.GroupNorm(ch, num_groups(ch), dtype=norm_dtype(dtype), param_dtype=param_dtype, rngs=rngs)
        self.attn = Attention(ch, num_heads, zero_out=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        y = self.attn(self.norm(x).reshape(b, h * w, c)).reshape(b, h, w, c)
        return (x + y) * _SKIP_SCALE


class Upsample(nnx.Module):
    def __init__(self, ch: int, *, dtype, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.conv = _conv(ch, ch, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, size):
        # Nearest-neighbour to the skip's size: 2x, or 2x - 1 after an odd size (28 -> 14 -> 7 -> 4 -> 7).
        b, _, _, c = x.shape
        return self.conv(jax.image.resize(x, (b, *size, c), "nearest"))


class UNet(nnx.Module):
    """U-Net model(x, t, cond) for images x (B, H, W, C); output has the shape and dtype of x.

    image_size: H (square) or (H, W) of the input images; channels: C.
    ch: base width; ch_mult: width multiplier per resolution level (level i runs at
        ceil(H / 2^i)); e.g. (1, 2) for 8x8 digits, (1, 2, 2) for 28x28, (1, 2, 2, 2) for 32x32.
    num_res_blocks: residual blocks per level (the decoder has one more, as in DDPM).
    attn_resolutions: feature-map heights at which self-attention is added (DDPM++: (16,)).
    num_heads: attention heads (DDPM++: 1).
    dropout: rate inside residual blocks (on after model.train(), off after model.eval()).
    num_classes: None (unconditional) or K classes plus the null class K.
    time_embedding: "sinusoidal" (of 1000 t) or "fourier"; the network takes path time t in [0, 1].
    time_scale: the sinusoidal embedding sees time_scale * t (1000 for path time; 1 for EDM c_noise).
    kind: the prediction kind it is trained to output (default "eps", as DDPM).
    out_channels: output channels (default C).
    dtype: compute dtype of the convolutions and matmuls (jnp.bfloat16 on accelerators; None: the
        input's); GroupNorm then runs in float32, as do the time features and the attention softmax.
    param_dtype: dtype of the parameters (float32 master weights).
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        channels: int,
        *,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        num_heads: int = 1,
        dropout: float = 0.1,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1000.0,
        kind: str = "eps",
        out_channels: int | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kind = check_model_kind(kind)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.channels = channels
        self.num_classes = num_classes
        self.dtype = dtype
        if not ch_mult or num_res_blocks < 1:
            raise ValueError(f"need a non-empty `ch_mult` and `num_res_blocks` >= 1; got {ch_mult}, {num_res_blocks}")
        emb_dim = 4 * ch
        self.time = TimeEmbedding(
            ch, emb_dim, kind=time_embedding, time_scale=time_scale, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.label = class_embedding_or_none(num_classes, emb_dim, dtype, rngs, param_dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv_in = _conv(channels, ch, **kw)

        # Encoder: record each stored activation's channels for the decoder's concatenations.
        res = self.image_size
        sizes, skip_ch = [], [ch]
        down, cin = [], ch
        for i, mult in enumerate(ch_mult):
            cout = ch * mult
            for _ in range(num_res_blocks):
                down.append(ResBlock(cin, cout, emb_dim, dropout, **kw))
                down.append(AttnBlock(cout, num_heads, **kw) if res[0] in attn_resolutions else None)
                cin = cout
                skip_ch.append(cin)
            if i < len(ch_mult) - 1:
                sizes.append(res)
                down.append(_conv(cin, cin, stride=2, **kw))
                res = (-(-res[0] // 2), -(-res[1] // 2))  # SAME padding, stride 2: ceil(n / 2)
                skip_ch.append(cin)
        self.down = nnx.List(down)
        self.mid = nnx.List(
            [
                ResBlock(cin, cin, emb_dim, dropout, **kw),
                AttnBlock(cin, num_heads, **kw),
                ResBlock(cin, cin, emb_dim, dropout, **kw),
            ]
        )
        up = []
        for i, mult in reversed(list(enumerate(ch_mult))):
            cout = ch * mult
            for _ in range(num_res_blocks + 1):
                up.append(ResBlock(cin + skip_ch.pop(), cout, emb_dim, dropout, **kw))
                up.append(AttnBlock(cout, num_heads, **kw) if res[0] in attn_resolutions else None)
                cin = cout
            if i > 0:
                up.append(Upsample(cin, **kw))
                res = sizes.pop()
        self.up = nnx.List(up)
        self.norm_out = nnx.GroupNorm(cin, num_groups(cin), dtype=norm_dtype(dtype), param_dtype=param_dtype, rngs=rngs)
        self.conv_out = _conv(cin, out_channels or channels, zero=True, **kw)
        self.num_res_blocks = num_res_blocks
        self.num_levels = len(ch_mult)

    def __call__(self, x, t, cond=None):
        """x (B, H, W, C); t scalar or (B,) path time in [0, 1]; cond None or (B,) int labels."""
        check_input(x, 4, (*self.image_size, self.channels), "UNet")
        emb = self.time(batch_times(t, x))
        if self.label is None:
            check_unconditional(cond, "UNet")
        else:
            emb = emb + self.label(cond, x.shape[0])
        emb = nnx.silu(emb)

        h = self.conv_in(x)
        hs = [h]
        blocks = iter(self.down)
        for i in range(self.num_levels):
            for _ in range(self.num_res_blocks):
                h = next(blocks)(h, emb)
                attn = next(blocks)
                h = h if attn is None else attn(h)
                hs.append(h)
            if i < self.num_levels - 1:
                h = next(blocks)(h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        blocks = iter(self.up)
        for i in reversed(range(self.num_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = next(blocks)(jnp.concatenate([h, hs.pop()], axis=-1), emb)
                attn = next(blocks)
                h = h if attn is None else attn(h)
            if i > 0:
                h = next(blocks)(h, hs[-1].shape[1:3])
        h = self.conv_out(nnx.silu(self.norm_out(h)))
        return h.astype(x.dtype)
