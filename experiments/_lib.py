"""The experiments layer in one import, for the entry points, Colab, tests and benchmarks.

    from experiments import _lib
    result = _lib.train_and_evaluate(config, "/tmp/run")
    x, png, npz = _lib.sample_workdir("/tmp/run", solver="heun", num_steps=20)

Modules, by job: _config (config layout, ConfigError, flags), _names (every name -> object),
_data (training / held-out data), _state (optimizer, train state, EMA restore), _recipes (a
config -> network, loss and sampler), _loop (train_and_evaluate), _workdir (restore and sample
a trained workdir), _images (sample grids).
"""

from experiments._config import (
    ConfigError,
    build_path,
    guidance_weight,
    load_config,
    parse_flags,
)
from experiments._data import holdout_fraction, load_all, load_data, load_heldout
from experiments._images import save_samples
from experiments._loop import check_config, train_and_evaluate, validate
from experiments._recipes import (
    DiffusionRecipe,
    FlowMapRecipe,
    Recipe,
    Sampler,
    recipe_for,
)
from experiments._state import EMAWeights, init_train_state, learning_rate_fn
from experiments._workdir import restore, sample_workdir

__all__ = [
    "ConfigError",
    "DiffusionRecipe",
    "EMAWeights",
    "FlowMapRecipe",
    "Recipe",
    "Sampler",
    "build_path",
    "check_config",
    "guidance_weight",
    "holdout_fraction",
    "init_train_state",
    "learning_rate_fn",
    "load_all",
    "load_config",
    "load_data",
    "load_heldout",
    "parse_flags",
    "recipe_for",
    "restore",
    "sample_workdir",
    "save_samples",
    "train_and_evaluate",
    "validate",
]
