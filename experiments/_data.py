"""The data of a config: the whole set, the training part and the held-out part.

config.data.name is an experiments._names.get_dataset name, or "synthetic": Gaussian arrays
of shape data.kwargs.shape with random labels, for smoke runs of large-image configs without
their data. config.data.holdout > 0 leaves that fraction out of training
(`jdiff.data.holdout_split(holdout, seed=config.seed)`); experiments.evaluate scores it.
"""

from __future__ import annotations

import numpy as np

from experiments import _names
from experiments._config import ConfigError, keyed, kwargs_of
from jdiff import data

__all__ = ["check_dataset", "holdout_fraction", "load_all", "load_data", "load_heldout"]


def load_all(config) -> data.Dataset:
    """Every example of config.data (training and held-out parts together)."""
    if config.data.name == "synthetic":
        kw = kwargs_of(config.data.kwargs)
        n, shape = int(kw.get("n", 64)), tuple(kw["shape"])
        rng = np.random.default_rng(kw.get("seed", 0))
        x = np.clip(rng.normal(0.0, 0.5, (n, *shape)), -1, 1).astype(np.float32)
        return data.Dataset(x, rng.integers(0, kw.get("num_classes", 10), n).astype(np.int32))
    return keyed("data.name", _names.get_dataset, config.data.name, **kwargs_of(config.data.kwargs))


def holdout_fraction(config) -> float:
    """config.data.holdout, checked (0 for workdirs written before the key existed)."""
    h = config.data.get("holdout", 0.0) or 0.0
    if not (isinstance(h, (int, float)) and 0.0 <= h < 1.0):
        raise ConfigError(f"config.data.holdout: {h!r} is not a fraction; accepted: a float in [0, 1) (0: no holdout)")
    return float(h)


def _split(config):
    """(train, held_out) Datasets: holdout_split of the whole set, deterministic from config.seed."""
    ds, h = load_all(config), holdout_fraction(config)
    if h == 0.0:
        return ds, None
    train, held = keyed("data.holdout", data.holdout_split, ds, h, seed=config.seed)
    return data.Dataset(train["x"], train.get("label")), data.Dataset(held["x"], held.get("label"))


def load_data(config) -> data.Dataset:
    """The training set: `load_all` less the data.holdout fraction that `load_heldout` returns."""
    return _split(config)[0]


def load_heldout(config) -> data.Dataset | None:
    """The examples `load_data` leaves out of training (None when data.holdout is 0)."""
    return _split(config)[1]


def check_dataset(config, dataset: data.Dataset) -> None:
    """data.cond names a field of the data and data.shape is one example's shape."""
    fields = {k: v for k, v in dataset._asdict().items() if v is not None}
    if config.data.cond and config.data.cond not in fields:
        raise ConfigError(f"config.data.cond: {config.data.cond!r} is not a field of the data; accepted: "
                          f"{', '.join(fields)}, or None")
    if tuple(dataset.x.shape[1:]) != tuple(config.data.shape):
        raise ConfigError(f"config.data.shape: {tuple(config.data.shape)} does not match the data's example shape "
                          f"{tuple(dataset.x.shape[1:])}")
