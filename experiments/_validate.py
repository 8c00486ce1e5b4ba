"""One validation pass over a config, run before anything is created or written.

    recipe, net = check_config(config)            # values, names, the network's shapes
    recipe, dataset, net = validate(config)       # + the data (present, shaped, finite), devices
    check_batch_split(config, mesh)               # the global batch splits over the mesh

`experiments.train` runs `validate` (then `check_batch_split` on its mesh), `experiments.sample`
and `experiments.evaluate` run `check_config` on a workdir's config. Every failure is one
`ConfigError` line, `config.<key>: <what is wrong>; <accepted values or range>`, and nothing is
compiled except the network's initialisation at the end of `validate`.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx

from experiments import _config, _data, _state
from experiments._config import ConfigError
from experiments._recipes import Recipe, recipe_for
from jdiff import data, parallel

__all__ = ["check_batch_split", "check_config", "check_devices", "validate"]


def check_config(config) -> tuple[Recipe, nnx.Module]:
    """Check every value (types, ranges) and name of `config` and build its network abstractly,
    without loading data or compiling anything; returns (recipe, abstract network)."""
    _config.check_values(config)
    _data.holdout_fraction(config)
    _state.learning_rate_fn(config)
    recipe = recipe_for(config)
    return recipe, recipe.abstract_model()


def check_devices(config) -> int:
    """config.num_devices is at most the devices there are; returns the number the run uses."""
    available = jax.device_count()
    n = config.get("num_devices", None)
    if n is not None and n > available:
        raise ConfigError(
            f"config.num_devices: {n} exceeds the {available} {jax.devices()[0].platform} device(s) "
            f"of this machine; accepted: an int in [1, {available}], or None (every device)"
        )
    return available if n is None else n


def _check_batch(config, dataset: data.Dataset) -> None:
    """The global batch fits the training set, and its first batch is finite."""
    n = dataset.x.shape[0]
    if config.batch_size > n:
        held = f" (after data.holdout={_data.holdout_fraction(config):g})" if _data.holdout_fraction(config) else ""
        raise ConfigError(
            f"config.batch_size: {config.batch_size} exceeds the {n} training examples{held}; "
            f"accepted: an int in [1, {n}]"
        )
    p_index, p_count = parallel.process_info()
    if config.batch_size % p_count:
        raise ConfigError(
            f"config.batch_size: {config.batch_size} does not split over the {p_count} processes; "
            f"accepted: a multiple of {p_count}"
        )
    it = data.DataIterator(dataset, config.batch_size, seed=config.seed, process_index=p_index, process_count=p_count)
    first = it.batch(0)
    for name, v in first.items():
        if np.issubdtype(v.dtype, np.inexact) and not np.all(np.isfinite(v)):
            raise ConfigError(
                f"config.data.name: the first batch of {config.data.name!r} has non-finite values in "
                f"{name!r}; accepted: finite data"
            )


def validate(config) -> tuple[Recipe, data.Dataset, nnx.Module]:
    """`check_config`, then the training data (loaded, shaped as data.shape, labels below
    num_classes, finite, a first batch drawn) and the devices (config.num_devices); then the
    network is built. Returns (recipe, training set, network). Raises a one-line ConfigError
    before anything is written."""
    recipe, _ = check_config(config)
    dataset = _data.load_data(config)
    _data.check_dataset(config, dataset)
    check_devices(config)
    _check_batch(config, dataset)
    return recipe, dataset, recipe.build_model()


def check_batch_split(config, mesh) -> int:
    """config.batch_size splits evenly over `mesh`'s batch shards (every mesh axis but "model")
    and the processes; returns this process's share of the batch."""
    shards = math.prod(size for axis, size in mesh.shape.items() if axis != "model")
    try:
        return parallel.local_batch_size(config.batch_size, mesh)
    except ValueError as e:
        step = math.lcm(shards, jax.process_count())
        raise ConfigError(
            f"config.batch_size: {config.batch_size} does not split evenly over the {shards} batch "
            f"shards of the {mesh.devices.size}-device mesh; accepted: a multiple of {step} (or set "
            "config.num_devices)"
        ) from e
