"""Pictures of samples: image grids, and density images of 2-D point clouds."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from jdiff import checkpoint, training

__all__ = ["save_samples"]


def save_samples(png_path: str, x, *, scale: int | None = None) -> None:
    """Images (N, H, W, C) as a grid; 2-D points (N, 2) as a density image (2-D histogram on [-4.5, 4.5]^2)."""
    x = np.asarray(x, np.float32)
    if x.ndim == 4:
        training.save_image_grid(png_path, x, scale=scale or max(1, 128 // x.shape[1]))
    elif x.ndim == 2 and x.shape[1] == 2:
        h, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=128, range=[[-4.5, 4.5], [-4.5, 4.5]])
        img = (255 * (1 - np.sqrt(h / max(h.max(), 1)))).astype(np.uint8)[::-1]
        buf = io.BytesIO()
        Image.fromarray(np.repeat(np.repeat(img, 3, 0), 3, 1)).save(buf, format="PNG")
        checkpoint.write_atomic(png_path, buf.getvalue())  # a local path or gs://...
    else:
        raise ValueError(f"can only draw images (N, H, W, C) or 2-D points (N, 2); got shape {x.shape}")
