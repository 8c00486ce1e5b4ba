"""Diffusion Transformer with adaLN-Zero conditioning (Peebles & Xie 2023, "DiT").

Images (B, H, W, C) are cut into p x p patches, linearly embedded and given fixed 2-D
sine-cosine position embeddings; transformer blocks are conditioned on c = time embedding
+ class embedding through adaptive LayerNorm: per block a zero-initialized Linear(SiLU(c))
gives (shift, scale, gate) for the attention and the MLP branch, and the final layer's
modulation and output projection are zero-initialized too, so the fresh network outputs
exactly zero and every block starts as the identity (the "-Zero" of adaLN-Zero).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.models._common import Attention, axes, check_input, check_model_kind, norm_dtype, zeros_linear
from jdiff.models.embeddings import TimeEmbedding, batch_times, check_unconditional, class_embedding_or_none

__all__ = ["DiT"]

# DiT: 256 sinusoidal frequencies for the timestep, LayerNorm eps 1e-6, MLP ratio 4.
_FREQ_DIM = 256
_LN_EPS = 1e-6


def _xavier_linear(din, dout, *, dtype, rngs, names=("embed", "mlp"), param_dtype=jnp.float32):
    # DiT initializes every transformer Linear with Xavier-uniform weights and zero biases.
    return nnx.Linear(
        din,
        dout,
        kernel_init=nnx.initializers.xavier_uniform(),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        kernel_metadata=axes(*names),
    )


def _layer_norm(dim, dtype, rngs):
    # No parameters (adaLN supplies shift and scale); computed and returned in float32 under bf16 compute.
    return nnx.LayerNorm(dim, epsilon=_LN_EPS, use_bias=False, use_scale=False, dtype=norm_dtype(dtype), rngs=rngs)


def _modulate(x, shift, scale):
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def sincos_2d(dim: int, gh: int, gw: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding (gh * gw, dim) as in MAE / DiT: half the
    channels encode the row, half the column, each with 1-D sin-cos of frequencies 10000^(-k/(dim/4))."""
    if dim % 4:
        raise ValueError(f"`hidden` must be a multiple of 4 for 2-D sin-cos position embeddings; got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")

    def one(pos):
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(rows), one(cols)], axis=1).astype(np.float32)


class DiTBlock(nnx.Module):
    def __init__(
        self, hidden: int, num_heads: int, mlp_ratio: float, *, dtype, rngs: nnx.Rngs, param_dtype=jnp.float32
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.norm1 = _layer_norm(hidden, dtype, rngs)
        self.attn = Attention(hidden, num_heads, kernel_init=nnx.initializers.xavier_uniform(), **kw)
        self.norm2 = _layer_norm(hidden, dtype, rngs)
        mlp_hidden = int(hidden * mlp_ratio)
        self.fc1 = _xavier_linear(hidden, mlp_hidden, **kw)
        self.fc2 = _xavier_linear(mlp_hidden, hidden, names=("mlp", "embed"), **kw)
        self.ada = zeros_linear(hidden, 6 * hidden, **kw)

    def __call__(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.ada(nnx.silu(c)), 6, axis=-1)
        x = x + gate1[:, None, :] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        h = self.fc2(nnx.gelu(self.fc1(_modulate(self.norm2(x), shift2, scale2)), approximate=True))
        return x + gate2[:, None, :] * h


class FinalLayer(nnx.Module):
    def __init__(self, hidden: int, out_dim: int, *, dtype, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.norm = _layer_norm(hidden, dtype, rngs)
        self.ada = zeros_linear(hidden, 2 * hidden, **kw)
        self.linear = zeros_linear(hidden, out_dim, names=("embed", None), **kw)

    def __call__(self, x, c):
        shift, scale = jnp.split(self.ada(nnx.silu(c)), 2, axis=-1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class DiT(nnx.Module):
    """DiT model(x, t, cond) for images x (B, H, W, C); output has the shape and dtype of x.

    image_size: H (square) or (H, W), each divisible by patch_size; channels: C.
    patch_size: p, tokens are p x p patches ((H/p) (W/p) tokens).
    hidden, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP width / hidden
        (DiT-S: 384, 12, 6, 4).
    num_classes: None (unconditional) or K classes plus the null class K.
    time_embedding: "sinusoidal" (256 features of 1000 t, as DiT) or "fourier"; input is path time t in [0, 1].
    time_scale: the sinusoidal embedding sees time_scale * t (1000 for path time; 1 for EDM c_noise).
    kind: the prediction kind it is trained to output (default "eps").
    out_channels: output channels (default C).
    dtype: compute dtype of the matmuls (e.g. jnp.bfloat16; None: the input's); LayerNorm then runs
        in float32, as do the time features and the attention softmax.
    param_dtype: dtype of the parameters (float32 master weights).
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        channels: int,
        *,
        patch_size: int = 2,
        hidden: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
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
        if any(s % patch_size for s in self.image_size):
            raise ValueError(f"`patch_size`={patch_size} must divide `image_size`={self.image_size}")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.dtype = dtype
        self.grid = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        sincos_2d(hidden, *self.grid)  # validates `hidden`
        self.hidden = hidden
        # A Linear on flattened patches is the DiT patch-embedding conv with kernel = stride = p.
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.patch = _xavier_linear(patch_size * patch_size * channels, hidden, names=(None, "embed"), **kw)
        self.time = TimeEmbedding(_FREQ_DIM, hidden, kind=time_embedding, time_scale=time_scale, **kw)
        self.label = class_embedding_or_none(num_classes, hidden, dtype, rngs, param_dtype)
        self.blocks = nnx.List([DiTBlock(hidden, num_heads, mlp_ratio, **kw) for _ in range(depth)])
        self.final = FinalLayer(hidden, patch_size * patch_size * self.out_channels, **kw)

    def __call__(self, x, t, cond=None):
        """x (B, H, W, C); t scalar or (B,) path time in [0, 1]; cond None or (B,) int labels."""
        check_input(x, 4, (*self.image_size, self.channels), "DiT")
        b, p, (gh, gw) = x.shape[0], self.patch_size, self.grid
        c = self.time(batch_times(t, x))
        if self.label is None:
            check_unconditional(cond, "DiT")
        else:
            c = c + self.label(cond, b)
        tokens = x.reshape(b, gh, p, gw, p, self.channels).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, -1)
        h = self.patch(tokens)
        h = h + jnp.asarray(sincos_2d(self.hidden, gh, gw), h.dtype)[None]
        for block in self.blocks:
            h = block(h, c)
        out = self.final(h, c).reshape(b, gh, gw, p, p, self.out_channels)
        out = out.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, self.out_channels)
        return out.astype(x.dtype)
