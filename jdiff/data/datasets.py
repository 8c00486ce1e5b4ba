"""`get_dataset(name, **kwargs)`: every data source by name, for experiment configs."""

from __future__ import annotations

import jax
import numpy as np

from jdiff.data import images, sources, toy
from jdiff.data._common import Dataset

__all__ = ["get_dataset", "DATASETS"]


def _toy(name):
    def load(n: int = 10_000, seed: int = 0, **kwargs) -> Dataset:
        """n samples of the toy set drawn with PRNGKey(seed), with their labels."""
        x, label = toy.TOY_SETS[name](jax.random.PRNGKey(seed), n, with_labels=True, **kwargs)
        return Dataset(np.asarray(x, np.float32), np.asarray(label, np.int32))

    return load


DATASETS = {
    **{name: _toy(name) for name in toy.TOY_SETS},
    "digits": images.load_digits,
    "mnist5k": images.load_mnist5k,
    "npz": sources.load_npz,
    "image_folder": sources.load_image_folder,
    "cifar10": lambda split="train", **kw: sources.load_tfds("cifar10", split, **kw),
}


def get_dataset(name: str, **kwargs) -> Dataset:
    """A Dataset(x, label) by name with the loader's keyword arguments.

    Names: the toy sets (kwargs n, seed and the sampler's own), "digits", "mnist5k",
    "npz" (path, key, label_key), "image_folder" (path, size, mode), "cifar10" (split), and
    "tfds/<name>" for any tensorflow-datasets set (split, data_dir).
    """
    if name.startswith("tfds/"):
        return sources.load_tfds(name[len("tfds/"):], **kwargs)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted names: {', '.join(sorted(DATASETS))}, tfds/<name>")
    return DATASETS[name](**kwargs)
