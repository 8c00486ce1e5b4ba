"""The data of a config: the whole set, the training part and the held-out part.

config.data.name is an experiments._names.get_dataset name, or "synthetic": Gaussian arrays
of shape data.kwargs.shape with random labels, for smoke runs of large-image configs without
their data. config.data.holdout > 0 leaves that fraction out of training
(`jdiff.data.holdout_split(holdout, seed=config.seed)`); experiments.evaluate scores it.

Data that cannot be used fails in one line naming the config key to change: a bad file names
config.data.kwargs.<argument> (path, key, label_key, max_value) with the file and what is wrong
(`jdiff.data.DataFileError`); an unknown loader option lists the loader's options.
"""

from __future__ import annotations

import inspect

import numpy as np

from experiments import _names
from experiments._config import ConfigError, keyed, kwargs_of
from jdiff import data

__all__ = ["check_dataset", "holdout_fraction", "load_all", "load_data", "load_heldout"]

SYNTHETIC_OPTIONS = {"shape": True, "n": False, "seed": False, "num_classes": False}  # name: required


def _check_options(name: str, kwargs: dict) -> None:
    """config.data.kwargs are options the loader of `name` takes (and it gets the ones it needs)."""
    if name == "synthetic":
        options = SYNTHETIC_OPTIONS
    elif isinstance(name, str) and name in _names.DATASETS:
        params = inspect.signature(_names.DATASETS[name]).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return  # the toy sets pass options on to their sampler: it reports unknown ones
        options = {p.name: p.default is p.empty for p in params if p.kind is not p.VAR_POSITIONAL}
    else:
        return  # tfds/<name> and unknown names: get_dataset reports them
    for key in kwargs:
        if key not in options:
            raise ConfigError(
                f"config.data.kwargs.{key}: the {name!r} loader has no option {key!r}; accepted: "
                f"{', '.join(options) or 'none'}"
            )
    for key, required in options.items():
        if required and key not in kwargs:
            raise ConfigError(
                f"config.data.kwargs.{key}: the {name!r} loader needs it; accepted: "
                f"--config.data.kwargs.{key}=<value> (options: {', '.join(options)})"
            )


def load_all(config) -> data.Dataset:
    """Every example of config.data (training and held-out parts together)."""
    kw = kwargs_of(config.data.kwargs)
    _check_options(config.data.name, kw)
    if config.data.name == "synthetic":
        n, shape = kw.get("n", 64), kw["shape"]
        if not (isinstance(n, int) and n >= 1):
            raise ConfigError(f"config.data.kwargs.n: {n!r} is not a positive int; accepted: an int >= 1")
        rng = np.random.default_rng(kw.get("seed", 0))
        x = np.clip(rng.normal(0.0, 0.5, (n, *tuple(shape))), -1, 1).astype(np.float32)
        return data.Dataset(x, rng.integers(0, kw.get("num_classes", 10), n).astype(np.int32))

    def load():
        try:
            return _names.get_dataset(config.data.name, **kw)
        except data.DataFileError as e:  # names the loader argument to change
            raise ConfigError(f"config.data.kwargs.{e.argument}: {e}") from e

    return keyed("data.name", load)


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
    """data.cond names a field of the data, data.shape is one example's shape, the labels of a
    class-conditional model are below model.kwargs.num_classes, and every value is finite."""
    fields = {k: v for k, v in dataset._asdict().items() if v is not None}
    if config.data.cond and config.data.cond not in fields:
        raise ConfigError(
            f"config.data.cond: {config.data.cond!r} is not a field of the data; accepted: {', '.join(fields)}, or None"
        )
    if tuple(dataset.x.shape[1:]) != tuple(config.data.shape):
        raise ConfigError(
            f"config.data.shape: {tuple(config.data.shape)} does not match the data's example shape; "
            f"accepted: {tuple(dataset.x.shape[1:])}"
        )
    n = config.model.kwargs.get("num_classes", None)
    if config.data.cond == "label" and n and dataset.label is not None and dataset.label.size:
        top = int(dataset.label.max())
        if top >= n:
            raise ConfigError(
                f"config.model.kwargs.num_classes: {n} classes, but the data has labels up to {top}; "
                f"accepted: an int >= {top + 1}"
            )
    for name, v in fields.items():
        if np.issubdtype(v.dtype, np.inexact):
            bad = ~np.isfinite(v)
            if bad.any():
                first = int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1)))
                raise ConfigError(
                    f"config.data.name: the {config.data.name!r} data has {int(bad.sum())} non-finite "
                    f"values in {name!r} (the first in example {first}); accepted: finite data"
                )
