"""Image resizing exactly as the reference feature extractors do it, as two small matrices.

A separable resize of an (H, W) image is y = A_h x A_w^T with A (out, in) interpolation
matrices; building A once on the host (float64) and applying it with two matmuls is exact,
jit-friendly and cheap for the sizes involved (32 -> 299, 512 -> 224). The methods, each
written from the reference's kernel:

    bilinear      torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
                  antialias=False): source x = (i + 1/2) s - 1/2 clamped at 0, taps floor(x) and
                  floor(x) + 1 (the last pixel repeated), s = in / out. pytorch-fid resizes to
                  299 x 299 this way (InceptionV3.forward, resize_input=True); no antialiasing,
                  so downsizing aliases.
    bilinear_tf1  TensorFlow 1.x ResizeBilinear (align_corners=False, half_pixel_centers=False):
                  x = i s, taps floor(x) and min(floor(x) + 1, in - 1). The original TF FID graph
                  (TTUR) and the NVIDIA/StyleGAN Inception pickle resize inside the network this way
                  (torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x reproduces it).
    bicubic       torch interpolate(mode="bicubic", align_corners=False, antialias=False): Keys'
                  cubic convolution with a = -0.75, x = (i + 1/2) s - 1/2 (not clamped), four taps
                  floor(x) - 1 .. floor(x) + 2 clamped to the image. `scale` overrides s = 1 /
                  scale_factor as torch does when a scale_factor is given (DINOv2's
                  positional-embedding interpolation).
    bicubic_aa    PIL Image.resize(BICUBIC) on float images = torch interpolate(mode="bicubic",
                  antialias=True): the a = -0.5 cubic stretched by max(s, 1) (antialiasing when
                  downsizing), centre (i + 1/2) s, taps inside the image only, weights normalized
                  to sum 1 (Pillow's Resample.c precompute_coeffs; torch copies it). clean-fid
                  ("clean" mode) and EDM2's FD-DINOv2 resize this way.
    bilinear_aa   the same with the triangle filter (PIL BILINEAR).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RESIZE_METHODS", "resize_images", "resize_matrix"]

RESIZE_METHODS = ("bilinear", "bilinear_tf1", "bicubic", "bicubic_aa", "bilinear_aa")


def _cubic(x, a):
    """Keys' cubic convolution kernel with parameter a."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _triangle(x):
    return np.maximum(1.0 - np.abs(x), 0.0)


@functools.lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int, method: str = "bilinear", scale: float | None = None) -> np.ndarray:
    """The (out_size, in_size) float64 matrix of a 1-D resize by `method` (see the module doc).

    scale: the source step s per output pixel; default in_size / out_size.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize `method` {method!r}; accepted: {', '.join(RESIZE_METHODS)}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"`in_size` and `out_size` must be positive; got {in_size}, {out_size}")
    s = in_size / out_size if scale is None else float(scale)
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    if method == "bilinear":
        x = np.maximum((rows + 0.5) * s - 0.5, 0.0)
        i0 = np.minimum(np.floor(x).astype(int), in_size - 1)
        i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
        lam = np.clip(x - i0, 0.0, 1.0)
        np.add.at(m, (rows, i0), 1.0 - lam)
        np.add.at(m, (rows, i1), lam)
    elif method == "bilinear_tf1":
        x = rows * s
        i0 = np.minimum(np.floor(x).astype(int), in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        lam = x - np.floor(x)
        np.add.at(m, (rows, i0), 1.0 - lam)
        np.add.at(m, (rows, i1), lam)
    elif method == "bicubic":
        x = (rows + 0.5) * s - 0.5
        i = np.minimum(np.floor(x).astype(int), in_size - 1)
        t = np.clip(x - i, 0.0, 1.0)
        for j, d in enumerate((t + 1.0, t, 1.0 - t, 2.0 - t)):
            np.add.at(m, (rows, np.clip(i - 1 + j, 0, in_size - 1)), _cubic(d, -0.75))
    else:  # Pillow's antialiased resampling
        kernel, support = ((lambda v: _cubic(v, -0.5)), 2.0) if method == "bicubic_aa" else (_triangle, 1.0)
        fscale = max(s, 1.0)
        support = support * fscale
        for r in rows:
            center = (r + 0.5) * s
            lo = max(math.trunc(center - support + 0.5), 0)
            hi = min(math.trunc(center + support + 0.5), in_size)
            j = np.arange(lo, hi)
            w = kernel((j - center + 0.5) / fscale)
            total = w.sum()
            m[r, lo:hi] = w / total if total != 0.0 else w
    return m


def resize_images(x, size, method: str = "bilinear", *, scale=None):
    """Resize images (N, H, W, C) to size = (H', W') (or an int for square) by `method`.

    scale: optional (s_h, s_w) source steps (see `resize_matrix`). The matmuls run at the highest
    precision, so float32 images are not rounded through bfloat16/TF32 on accelerators.
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"`x` must be images (N, H, W, C); got shape {x.shape}")
    out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
    s_h, s_w = (None, None) if scale is None else scale
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    if (out_h, out_w) == x.shape[1:3] and scale is None:
        return x.astype(dtype)  # every method is the identity at equal size (tests check the matrices)
    a_h = jnp.asarray(resize_matrix(x.shape[1], out_h, method, s_h), dtype)
    a_w = jnp.asarray(resize_matrix(x.shape[2], out_w, method, s_w), dtype)
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("oh,nhwc->nowc", a_h, x.astype(dtype), precision=hi)
    return jnp.einsum("pw,nowc->nopc", a_w, y, precision=hi)
