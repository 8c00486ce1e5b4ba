"""DINOv2 ViT feature network in nnx, for FD-DINOv2 (Stein et al. 2023; EDM2's second metric).

    net = DinoV2.from_file("dinov2_vitl14_pretrain.npz", arch="vitl14")   # a local file
    features = net(dinov2_preprocess(pixels))                              # (N, 1024) CLS tokens

The layout is facebookresearch/dinov2's DinoVisionTransformer as its torch.hub models build it
(dinov2/hub/backbones.py `_make_dinov2_model`: img_size 518, patch 14, LayerScale init 1.0,
MLP FFN, block_chunks 0, no register tokens, interpolate_offset 0.1, no antialiasing):

    patch_embed.proj        Conv 14x14 stride 14 (with bias)
    cls_token, pos_embed    (1, 1, D), (1, 1 + 37 * 37, D): position embeddings of a 37 x 37 grid,
                            bicubically interpolated to the input's grid (below)
    blocks.{i}              x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x)); LayerNorm eps 1e-6,
                            qkv one Linear (D -> 3D, rows ordered q | k | v, heads inside), exact GELU
    norm                    final LayerNorm; the feature is the normalized CLS token
                            (`x_norm_clstoken`, what `model(x)` returns with head = Identity)

Position embeddings for a grid h0 x w0 != 37 x 37 are torch's bicubic interpolation (a = -0.75,
no antialias) with scale_factor (h0 + 0.1) / 37, i.e. source step 37 / (h0 + 0.1): DINOv2's
historical offset, kept for backward compatibility (vision_transformer.py interpolate_pos_encoding).

Architectures (dinov2/models/vision_transformer.py): vits14 D=384, 12 blocks, 6 heads;
vitb14 D=768, 12, 12; vitl14 D=1024, 24, 16 (EDM2 and dgm-eval use ViT-L/14, 1024 features).

Preprocessing (`dinov2_preprocess`), as EDM2's calculate_metrics.py DINOv2Detector (resize_mode
"torch", modelled on dgm-eval): pixel values [0, 255] -> 224 x 224 by antialiased bicubic
(torch interpolate antialias=True = PIL BICUBIC on float images) -> / 255 -> ImageNet mean / std.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.metrics._resize import resize_images, resize_matrix
from jdiff.metrics._weights import check_state_dict, load_state_dict, materialize, oihw_to_hwio, read_weights

__all__ = ["DINOV2_ARCHS", "DinoV2", "dinov2_preprocess"]

DINOV2_ARCHS = {
    # name: (embed_dim, depth, num_heads)
    "vits14": (384, 12, 6),
    "vitb14": (768, 12, 12),
    "vitl14": (1024, 24, 16),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dinov2_preprocess(pixels, *, size: int = 224):
    """Images (N, H, W, C) of pixel values in [0, 255] (C = 3, or 1: grey, repeated) -> the
    network's input (N, size, size, 3): antialiased bicubic resize, / 255, ImageNet normalization."""
    x = jnp.asarray(pixels)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"`pixels` must be images (N, H, W, 1 or 3); got shape {x.shape}")
    x = x.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = resize_images(x, size, "bicubic_aa") / 255.0
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32).reshape(1, 1, 1, 3)
    return (x - mean) / jnp.asarray(IMAGENET_STD, jnp.float32).reshape(1, 1, 1, 3)


class LayerScale(nnx.Module):
    def __init__(self, dim: int):
        self.gamma = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x):
        return x * self.gamma[...].reshape((1,) * (x.ndim - 1) + (-1,))


class Attention(nnx.Module):
    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        b, n, d = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, h, d // h)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (d // h) ** -0.5
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
        return self.proj(out.reshape(b, n, d))


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.attn = Attention(dim, num_heads, rngs=rngs)
        self.ls1 = LayerScale(dim)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs)
        self.ls2 = LayerScale(dim)

    def __call__(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nnx.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Conv(in_chans, dim, (patch_size, patch_size), strides=patch_size, padding="VALID", rngs=rngs)

    def __call__(self, x):
        y = self.proj(x)
        return y.reshape(y.shape[0], -1, y.shape[-1])  # row-major patches, as torch's flatten(2)


def _ignored(key: str) -> bool:
    return key == "mask_token"  # the masked-image-modelling token, unused at inference


class DinoV2(nnx.Module):
    """A DINOv2 ViT: `net(x) -> (N, D)` normalized CLS tokens of preprocessed images x (N, H, W, 3).

    Args:
        arch: "vits14", "vitb14" or "vitl14" (`DINOV2_ARCHS`), or None with the sizes given below.
        embed_dim, depth, num_heads: override the architecture (smaller only for tests).
        mlp_ratio: MLP hidden width / embed_dim (4).
        patch_size: 14.
        pos_grid: side of the grid the position embeddings were trained on (37 = 518 / 14 for
            the hub checkpoints).
        interpolate_offset: DINOv2's offset in the position-embedding scale factor (0.1).
    """

    def __init__(
        self,
        arch: str | None = "vitl14",
        *,
        embed_dim=None,
        depth=None,
        num_heads=None,
        mlp_ratio: float = 4.0,
        patch_size: int = 14,
        pos_grid: int = 37,
        interpolate_offset: float = 0.1,
        in_chans: int = 3,
        rngs: nnx.Rngs,
    ):
        if arch is not None:
            if arch not in DINOV2_ARCHS:
                raise ValueError(f"unknown DINOv2 `arch` {arch!r}; accepted: {', '.join(DINOV2_ARCHS)}")
            d, n, h = DINOV2_ARCHS[arch]
            embed_dim, depth, num_heads = embed_dim or d, depth or n, num_heads or h
        if not (embed_dim and depth and num_heads):
            raise ValueError("`embed_dim`, `depth` and `num_heads` are required when `arch` is None")
        if embed_dim % num_heads:
            raise ValueError(f"`embed_dim` {embed_dim} must be a multiple of `num_heads` {num_heads}")
        self.patch_size, self.pos_grid, self.interpolate_offset = patch_size, pos_grid, interpolate_offset
        self.num_features = embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, embed_dim), jnp.float32))
        self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1 + pos_grid**2, embed_dim)))
        self.blocks = nnx.List([Block(embed_dim, num_heads, mlp_ratio, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(embed_dim, epsilon=1e-6, rngs=rngs)

    def _pos_embed(self, h0: int, w0: int):
        pos = self.pos_embed[...]
        m = self.pos_grid
        if (h0, w0) == (m, m):
            return pos
        scale = (
            None
            if not self.interpolate_offset
            else (m / (h0 + self.interpolate_offset), m / (w0 + self.interpolate_offset))
        )
        a_h = jnp.asarray(resize_matrix(m, h0, "bicubic", None if scale is None else scale[0]), jnp.float32)
        a_w = jnp.asarray(resize_matrix(m, w0, "bicubic", None if scale is None else scale[1]), jnp.float32)
        grid = pos[0, 1:].astype(jnp.float32).reshape(m, m, -1)
        grid = jnp.einsum("ia,jb,abd->ijd", a_h, a_w, grid, precision=jax.lax.Precision.HIGHEST)
        return jnp.concatenate([pos[:, :1], grid.reshape(1, h0 * w0, -1).astype(pos.dtype)], axis=1)

    def __call__(self, x):
        """Normalized CLS token (N, D) of preprocessed images (N, H, W, 3), H and W multiples of 14."""
        n, hh, ww, _ = x.shape
        p = self.patch_size
        if hh % p or ww % p:
            raise ValueError(f"image height and width must be multiples of the patch size {p}; got {hh} x {ww}")
        tokens = self.patch_embed(x)
        cls = jnp.broadcast_to(self.cls_token[...], (n, 1, tokens.shape[-1]))
        tokens = jnp.concatenate([cls, tokens], axis=1) + self._pos_embed(hh // p, ww // p)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]

    # -- weights ------------------------------------------------------------------------

    def torch_layout(self) -> dict:
        """{DINOv2 hub state-dict key: (nnx variable path, transform)} for every variable."""
        mapping = {}
        for path, _ in nnx.to_flat_state(nnx.state(self)):
            *mod, leaf = path
            prefix = ".".join(map(str, mod))
            if not mod:  # cls_token, pos_embed
                mapping[leaf] = (path, None)
            elif mod[-1] == "proj" and mod[0] == "patch_embed":
                mapping[f"{prefix}.{'weight' if leaf == 'kernel' else 'bias'}"] = (
                    path,
                    oihw_to_hwio if leaf == "kernel" else None,
                )
            elif leaf == "kernel":  # Linear: torch stores (out, in)
                mapping[f"{prefix}.weight"] = (path, np.transpose)
            elif leaf == "scale":  # LayerNorm
                mapping[f"{prefix}.weight"] = (path, None)
            elif leaf in ("bias", "gamma"):
                mapping[f"{prefix}.{leaf}"] = (path, None)
            else:
                raise AssertionError(f"unexpected DINOv2 variable {path}")
        return mapping

    def load(self, state, *, source: str = "weights") -> DinoV2:
        """Load a DINOv2 hub state dict ({key: array}). `mask_token` (used only by masked-image
        training) is accepted and ignored; any other unknown key, a missing key or a wrong shape
        is an error that lists them."""
        return load_state_dict(self, state, self.torch_layout(), source=source, ignore=_ignored)

    def check(self, shapes, *, source: str = "weights") -> None:
        """`load`'s key and shape checks on {key: shape} alone (works on an abstract network)."""
        check_state_dict(self, shapes, self.torch_layout(), source=source, ignore=_ignored)

    @classmethod
    def from_file(cls, path, arch: str | None = "vitl14", **kwargs) -> DinoV2:
        """The network with the weights of a local .npz / .safetensors file in the hub's key names
        (dinov2_vitl14_pretrain.pth converted by experiments/convert_weights.py). The position
        grid is read from the file's pos_embed."""
        state = read_weights(path)
        if "pos_embed" in state and "pos_grid" not in kwargs:
            kwargs["pos_grid"] = round((state["pos_embed"].shape[1] - 1) ** 0.5)
        net = materialize(nnx.eval_shape(lambda: cls(arch, rngs=nnx.Rngs(0), **kwargs)))
        return net.load(state, source=str(path))
