"""Shared pieces of jdiff.data: the (x, label) container and the optional-import guard."""

from __future__ import annotations

import importlib
from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """An in-memory data set: x (N, ...) float32, label (N,) int32 or None.

    Images are x (N, H, W, C) in [-1, 1]; toy sets are x (N, 2).

    Unpacks as `x, label = load_digits()`; `dict(ds._asdict())` gives the arrays
    `DataIterator` takes, so its batches are {"x": ..., "label": ...}.
    """

    x: np.ndarray
    label: np.ndarray | None


def require(module: str, package: str, purpose: str):
    """Import an optional dependency, or raise a one-line ImportError naming the package."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{purpose} needs the optional package '{package}': pip install {package}") from e


def to_unit_range(x, max_value: float) -> np.ndarray:
    """Map integer intensities in [0, max_value] linearly onto [-1, 1] as float32."""
    return (np.asarray(x, np.float32) * np.float32(2.0 / max_value) - np.float32(1.0)).astype(np.float32)


def as_nhwc(x: np.ndarray, name: str = "x") -> np.ndarray:
    """Images as (N, H, W, C): a trailing channel axis is added to greyscale (N, H, W)."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4:
        raise ValueError(f"`{name}` must have shape (N, H, W) or (N, H, W, C); got {x.shape}")
    return x
