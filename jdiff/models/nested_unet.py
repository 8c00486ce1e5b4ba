"""A nested U-Net (Gu et al. 2023, Matryoshka diffusion): the U-Net of each coarser level sits
inside the next finer one, and every level has its own input and output head.

    net(levels, t, cond) -> predictions       levels: tuple of (B, H_l, W_l, C), finest first

Stage l (resolution H_l = ceil(H / 2^l), width ch * ch_mult[l]) embeds its own noisy level with
a 3x3 conv, adds the finer stage's encoder features brought down by a stride-2 conv (MDM's
in_adapter), runs its encoder blocks, hands the result to stage l + 1 (the coarsest stage runs
the middle block instead), adds what the inner stage returns, upsampled and projected (MDM's
out_adapter), runs its decoder blocks on the skip connections and predicts its level through a
zero-initialised head. With one level it is a plain U-Net. The blocks are those of
`jdiff.models.UNet` (DDPM++ residual blocks with time/class embedding, self-attention at chosen
resolutions), so a nested U-Net and a U-Net with the same widths cost about the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from jdiff.models._common import check_input, check_model_kind, num_groups
from jdiff.models.embeddings import TimeEmbedding, batch_times, check_unconditional, class_embedding_or_none
from jdiff.models.unet import AttnBlock, ResBlock, Upsample, _conv

__all__ = ["NestedUNet"]


class _Stage(nnx.Module):
    def __init__(
        self, cin_outer, ch, channels, emb_dim, num_res_blocks, attn, inner_ch, num_heads, dropout, *, dtype, rngs
    ):
        kw = {"dtype": dtype, "rngs": rngs}
        self.conv_in = _conv(channels, ch, **kw)
        self.from_outer = None if cin_outer is None else _conv(cin_outer, ch, stride=2, **kw)
        self.enc = nnx.List([ResBlock(ch, ch, emb_dim, dropout, **kw) for _ in range(num_res_blocks)])
        self.enc_attn = nnx.List([AttnBlock(ch, num_heads, **kw) if attn else None for _ in range(num_res_blocks)])
        if inner_ch is None:  # the coarsest stage: DDPM++'s middle block
            self.mid = nnx.List(
                [
                    ResBlock(ch, ch, emb_dim, dropout, **kw),
                    AttnBlock(ch, num_heads, **kw),
                    ResBlock(ch, ch, emb_dim, dropout, **kw),
                ]
            )
            self.from_inner = self.up = None
        else:
            self.mid = None
            self.up = Upsample(inner_ch, **kw)
            self.from_inner = _conv(inner_ch, ch, 1, **kw)
        self.dec = nnx.List([ResBlock(2 * ch, ch, emb_dim, dropout, **kw) for _ in range(num_res_blocks + 1)])
        self.dec_attn = nnx.List([AttnBlock(ch, num_heads, **kw) if attn else None for _ in range(num_res_blocks + 1)])
        self.norm_out = nnx.GroupNorm(ch, num_groups(ch), **kw)
        self.head = _conv(ch, channels, zero=True, **kw)


class NestedUNet(nnx.Module):
    """Nested U-Net net(levels, t, cond) -> one prediction per level (each of its level's shape).

    image_size: H (square) or (H, W) of the finest level; level l is ceil(H / 2^l) (28, 14, 7).
    channels: C of every level. num_levels: L. ch, ch_mult: base width and one multiplier per
        level. num_res_blocks: encoder blocks per level (the decoder has one more).
    attn_resolutions: level heights with self-attention. num_heads, dropout, num_classes,
        time_embedding, time_scale, kind, dtype: as `jdiff.models.UNet`.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        channels: int,
        *,
        num_levels: int = 3,
        ch: int = 64,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (),
        num_heads: int = 1,
        dropout: float = 0.1,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1000.0,
        kind: str = "eps",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.kind = check_model_kind(kind)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(ch_mult) != num_levels or num_levels < 1 or num_res_blocks < 1:
            raise ValueError(
                f"`ch_mult` needs one multiplier per level ({num_levels}) and num_res_blocks >= 1; got "
                f"{tuple(ch_mult)}, {num_res_blocks}"
            )
        sizes = []
        for _ in range(num_levels):
            sizes.append(size)
            size = (-(-size[0] // 2), -(-size[1] // 2))  # SAME stride-2 convs: ceil(n / 2)
        self.sizes = tuple(sizes)
        self.channels, self.num_classes, self.dtype = channels, num_classes, dtype
        emb_dim = 4 * ch
        self.time = TimeEmbedding(ch, emb_dim, kind=time_embedding, time_scale=time_scale, dtype=dtype, rngs=rngs)
        self.label = class_embedding_or_none(num_classes, emb_dim, dtype, rngs)
        widths = [ch * m for m in ch_mult]
        self.stages = nnx.List(
            [
                _Stage(
                    None if i == 0 else widths[i - 1],
                    widths[i],
                    channels,
                    emb_dim,
                    num_res_blocks,
                    self.sizes[i][0] in attn_resolutions,
                    widths[i + 1] if i + 1 < num_levels else None,
                    num_heads,
                    dropout,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(num_levels)
            ]
        )

    def _run(self, i, levels, emb, outer):
        """Stage i on levels[i] (and the finer stage's features `outer`): (decoder features, preds i..)."""
        s = self.stages[i]
        h = s.conv_in(levels[i])
        if outer is not None:
            h = h + s.from_outer(outer)
        skips = [h]
        for block, attn in zip(s.enc, s.enc_attn):
            h = block(h, emb)
            h = h if attn is None else attn(h)
            skips.append(h)
        if s.mid is not None:
            h = s.mid[2](s.mid[1](s.mid[0](h, emb)), emb)
            preds = []
        else:
            inner, preds = self._run(i + 1, levels, emb, h)
            h = h + s.from_inner(s.up(inner, h.shape[1:3]))
        for block, attn in zip(s.dec, s.dec_attn):
            h = block(jnp.concatenate([h, skips.pop()], axis=-1), emb)
            h = h if attn is None else attn(h)
        pred = s.head(nnx.silu(s.norm_out(h)))
        return h, [pred, *preds]

    def __call__(self, levels, t, cond=None):
        """levels: tuple of (B, H_l, W_l, C), finest first; t scalar or (B,); cond None or (B,) labels."""
        if not isinstance(levels, (tuple, list)) or len(levels) != len(self.sizes):
            raise ValueError(
                f"`levels` must be a tuple of {len(self.sizes)} images (finest first, sizes "
                f"{self.sizes}); got {type(levels).__name__}"
            )
        for x, size in zip(levels, self.sizes):
            check_input(x, 4, (*size, self.channels), "NestedUNet level")
        x = levels[0]
        emb = self.time(batch_times(t, x))
        if self.label is None:
            check_unconditional(cond, "NestedUNet")
        else:
            emb = emb + self.label(cond, x.shape[0])
        emb = nnx.silu(emb)
        _, preds = self._run(0, levels, emb, None)
        return tuple(p.astype(x.dtype) for p, x in zip(preds, levels))
