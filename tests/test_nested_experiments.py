"""The nested config and recipe: mnist5k_nested checks abstractly, the recipe's loss is
nested.nested_loss with the config's pyramid and weights (progressive weights through the train
step's index), bad nested configs fail in one line, and the config runs end to end on 8x8
synthetic digits. Its 28x28 end-to-end run is in test_experiments (slow: a 28x28 conv network
compiles for minutes on a busy CPU)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdiff
from experiments import _recipes
from experiments._config import ConfigError
from experiments.configs import mnist5k_nested
from jdiff import nested


def _small_config():
    """mnist5k_nested:runlocal on 8x8 synthetic digits (levels 8, 4, 2) with a 4-wide nested U-Net:
    the same recipe, seconds to compile."""
    config = mnist5k_nested.get_config("runlocal")
    config.data.name = "synthetic"
    config.data.kwargs = {"n": 32, "shape": (8, 8, 1), "num_classes": 3}
    config.data.shape = (8, 8, 1)
    config.model.kwargs.update(image_size=8, ch=4, ch_mult=(1, 1, 1), num_classes=3, dropout=0.0)
    return config


def test_mnist5k_nested_config_checks():
    for arg in (None, "runlocal"):
        config = mnist5k_nested.get_config(arg)
        recipe = _recipes.recipe_for(config)
        assert isinstance(recipe, _recipes.NestedRecipe)
        assert recipe.pyramid.factors == (1, 2, 4)
        np.testing.assert_allclose(recipe.pyramid.log_snr_shifts, [-np.log(4.0), -np.log(2.0), 0.0])
        net = recipe.abstract_model()
        levels = tuple(jax.ShapeDtypeStruct((2, s, s, 1), jnp.float32) for s in (28, 14, 7))
        out = jax.eval_shape(lambda n, lv: n(lv, jnp.full((2,), 0.5), jnp.zeros((2,), jnp.int32)), net, levels)
        assert [o.shape for o in out] == [(2, 28, 28, 1), (2, 14, 14, 1), (2, 7, 7, 1)]


def test_recipe_loss_is_the_nested_loss_with_the_configs_objects():
    """loss_fn(net, batch, key) = nested_loss(Model(net, path, "v"), key, x, pyramid=Pyramid((1, 2, 4),
    shift_power=1), weights=config's, cond=labels), with the per-level losses as metrics; with
    start_steps (4, 2, 0) the train step's loss at step 1 weighs the coarsest level alone."""
    config = _small_config()
    config.nested.weights = (2.0, 1.0, 0.5)
    recipe = _recipes.recipe_for(config)
    net = recipe.build_model()
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)  # move the zero-initialised heads
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    net = nnx.merge(
        graphdef,
        treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]),
        rest,
    )
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1), jnp.float32, -1, 1)
    labels = jnp.array([0, 1, 2, 0])
    key = jax.random.PRNGKey(5)
    model = jdiff.Model(net, jdiff.VPCosine(), "v")
    want, levels = nested.nested_loss(
        model,
        key,
        x,
        pyramid=nested.Pyramid((1, 2, 4), shift_power=1.0),
        weights=(2.0, 1.0, 0.5),
        cond=labels,
        return_levels=True,
    )
    got, extra = recipe.build_loss()(net, {"x": x, "label": labels}, key)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(extra["loss_level2"], levels[:, 2])
    config.nested.start_steps = (4, 2, 0)
    progressive = _recipes.recipe_for(config).build_loss()
    got, _ = progressive(net, {"x": x, "label": labels}, key, step=jnp.int32(1), target=None)
    np.testing.assert_allclose(got, 0.5 * levels[:, 2], rtol=1e-6)


@pytest.mark.parametrize(
    "override, key",
    [
        ({"nested.factors": (1, 3, 9)}, "config.nested.factors"),
        ({"nested.factors": (1, 2)}, "config.model.kwargs.num_levels"),
        ({"nested.weights": (1.0, 1.0)}, "config.nested.weights"),
        ({"nested.start_steps": (0, -1, 0)}, "config.nested.start_steps"),
        ({"loss.name": "dsm_loss"}, "config.loss.name"),
        ({"model.name": "unet"}, "config.model.name"),
    ],
)
def test_bad_nested_configs_fail_in_one_line(override, key):
    config = mnist5k_nested.get_config("runlocal")
    for k, v in override.items():
        section, field = k.split(".")
        config[section][field] = v
    with pytest.raises(ConfigError) as e:
        _recipes.recipe_for(config)
    assert str(e.value).startswith(key) and "\n" not in str(e.value), str(e.value)


def test_nested_network_without_a_nested_section_is_refused():
    config = mnist5k_nested.get_config("runlocal")
    del config["nested"]
    config.loss.name = "dsm_loss"
    with pytest.raises(
        ConfigError,
        match=r"^config\.model\.name: 'nested_unet' is a nested network and needs a "
        r"config\.nested section",
    ):
        _recipes.recipe_for(config)


def test_nested_config_trains_samples_and_resumes_end_to_end(tmp_path):
    """mnist5k_nested:runlocal shrunk to 8x8 synthetic digits (levels 8, 4, 2) and a 4-wide nested
    U-Net: trains through the shared loop (per-level losses logged, checkpoints), and its workdir
    samples every level jointly with another solver than the config's; the samples are the finest
    level's images. (The 28x28 run itself is test_experiments' slow mnist5k_nested entry.)"""
    from experiments import _lib

    config = _small_config()
    config.total_steps, config.checkpoint_every, config.sample_every = 4, 2, 0  # one sampler compile (below)
    workdir = str(tmp_path / "nested")
    r = _lib.train_and_evaluate(config, workdir)
    assert r["step"] == 4 and np.isfinite(r["final_loss"])
    assert max(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == "4"
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert rows[-1]["step"] == 4 and all(np.isfinite(row[f"loss_level{i}"]) for row in rows for i in range(3))
    x, png, _ = _lib.sample_workdir(workdir, solver="ddim", num_steps=2, num_samples=4)
    assert x.shape == (4, 8, 8, 1) and np.all(np.isfinite(x)) and os.path.exists(png)
