"""A trained workdir: its config, recipe and EMA weights, and samples drawn from them.

    config, recipe, ema = restore("/tmp/run")
    x, png, npz = sample_workdir("/tmp/run", solver="heun", num_steps=20)
"""

from __future__ import annotations

import os

import jax
import numpy as np

from experiments import _images, _state
from experiments._config import load_config
from experiments._recipes import Recipe, recipe_for

__all__ = ["restore", "sample_workdir"]


def restore(workdir: str, config=None) -> tuple[object, Recipe, _state.EMAWeights]:
    """(config, recipe, EMA weights of the latest checkpoint) of `workdir`; `config` defaults to
    the one it was trained with (workdir/config.json)."""
    config = load_config(workdir) if config is None else config
    recipe = recipe_for(config)
    return config, recipe, recipe.restore_ema(workdir)


def sample_workdir(workdir: str, config=None, *, solver: str | None = None, num_steps: int | None = None,
                   grid: str | None = None, num_samples: int | None = None, seed: int = 0, out: str | None = None,
                   solver_kwargs=None):
    """Sample the EMA weights of `workdir` with any solver / number of steps (the recipe's
    `make_sampler`; flow-map workdirs take num_steps and grid only).

    Writes `out`.png (a grid) and `out`.npz (samples, step, and labels for conditional models);
    `out` defaults to workdir/samples/<sampler name>, e.g. heun_20. Returns (samples, png, npz).
    """
    config, recipe, ema = restore(workdir, config)
    n = int(num_samples or config.sample.num_samples)
    sampler = recipe.make_sampler(ema.graphdef, (n, *config.data.shape), solver=solver, num_steps=num_steps,
                                  grid=grid, solver_kwargs=solver_kwargs)
    x = np.asarray(jax.device_get(sampler(ema.params, ema.rest, jax.random.PRNGKey(seed))))
    out = out or os.path.join(os.path.abspath(workdir), "samples", sampler.name)
    _images.save_samples(out + ".png", x)
    labels = recipe.labels(n)
    extra = {} if labels is None else {"labels": np.asarray(labels)}
    np.savez(out + ".npz", samples=x, step=ema.step, **extra)
    return x, out + ".png", out + ".npz"
