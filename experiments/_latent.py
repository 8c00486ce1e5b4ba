"""Latent diffusion in the experiments layer: training an autoencoder, and diffusion on its cached latents.

    AutoencoderRecipe   a config with an `autoencoder` section: trains jdiff.models.AutoencoderKL
                        (with an optional PatchGAN discriminator) with jdiff.latent.autoencoder_loss;
                        its "samples" are held-out images above their reconstructions
    LatentRecipe        a config with a `latent` section: any diffusion / flow-map recipe on the
                        normalized latents of an autoencoder; the training data are encoded once into
                        a latent cache (jdiff.latent.latent_cache, per process, resumable) and the
                        samplers decode once at the end

experiments._recipes.recipe_for chooses them; this module does not import _recipes (no circle):
LatentRecipe wraps the inner recipe and delegates to it.

The `autoencoder` section (model.name "autoencoder_kl", model.kwargs the AutoencoderKL arguments):

    l1_weight, l2_weight, kl_weight, disc_weight, disc_start, sample_posterior, shift
                      jdiff.latent.autoencoder_loss options (shift: the running latent normalization
                      also subtracts the mean, as SD3 / Flux)
    discriminator     None, or the name of a discriminator (experiments._names.DISCRIMINATORS)
    discriminator_kwargs   its keyword arguments (in_channels defaults to the images' channels)

The `latent` section:

    source            "workdir": a trained autoencoder workdir (its config.json and EMA weights; the
                      latent normalization is the one stored in its checkpoint);
                      "diffusers": a local diffusers AutoencoderKL folder (an SD / SDXL / SD3 / Flux
                      VAE: config.json + diffusion_pytorch_model.safetensors; nothing is downloaded);
                      "init": a freshly initialised AutoencoderKL of `autoencoder_kwargs` (smoke runs)
    path              the workdir or folder of "workdir" / "diffusers"
    autoencoder_kwargs     AutoencoderKL arguments for "init" (in_channels: the images' channels)
    posterior         "mode" (cache the posterior means) | "sample" (one posterior draw per image)
    cache_dir         where the latent cache lives ("" = <workdir>/latent_cache)
    cache_dtype       "float32" | "float16"
    encode_batch_size images per encoder call while building the cache

config.data describes the images (name, shape, cond, holdout) as for a pixel model; config.model
is the latent-space network, whose image_size / channels must be the latent's.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from experiments import _data, _names, _state
from experiments._config import ConfigError, keyed, kwargs_of, load_config, refuse_sections
from jdiff import data, latent, parallel, training
from jdiff.models import AutoencoderKL

__all__ = ["LATENT_SOURCES", "AutoencoderRecipe", "LatentRecipe", "load_autoencoder"]

LATENT_SOURCES = ("workdir", "diffusers", "init")
POSTERIORS = ("mode", "sample")
CACHE_DTYPES = ("float32", "float16")
AE_MODEL = "autoencoder_kl"
AE_OPTIONS = ("l1_weight", "l2_weight", "kl_weight", "disc_weight", "disc_start", "sample_posterior", "shift")


class _Sampler(NamedTuple):
    """A jitted `draw(params, rest, key) -> images` and the stem of its output files (as _recipes.Sampler)."""

    draw: Callable
    name: str

    def __call__(self, params, rest, key):
        return self.draw(params, rest, key)


LATENT_KEYS = ("source", "path", "autoencoder_kwargs", "posterior", "cache_dir", "cache_dtype", "encode_batch_size")


def _check_keys(section, name: str, accepted) -> None:
    """A misspelt option of a config section is an error, not a silently ignored key."""
    unknown = sorted(set(section.keys()) - set(accepted))
    if unknown:
        raise ConfigError(f"config.{name}.{unknown[0]}: unknown option; accepted: {', '.join(accepted)}")


def _rbg_rngs(key):
    # As _recipes.Recipe._create: parameters from XLA's RngBitGenerator (faster to compile on CPU).
    return nnx.Rngs(key, params=jax.random.key(jax.random.randint(key, (), 0, 2**31 - 1), impl="rbg"))


class AutoencoderRecipe:
    """Trains `jdiff.models.AutoencoderKL` (config.model.kwargs) inside a `jdiff.latent.AutoencoderGAN`
    (with the discriminator of config.autoencoder.discriminator, or none) on config.data's images."""

    path = None
    num_classes = None

    def __init__(self, config):
        self.config = config
        a = config.autoencoder
        if config.model.name != AE_MODEL:
            raise ConfigError(
                f"config.model.name: {config.model.name!r}: a config with an `autoencoder` section "
                f"trains an autoencoder; accepted: {AE_MODEL}"
            )
        refuse_sections(
            config, ("flowmap", "guidance", "latent", "gan", "nested"), "an autoencoder config (config.autoencoder)"
        )
        _check_keys(a, "autoencoder", (*AE_OPTIONS, "discriminator", "discriminator_kwargs"))
        self.options = {k: a[k] for k in AE_OPTIONS if k in a}
        for k in ("l1_weight", "l2_weight", "kl_weight", "disc_weight"):
            v = self.options.get(k, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"config.autoencoder.{k}: {v!r}; accepted: a number >= 0")
        start = self.options.get("disc_start", 0)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ConfigError(f"config.autoencoder.disc_start: {start!r}; accepted: an int >= 0 (a train step)")
        self.discriminator = a.get("discriminator", None)
        if self.discriminator is not None and self.discriminator not in _names.DISCRIMINATORS:
            raise ConfigError(
                f"config.autoencoder.discriminator: unknown discriminator {self.discriminator!r}; "
                f"accepted: {', '.join(_names.DISCRIMINATORS)}, or None"
            )
        self.channels = int(config.data.shape[-1])

    # -- the network ---------------------------------------------------------------------
    def _create(self, key) -> latent.AutoencoderGAN:
        rngs = _rbg_rngs(key)
        kwargs = {"in_channels": self.channels, **kwargs_of(self.config.model.kwargs)}
        ae = _names.get_autoencoder(AE_MODEL, rngs=rngs, **kwargs)
        disc = None
        if self.discriminator is not None:
            dkw = {"in_channels": self.channels, **kwargs_of(self.config.autoencoder.get("discriminator_kwargs", None))}
            disc = _names.get_discriminator(self.discriminator, rngs=rngs, **dkw)
        return latent.AutoencoderGAN(ae, disc)

    def abstract_model(self):
        """The autoencoder (and discriminator) built abstractly: bad kwargs fail here."""
        return keyed("model.kwargs", nnx.eval_shape, self._create, jax.random.PRNGKey(0))

    def build_model(self, key=None):
        key = jax.random.PRNGKey(self.config.seed) if key is None else key
        self.abstract_model()
        return nnx.jit(self._create)(key)

    def restore_ema(self, workdir: str) -> _state.EMAWeights:
        """(graphdef, params, rest, step) of the latest checkpoint's EMA weights; nnx.merge gives the
        AutoencoderGAN, whose autoencoder carries the running latent normalization of that step."""
        return _state.restore_ema(self.config, nnx.jit(self._create)(jax.random.PRNGKey(0)), workdir)

    def bind(self, net) -> AutoencoderKL:
        return net.autoencoder

    def labels(self, n: int):
        return None

    def prepare_data(self, dataset, workdir):
        return dataset

    # -- training ------------------------------------------------------------------------
    def build_loss(self):
        """loss_fn(pair, batch, key) -> (B,) (a ContextLoss when the GAN terms start at a step > 0)."""
        options = dict(self.options)
        if self.discriminator is not None and options.get("disc_start", 0) > 0:

            def context_loss(net, batch, key, *, step, target):
                return latent.autoencoder_loss(net, key, batch["x"], step=step, **options)

            return training.ContextLoss(context_loss)

        options.pop("disc_start", None)

        def loss_fn(net, batch, key):
            return latent.autoencoder_loss(net, key, batch["x"], **options)

        return loss_fn

    # -- "sampling": reconstructions -------------------------------------------------------
    def make_sampler(
        self, graphdef, shape, *, num_steps=None, grid=None, cond=None, solver=None, solver_kwargs=None, weight=None
    ) -> _Sampler:
        """Held-out images (or training images without a holdout) in the first half of the grid
        and their reconstructions (posterior means decoded) in the second."""
        if any(v is not None for v in (num_steps, grid, solver, solver_kwargs, weight)):
            raise ValueError("an autoencoder workdir has no sampler options: its samples are reconstructions")
        n = max(shape[0] // 2, 1)
        held = _data.load_heldout(self.config)
        x = np.asarray((held if held is not None else _data.load_data(self.config)).x[:n])

        @jax.jit
        def fn(params, rest, key):
            ae = nnx.merge(graphdef, params, rest).autoencoder
            rec = ae.decode(ae.encode(jnp.asarray(x)).mode())
            return jnp.concatenate([jnp.asarray(x, rec.dtype), jnp.clip(rec, -1.0, 1.0)])

        return _Sampler(fn, "reconstructions")


# ----------------------------------------------------------------------------------
# Latent diffusion
# ----------------------------------------------------------------------------------


def load_autoencoder(latent_section, image_shape, seed: int = 0) -> AutoencoderKL:
    """The AutoencoderKL a `latent` config section names (see the module docstring)."""
    source = latent_section.source
    if source == "workdir":
        ae_config = keyed("latent.path", load_config, latent_section.path)
        recipe = AutoencoderRecipe(ae_config)
        w = recipe.restore_ema(latent_section.path)
        return nnx.merge(w.graphdef, w.params, w.rest).autoencoder
    if source == "diffusers":
        return keyed("latent.path", latent.load_diffusers_autoencoder, latent_section.path)
    kwargs = {"in_channels": int(image_shape[-1]), **kwargs_of(latent_section.get("autoencoder_kwargs", None))}
    return nnx.jit(lambda k: AutoencoderKL(**kwargs, rngs=_rbg_rngs(k)))(jax.random.PRNGKey(seed))


def _abstract_autoencoder(latent_section, image_shape) -> AutoencoderKL:
    """The autoencoder's structure (no weights read): for shapes, checked before anything runs."""
    source = latent_section.source
    if source == "workdir":
        ae_config = keyed("latent.path", load_config, latent_section.path)
        if ae_config.get("autoencoder", None) is None:
            raise ConfigError(
                f"config.latent.path: {latent_section.path!r} is not an autoencoder workdir (its "
                "config has no `autoencoder` section)"
            )
        return AutoencoderRecipe(ae_config).abstract_model().autoencoder
    if source == "diffusers":
        folder = latent_section.path
        if not os.path.exists(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, "vae")):
            folder = os.path.join(folder, "vae")
        cfg = os.path.join(folder, "config.json")
        if not os.path.exists(cfg):
            raise ConfigError(
                f"config.latent.path: {latent_section.path!r} holds no config.json (nor vae/config.json); "
                "accepted: a local diffusers AutoencoderKL folder (nothing is downloaded)"
            )
        with open(cfg) as f:
            kwargs = keyed("latent.path", latent.autoencoder_kwargs_from_diffusers, json.load(f))
    else:
        kwargs = {"in_channels": int(image_shape[-1]), **kwargs_of(latent_section.get("autoencoder_kwargs", None))}
    return keyed(
        "latent.autoencoder_kwargs" if source == "init" else "latent.path",
        nnx.eval_shape,
        lambda: AutoencoderKL(**kwargs, rngs=nnx.Rngs(0)),
    )


class LatentRecipe:
    """Any recipe (diffusion, flow map) on the normalized latents of config.latent's autoencoder.

    The inner recipe trains and samples in latent space unchanged; `prepare_data` replaces the
    training images by their cached latents, `make_sampler` draws latents of the latent shape and
    decodes them once at the end, so the samples are images of config.data.shape.
    """

    def __init__(self, config, inner):
        self.config, self.inner = config, inner
        s = config.latent
        _check_keys(s, "latent", LATENT_KEYS)
        for key, value, accepted in (
            ("latent.source", s.source, LATENT_SOURCES),
            ("latent.posterior", s.get("posterior", "mode"), POSTERIORS),
            ("latent.cache_dtype", s.get("cache_dtype", "float32"), CACHE_DTYPES),
        ):
            if value not in accepted:
                raise ConfigError(f"config.{key}: unknown value {value!r}; accepted: {', '.join(accepted)}")
        if s.source != "init" and not (isinstance(s.get("path", ""), str) and os.path.isdir(s.get("path", ""))):
            raise ConfigError(
                f"config.latent.path: {s.get('path', '')!r} is not a directory; accepted: the "
                f"{'autoencoder workdir' if s.source == 'workdir' else 'local diffusers VAE folder'} "
                f"(latent.source={s.source!r})"
            )
        bs = s.get("encode_batch_size", 256)
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ConfigError(f"config.latent.encode_batch_size: {bs!r}; accepted: an int >= 1")
        self.image_shape = tuple(config.data.shape)
        abstract = _abstract_autoencoder(s, self.image_shape)
        self.latent_shape = abstract.latent_shape(self.image_shape)
        k = kwargs_of(config.model.kwargs)
        size = k.get("image_size", None)
        size = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
        if size is not None and size != self.latent_shape[:2]:
            raise ConfigError(
                f"config.model.kwargs.image_size: {k['image_size']!r}; the latents of {self.image_shape} "
                f"images are {self.latent_shape}: accepted: {self.latent_shape[0]}"
            )
        if k.get("channels", None) not in (None, self.latent_shape[2]):
            raise ConfigError(
                f"config.model.kwargs.channels: {k['channels']!r}; the latents have "
                f"{self.latent_shape[2]} channels: accepted: {self.latent_shape[2]}"
            )
        self.cache_meta = None

    # -- delegated to the inner recipe ------------------------------------------------------
    path = property(lambda self: self.inner.path)
    num_classes = property(lambda self: self.inner.num_classes)

    def abstract_model(self):
        return self.inner.abstract_model()

    def build_model(self, key=None):
        return self.inner.build_model(key)

    def restore_ema(self, workdir: str):
        return self.inner.restore_ema(workdir)

    def bind(self, net):
        """The inner recipe's bound object, on latents (see `latent_model` for the decoder too)."""
        return self.inner.bind(net)

    def labels(self, n: int):
        return self.inner.labels(n)

    def build_loss(self):
        return self.inner.build_loss()

    # -- the autoencoder, the cache, decoding -------------------------------------------------
    @functools.cached_property
    def autoencoder(self) -> AutoencoderKL:
        """The autoencoder of config.latent (its weights read on first use)."""
        return load_autoencoder(self.config.latent, self.image_shape, self.config.seed)

    def latent_model(self, net) -> latent.LatentModel:
        """`jdiff.latent.LatentModel` of a trained network: its bound object and the decoder."""
        return latent.LatentModel.from_autoencoder(self.bind(net), self.autoencoder, self.image_shape)

    def prepare_data(self, dataset: data.Dataset, workdir: str) -> data.Dataset:
        """The latents of `dataset` from the cache (config.latent.cache_dir or <workdir>/latent_cache),
        encoded first where shards are missing: process k encodes its share, then every process reads all."""
        s = self.config.latent
        directory = s.get("cache_dir", "") or os.path.join(workdir, "latent_cache")
        key = jax.random.PRNGKey(self.config.seed) if s.get("posterior", "mode") == "sample" else None
        p_index, p_count = parallel.process_info()
        ds, meta = latent.latent_cache(
            directory,
            self.autoencoder,
            dataset,
            process_index=p_index,
            process_count=p_count,
            batch_size=s.get("encode_batch_size", 256),
            key=key,
            dtype=np.dtype(s.get("cache_dtype", "float32")),
        )
        meta = {**meta, "latent_std": float(np.std(ds.x)), "latent_mean": float(np.mean(ds.x))}
        self.cache_meta = meta
        logging.info(
            "latent cache %s: %d latents of shape %s, scale %.5g, shift %.5g, std %.4f",
            directory,
            ds.x.shape[0],
            ds.x.shape[1:],
            meta["scale"],
            meta["shift"],
            meta["latent_std"],
        )
        return ds

    def make_sampler(self, graphdef, shape, **kwargs) -> _Sampler:
        """The inner recipe's sampler on latents of the latent shape, decoded once at the end:
        `shape` is the images' (N, *config.data.shape)."""
        if tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"`shape` must be (N, *config.data.shape) = (N, {', '.join(map(str, self.image_shape))}); "
                f"got {tuple(shape)}"
            )
        inner = self.inner.make_sampler(graphdef, (shape[0], *self.latent_shape), **kwargs)
        ae_graphdef, ae_state = nnx.split(self.autoencoder)

        @jax.jit
        def decode(ae_state, z):
            return nnx.merge(ae_graphdef, ae_state).from_latent(z)

        placed = {}

        def draw(params, rest, key):
            z = inner(params, rest, key)
            sharding = getattr(z, "sharding", None)
            state = ae_state
            if isinstance(sharding, jax.sharding.NamedSharding):  # latents on a mesh: the decoder replicated on it
                mesh = sharding.mesh
                if mesh not in placed:
                    placed[mesh] = jax.device_put(
                        ae_state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
                    )
                state = placed[mesh]
            return decode(state, z)

        return _Sampler(draw, inner.name)
