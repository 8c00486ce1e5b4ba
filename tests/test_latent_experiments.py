"""The latent configs end to end: train an autoencoder, cache latents, train and sample a latent model.

mnist5k_autoencoder:runlocal -> its workdir's EMA weights and running latent normalization feed
mnist5k_latent:runlocal (latent.source = "workdir"); the cache is built once and reused on resume,
and a run stopped by SIGTERM and resumed on the cache ends bit-identical to an uninterrupted one;
the ImageNet-256 DiT config is shaped for the SD VAE (checked against a real SD config.json) and
its :runlocal trains on synthetic arrays.
"""

import importlib
import json
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import random_autoencoder
from safetensors.numpy import save_file

from experiments import _evaluate, _latent, _lib
from jdiff import checkpoint, latent, likelihood

SD_VAE_CONFIG = {  # stabilityai/sd-vae-ft-ema's config.json (diffusers layout)
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.4.2",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def get_config(name, arg="runlocal"):
    return importlib.import_module(f"experiments.configs.{name}").get_config(arg)


def latent_mlp_config():
    """mnist5k_latent:runlocal with a small MLP on the flattened 7x7x4 latents instead of the U-Net
    (the U-Net's programs compile for tens of seconds on a busy 2-core CPU; the latent plumbing under
    test is the same for any network)."""
    config = get_config("mnist5k_latent")
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict(
        {"in_features": 7 * 7 * 4, "hidden": 32, "depth": 1, "num_classes": 10, "kind": "v"}
    )
    return config


@pytest.fixture(scope="module")
def latent_mlp():
    """(recipe, network) of latent_mlp_config: built once for the tests that sample or score it."""
    recipe = _lib.recipe_for(latent_mlp_config())
    return recipe, recipe.build_model()


def _host(tree):
    def leaf(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return jax.tree.map(leaf, tree)


def test_autoencoder_checkpoint_carries_weights_and_latent_norm(tmp_path):
    # An autoencoder workdir (config.json + a checkpoint) as experiments.train writes it; the latent
    # recipe's autoencoder is its EMA weights with the normalization stored in that checkpoint.
    config = get_config("mnist5k_autoencoder")
    recipe, _ = _lib.check_config(config)
    assert isinstance(recipe, _latent.AutoencoderRecipe)
    # the recipe's network (AutoencoderGAN without a discriminator) with NumPy weights: no init program
    net = latent.AutoencoderGAN(random_autoencoder(3, in_channels=1, **config.model.kwargs.to_dict()), None)
    assert nnx.graphdef(net) == nnx.graphdef(recipe.abstract_model())
    latent.set_latent_norm(net.autoencoder, 0.37, 0.05)
    _, _, state = _lib.init_train_state(config, net)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ae" / "checkpoints"), save_every=1)
    ckpt.save(1, state, force=True)
    ckpt.close()
    (tmp_path / "ae" / "config.json").write_text(config.to_json())
    lat = get_config("mnist5k_latent")
    lat.latent.source, lat.latent.path = "workdir", str(tmp_path / "ae")
    lat.latent.autoencoder_kwargs = {}
    recipe, _ = _lib.check_config(lat)
    assert isinstance(recipe, _latent.LatentRecipe) and recipe.latent_shape == (7, 7, 4)
    ae = recipe.autoencoder
    assert (float(ae.scale[...]), float(ae.shift[...])) == (pytest.approx(0.37), pytest.approx(0.05))
    for (p, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(ae, nnx.Param)), nnx.to_flat_state(nnx.state(net.autoencoder, nnx.Param))
    ):
        np.testing.assert_array_equal(a[...], b[...], err_msg=str(p))
    # The autoencoder recipe's samples: held-out digits, then their reconstructions.
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    ae_recipe = _lib.recipe_for(config)
    grid = np.asarray(ae_recipe.make_sampler(graphdef, (8, 28, 28, 1))(params, rest, jax.random.PRNGKey(0)))
    x = np.asarray(_lib.load_heldout(config).x[:4])  # the first held-out digits
    rec = nnx.jit(lambda m, x: m.decode(m.encode(x).mode()))(net.autoencoder, jnp.asarray(x))
    np.testing.assert_array_equal(grid[:4], x)
    np.testing.assert_allclose(grid[4:], np.clip(rec, -1, 1), atol=1e-6)


def test_latent_sampler_decodes_the_inner_samples_once(latent_mlp):
    recipe, net = latent_mlp
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    sampler = recipe.make_sampler(graphdef, (4, 28, 28, 1), solver="euler", num_steps=2)
    x = sampler(params, rest, jax.random.PRNGKey(0))
    z = recipe.inner.make_sampler(graphdef, (4, 7, 7, 4), solver="euler", num_steps=2)(
        params, rest, jax.random.PRNGKey(0)
    )
    assert x.shape == (4, 28, 28, 1) and z.shape == (4, 7, 7, 4)
    ae = recipe.autoencoder  # decoded with the autoencoder's own normalization: z / scale + shift
    np.testing.assert_allclose(x, nnx.jit(lambda m, z: m.decode(z / m.scale[...] + m.shift[...]))(ae, z), atol=1e-5)
    lm = recipe.latent_model(net)
    assert isinstance(lm, latent.LatentModel) and lm.latent_shape == (7, 7, 4)
    with pytest.raises(ValueError, match="config.data.shape"):
        recipe.make_sampler(graphdef, (4, 7, 7, 4))


def test_evaluate_reports_a_latent_likelihood_not_a_pixel_bpd(latent_mlp):
    # experiments.evaluate's likelihood of a latent workdir: log p(z) of the normalized posterior
    # modes z = E(x) under the latent model (the PF-ODE likelihood on the encoded images), in nats
    # and bits per LATENT dimension.
    recipe, net = latent_mlp
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    x = np.asarray(_lib.load_data(recipe.config).x[:2])
    labels = np.array([3, 7])
    make_model = lambda p: recipe.bind(nnx.merge(graphdef, *p))
    out = _evaluate.latent_nll(
        recipe, make_model, (params, rest), x, labels, jax.random.PRNGKey(0), divergence=None, rtol=1e-3, batch_size=2
    )
    z = nnx.jit(lambda ae, x: (ae.encode(x).mean - ae.shift[...]) * ae.scale[...])(recipe.autoencoder, jnp.asarray(x))
    ref = jax.jit(
        lambda z: likelihood.ode_log_likelihood_batch(
            recipe.bind(net), z, cond=jnp.asarray(labels), rtol=1e-3, atol=1e-3
        )
    )(z)
    np.testing.assert_allclose(out["nats"], -ref.log_prob, rtol=1e-4)
    np.testing.assert_allclose(out["bits"], out["nats"] / (7 * 7 * 4 * np.log(2.0)), rtol=1e-6)
    assert out["nats"].shape == (2,) and np.all(out["nfe"] > 0)


@pytest.mark.slow
def test_autoencoder_workdir_feeds_a_latent_model(tmp_path):
    """End to end: mnist5k_autoencoder:runlocal trains; mnist5k_latent:runlocal trains on its latents
    (latent.source = "workdir") and its workdir samples decoded images."""
    ae_dir, lat_dir = str(tmp_path / "ae"), str(tmp_path / "latent")
    config = get_config("mnist5k_autoencoder")
    assert get_config("mnist5k_autoencoder", None).total_steps >= 2000
    r = _lib.train_and_evaluate(config, ae_dir)
    assert r["step"] == 4 and np.isfinite(r["final_loss"]) and os.path.exists(r["sample_png"])  # reconstructions
    ae = _latent.load_autoencoder(ml_collections.ConfigDict({"source": "workdir", "path": ae_dir}), (28, 28, 1))
    assert float(ae.moments[...][0]) == 4.0  # the running normalization: one update per train step
    config = get_config("mnist5k_latent")
    config.latent.source, config.latent.path = "workdir", ae_dir
    config.latent.autoencoder_kwargs = {}
    r = _lib.train_and_evaluate(config, lat_dir)
    assert r["step"] == 4 and np.isfinite(r["final_loss"]) and os.path.exists(r["sample_png"])
    with open(os.path.join(lat_dir, "latent_cache", "meta.json")) as f:
        assert json.load(f)["scale"] == pytest.approx(float(ae.scale[...]))
    x, png, _ = _lib.sample_workdir(lat_dir, num_samples=4, solver="euler", num_steps=2)
    assert x.shape == (4, 28, 28, 1) and os.path.exists(png)


def test_latent_training_data_is_the_cache_built_once(tmp_path):
    # prepare_data encodes the training images once into <workdir>/latent_cache; a resumed run (a new
    # recipe on the same workdir) reads the same latents back without running the encoder, so the
    # DataIterator at the checkpoint's position draws the same batches.
    config = get_config("mnist5k_latent")
    images = _lib.load_data(config)
    recipe = _lib.recipe_for(config)
    ds = recipe.prepare_data(images, str(tmp_path))
    shard = tmp_path / "latent_cache" / "shard-00000-of-00001.npz"
    written = os.stat(shard).st_mtime_ns
    assert ds.x.shape == (64, 7, 7, 4) and recipe.cache_meta["num_examples"] == 64
    np.testing.assert_allclose(ds.x, latent.encode_dataset(recipe.autoencoder, images.x, batch_size=32), atol=1e-6)
    again = _lib.recipe_for(config).prepare_data(images, str(tmp_path))
    assert os.stat(shard).st_mtime_ns == written
    np.testing.assert_array_equal(again.x, ds.x)
    np.testing.assert_array_equal(again.label, images.label)


@pytest.mark.slow
def test_resume_on_the_latent_cache_is_bit_identical(tmp_path):
    config = latent_mlp_config()
    config.sample_every = 0
    config.checkpoint_every = 1000  # only the SIGTERM and final saves
    config.optimizer.schedule = "constant"
    final = {}

    def keep_last(name):
        def hook(step, state, metrics):
            if step == config.total_steps:
                final[name] = _host(state)

        return hook

    _lib.train_and_evaluate(config, str(tmp_path / "a"), hooks=[keep_last("a")])

    def preempt(step, state, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    r = _lib.train_and_evaluate(config, str(tmp_path / "b"), hooks=[preempt])
    assert r["preempted"] and r["step"] == 2
    shard = tmp_path / "b" / "latent_cache" / "shard-00000-of-00001.npz"
    written = os.stat(shard).st_mtime_ns
    r = _lib.train_and_evaluate(config, str(tmp_path / "b"), hooks=[keep_last("b")])
    assert r["step"] == 4 and os.stat(shard).st_mtime_ns == written  # the cache was reused, not re-encoded
    for x, y in zip(jax.tree.leaves(final["a"]), jax.tree.leaves(final["b"])):
        np.testing.assert_array_equal(x, y)
    # experiments.evaluate on the latent workdir: a latent likelihood, no pixel bits/dim
    res = _lib.evaluate(str(tmp_path / "b"), num_examples=2, num_samples=0, batch_size=2, rtol=1e-2)
    assert res["latent_shape"] == [7, 7, 4] and np.isfinite(res["latent_bits_per_latent_dim"])
    assert "not a pixel bits/dim" in res["likelihood_note"] and not any(k.endswith("_bpd") for k in res)


def test_imagenet_dit_config_is_shaped_for_the_sd_vae(tmp_path):
    vae = tmp_path / "sd-vae"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps(SD_VAE_CONFIG))
    config = get_config("imagenet256_latent_dit", None)
    config.latent.path = str(vae)
    doc = importlib.import_module("experiments.configs.imagenet256_latent_dit").__doc__
    assert "--config=experiments/configs/imagenet256_latent_dit.py" in doc and "distributed=True" in doc
    recipe, net = _lib.check_config(config)  # abstract: the SD VAE's and DiT-XL/2's shapes only
    assert recipe.latent_shape == (32, 32, 4)
    out = jax.eval_shape(
        lambda n, x: n(x, np.full((2,), 0.5, np.float32), np.zeros((2,), np.int32)),
        net,
        jax.ShapeDtypeStruct((2, 32, 32, 4), np.float32),
    )
    assert out.shape == (2, 32, 32, 4)
    assert sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(net, nnx.Param))) > 600e6  # DiT-XL/2: 675M


@pytest.mark.slow
def test_imagenet_dit_runlocal_trains_on_synthetic_arrays(tmp_path):
    r = _lib.train_and_evaluate(get_config("imagenet256_latent_dit"), str(tmp_path / "in256"))
    assert r["step"] == 4 and np.isfinite(r["final_loss"])


@pytest.mark.parametrize(
    "override, key",
    [
        ({"latent.source": "hub"}, "config.latent.source"),
        ({"latent.source": "workdir", "latent.path": "/nonexistent"}, "config.latent.path"),
        ({"model.kwargs.image_size": 8}, "config.model.kwargs.image_size"),
        ({"latent.posterior": "mean"}, "config.latent.posterior"),
        ({"latent.cache": "/tmp"}, "config.latent.cache: unknown option"),
    ],
)
def test_bad_latent_config_fails_in_one_line(override, key, tmp_path):
    config = get_config("mnist5k_latent")
    for k, v in override.items():
        section, name = k.rsplit(".", 1)
        node = config
        for part in section.split("."):
            node = node[part]
        node[name] = v
    with pytest.raises(_lib.ConfigError, match=key) as e:
        _lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "run")


def test_diffusers_folder_source_loads_the_weights(tmp_path):
    # A latent config on a (tiny) diffusers folder: the loader's autoencoder, normalization from config.json.
    cfg = {
        **SD_VAE_CONFIG,
        "block_out_channels": [4, 8, 8],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "in_channels": 1,
        "out_channels": 1,
        "norm_num_groups": 4,
        "layers_per_block": 1,
        "scaling_factor": 0.5,
    }
    ae = random_autoencoder(5, **latent.autoencoder_kwargs_from_diffusers(cfg))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps(cfg))
    save_file(latent.to_diffusers_state_dict(ae), str(tmp_path / "vae" / latent.DIFFUSERS_WEIGHTS))
    config = get_config("mnist5k_latent")
    config.latent.source, config.latent.path = "diffusers", str(tmp_path)
    recipe, _ = _lib.check_config(config)
    loaded = recipe.autoencoder
    assert float(loaded.scale[...]) == 0.5
    np.testing.assert_array_equal(loaded.decoder.conv_out.kernel[...], ae.decoder.conv_out.kernel[...])


@pytest.mark.parametrize(
    "override, key",
    [
        ({"autoencoder.kl_wieght": 1e-6}, "config.autoencoder.kl_wieght: unknown option"),
        ({"autoencoder.discriminator": "stylegan"}, "config.autoencoder.discriminator"),
        ({"autoencoder.disc_start": -1}, "config.autoencoder.disc_start"),
        ({"model.name": "unet"}, "config.model.name"),
    ],
)
def test_bad_autoencoder_config_fails_in_one_line(override, key, tmp_path):
    config = get_config("mnist5k_autoencoder")
    for k, v in override.items():
        section, name = k.rsplit(".", 1)
        config[section][name] = v
    with pytest.raises(_lib.ConfigError, match=key) as e:
        _lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "run")
