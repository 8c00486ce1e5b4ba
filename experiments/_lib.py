"""The experiments layer in one import, for the entry points, Colab, tests and benchmarks.

    from experiments import _lib
    result = _lib.train_and_evaluate(config, "/tmp/run")
    x, png, npz = _lib.sample_workdir("/tmp/run", solver="heun", num_steps=20)

Modules, by job: _config (config layout, value checks, ConfigError, flags, exit codes), _names
(every name -> object), _data (training / held-out data), _state (optimizer, train state, EMA
restore), _recipes (a config -> network, loss and sampler), _validate (the validation pass
before anything is written), _loop (train_and_evaluate), _workdir (checking, writing, restoring
and sampling a workdir), _evaluate (held-out NLL and sample metrics of a workdir), _images
(sample grids). Program modules (train, sample, evaluate, ...) hold only their absl flags and
main: import their functions from here, since two programs in one process would define --workdir
twice.
"""

from experiments._config import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    ConfigError,
    build_path,
    check_values,
    exit_on_error,
    guidance_weight,
    load_config,
    parse_flags,
)
from experiments._data import holdout_fraction, load_all, load_data, load_heldout
from experiments._evaluate import evaluate, format_table, heldout_data
from experiments._images import save_samples
from experiments._loop import train_and_evaluate
from experiments._recipes import (
    DiffusionRecipe,
    FlowMapRecipe,
    Recipe,
    Sampler,
    recipe_for,
)
from experiments._state import EMAWeights, init_train_state, learning_rate_fn
from experiments._validate import check_batch_split, check_config, validate
from experiments._workdir import (
    check_trained_workdir,
    check_workdir,
    restore,
    sample_class_rows,
    sample_workdir,
    solver_options,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DIVERGED",
    "ConfigError",
    "DiffusionRecipe",
    "EMAWeights",
    "FlowMapRecipe",
    "Recipe",
    "Sampler",
    "build_path",
    "check_batch_split",
    "check_config",
    "check_trained_workdir",
    "check_values",
    "check_workdir",
    "evaluate",
    "exit_on_error",
    "format_table",
    "guidance_weight",
    "heldout_data",
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
    "sample_class_rows",
    "sample_workdir",
    "save_samples",
    "solver_options",
    "train_and_evaluate",
    "validate",
]
