"""Recipes: how a config becomes a network, a training loss and a sampler.

    recipe = recipe_for(config)            # FlowMapRecipe for a config with a `flowmap` section,
                                           # AdversarialRecipe for one with a `gan` section,
                                           # else DiffusionRecipe; every name is checked here
    net = recipe.build_model()             # the nnx network, initialised from PRNGKey(config.seed)
    loss_fn = recipe.build_loss()          # loss_fn(net, batch, key) -> (B,) for jdiff.training.make_train_step
    draw = recipe.make_sampler(graphdef, (16, 8, 8, 1), num_steps=10)
    x = draw(params, rest, key)            # jitted; draw.name ("heun_10") names its output files

Both go through `recipe.bind(net)`, the library object a network stands for:

    DiffusionRecipe   jdiff.Model(net, path, net.kind), or jdiff.edm_denoiser(net, path, sigma_data)
                      for model.preconditioning = "edm"; trained with a jdiff.losses loss
                      (loss(model, key, x0, *, cond, **options)), sampled with
                      jdiff.samplers.sample(solver, model, x_T, grid) under classifier-free
                      guidance when the config has a `guidance` section.
    FlowMapRecipe     jdiff.flowmaps.FlowMap(net, path, param); trained with a jdiff.flowmaps loss
                      (consistency training / distillation from a jdiff.Model teacher, MeanFlow,
                      shortcut), sampled with jdiff.flowmaps.sample on config.flowmap.num_steps steps.
    NestedRecipe      jdiff.Model(net, path, net.kind) of a nested network on the levels of a
                      jdiff.nested.Pyramid; trained with nested.nested_loss (per-level weights,
                      optionally progressive), sampled with any jdiff.samplers solver on the tuple of
                      levels; the samples are the finest level's images.
    AdversarialRecipe jdiff.adversarial.DDGAN(net.generator, path, grid, latent_dim) of a GAN pair
                      (jdiff.models.DDGANMLP / DDGANConv); trained with adversarial.ddgan_loss
                      (both players in one step, two optimizers: experiments._state.build_optimizer),
                      sampled with jdiff.adversarial.sample in its config.gan.num_steps steps.

Names in the config become objects here, through experiments._names: the loss's time sampler
and weighting (config.loss.time_sampler / weighting), label dropout
(`jdiff.guidance.with_label_dropout`, config.loss.label_dropout), solvers, grids, the flow-map
parameterization. Building a recipe compiles nothing.

The `nested` section (multi-resolution diffusion, Gu et al. 2023):

    factors           pooling factors of the levels, finest first: (1, 2, 4) for 28, 14, 7
    shift_power       p of the levels' log-SNR shifts -p log(f_max / f_l) (nested.resolution_shifts)
    weights           per-level loss weights, finest first
    start_steps       progressive training: level l joins the loss at train step start_steps[l]

The `gan` section (a denoising diffusion GAN, Xiao et al. 2022):

    num_steps         T, the DDGAN's steps (its grid: sample.grid with T steps; NFE = T)
    discriminator_learning_rate   the discriminator's AdamW peak rate (the generator's is
                      optimizer.learning_rate; both follow optimizer.schedule)

The `flowmap` section:

    param             "average_velocity" (MeanFlow, shortcut) | "ddim_denoiser" (consistency models)
    sigma_data        data std of the ddim_denoiser's EDM preconditioning
    time_input        how a one-time network (a jdiff.models U-Net / MLP / DiT, which ignores s) sees
                      t: "t" (path time) or "edm" (c_noise = -lambda / 8, as jdiff.edm_denoiser feeds
                      an EDM network); two-time networks ("flowmap_mlp") see (t, s) as they are
    num_steps, gamma  sampling: steps of jdiff.flowmaps.sample and its re-noising (1: consistency multistep)
    teacher_workdir   consistency distillation: the teacher's workdir (its config.json and EMA weights);
                      "" uses a freshly initialised teacher of teacher_config (smoke runs)
    teacher_config    the teacher's config file ("path.py[:arg]"), used when teacher_workdir is ""
    teacher_solver    the jdiff.samplers solver of the teacher's step (flowmaps.solver_step)
    init_from_teacher start the student from the teacher's EMA weights (same network)
    target            the consistency losses' target f^-: "online" (the student under stop_gradient;
                      iCT) | "ema" (the train state's EMA weights, through jdiff.training.ContextLoss)
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx

import jdiff
from experiments import _latent, _names, _state
from experiments._config import (
    ConfigError,
    build_path,
    guidance_weight,
    keyed,
    kwargs_of,
    load_config,
    load_config_file,
    num_classes,
    refuse_sections,
)
from jdiff import adversarial, flowmaps, guidance, nested, samplers, training
from jdiff.paths import AbstractPath

__all__ = ["AdversarialRecipe", "DiffusionRecipe", "FlowMapRecipe", "NestedRecipe", "Recipe", "Sampler", "recipe_for"]

PRECONDITIONINGS = ("none", "edm")
TWO_TIME_MODELS = ("flowmap_mlp",)  # networks net(x, t, s, cond): flow maps only
COMPUTE_DTYPES = ("float32", "bfloat16")  # config.model.compute_dtype (jdiff.Policy)
GAN_MODELS = ("ddgan_mlp", "ddgan_conv")  # generator + discriminator pairs: GAN configs only
NESTED_MODELS = ("nested_unet",)  # networks of a tuple of levels: nested configs only
TIME_INPUTS = ("t", "edm")
TARGETS = ("online", "ema")
CONSISTENCY_TRAINING = "flowmaps.consistency_training_loss"
CONSISTENCY_DISTILLATION = "flowmaps.consistency_distillation_loss"
AVERAGE_VELOCITY_LOSSES = ("flowmaps.meanflow_loss", "flowmaps.shortcut_loss")
NAMED_OPTIONS = {"time_sampler": _names.get_time_sampler, "weighting": _names.get_weighting}


class Sampler(NamedTuple):
    """A jitted `draw(params, rest, key) -> samples` and the stem of its output files."""

    draw: Callable
    name: str

    def __call__(self, params, rest, key):
        return self.draw(params, rest, key)


def _loss_options(config, loss, supplied=()) -> dict:
    """config.loss.kwargs and the loss's named objects (time sampler, weighting), checked against
    the keyword options `loss` accepts; `supplied` are the options the recipe passes itself."""
    name = config.loss.name
    params = inspect.signature(loss).parameters
    any_options = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = [
        n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in ("cond", *supplied, *NAMED_OPTIONS)
    ]
    options = kwargs_of(config.loss.kwargs)
    for key in options:
        if key in NAMED_OPTIONS:
            raise ConfigError(
                f"config.loss.kwargs.{key}: name the {key} in config.loss.{key} (and its options in "
                f"config.loss.{key}_kwargs)"
            )
        if key in supplied or not (any_options or key in accepted):
            raise ConfigError(f"config.loss.kwargs: {name} has no option {key!r}; accepted: {', '.join(accepted)}")
    for key, get in NAMED_OPTIONS.items():
        value = config.loss.get(key, None)
        if value is None:
            continue
        if key not in params and not any_options:
            raise ConfigError(f"config.loss.{key}: {name} takes no {key}; accepted options: {', '.join(accepted)}")
        options[key] = keyed(f"loss.{key}", get, value, **kwargs_of(config.loss.get(f"{key}_kwargs", None)))
    return options


class Recipe(abc.ABC):
    """What a config trains and how it samples.

    Subclasses implement the three library-facing steps, `bind`, `build_loss` and
    `make_sampler`; the network (config.model through experiments._names.get_model), its
    initialisation, the EMA restore and the class labels are shared.

    Attributes:
        config: the ml-collections config.
        path: its jdiff path (config.path).
        num_classes: the class count of a class-conditional model (also its null class), or None.
    """

    def __init__(self, config):
        self.config = config
        self.path: AbstractPath = build_path(config)
        self.num_classes = num_classes(config)
        if config.model.name not in _names.MODELS:
            raise ConfigError(
                f"config.model.name: unknown model {config.model.name!r}; accepted: {', '.join(_names.MODELS)}"
            )
        p = config.loss.get("label_dropout", 0.0) or 0.0
        if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
            raise ConfigError(f"config.loss.label_dropout: {p!r} is not a probability; accepted: a float in [0, 1)")
        if p and self.num_classes is None:
            raise ConfigError(
                "config.loss.label_dropout: label dropout needs a class-conditional model "
                "(data.cond = 'label' and model.kwargs.num_classes set)"
            )
        self.label_dropout = float(p)

    # -- the interface ------------------------------------------------------------------

    @abc.abstractmethod
    def bind(self, net) -> Any:
        """The library object the network stands for (a jdiff.Model, a jdiff.flowmaps.FlowMap)."""

    @abc.abstractmethod
    def build_loss(self) -> Callable:
        """`loss_fn(net, batch, key) -> (B,)` (or a `jdiff.training.ContextLoss`) for
        `jdiff.training.make_train_step`."""

    @abc.abstractmethod
    def make_sampler(
        self, graphdef, shape, *, num_steps=None, grid=None, cond=None, solver=None, solver_kwargs=None, weight=None
    ) -> Sampler:
        """A jitted sampler of `shape` samples from the weights (params, rest) of `graphdef`.

        num_steps, grid: steps and time-grid name (defaults: the config's).
        cond: the labels of a class-conditional model (default 0, 1, 2, ... cycling over the classes).
        solver, solver_kwargs: a jdiff.samplers solver name and options (diffusion only).
        weight: classifier-free guidance weight (diffusion only; default config.guidance.weight).
        """

    # -- shared -------------------------------------------------------------------------

    def _create(self, key) -> nnx.Module:
        # Parameters are drawn with XLA's RngBitGenerator ("rbg"), whose initialization program
        # compiles several times faster on CPU than threefry's (40 s -> 10 s for a small U-Net on
        # a busy 2-core machine); every other stream (dropout) stays threefry.
        params_key = jax.random.key(jax.random.randint(key, (), 0, 2**31 - 1), impl="rbg")
        return _names.get_model(
            self.config.model.name,
            rngs=nnx.Rngs(key, params=params_key),
            **self._dtype_kwargs(),
            **kwargs_of(self.config.model.kwargs),
        )

    @functools.cached_property
    def policy(self) -> jdiff.Policy:
        """The precision policy of config.model.compute_dtype: "float32" (the default) or "bfloat16"
        (bf16 network compute, float32 master weights, optimizer state, clock and loss)."""
        name = self.config.model.get("compute_dtype", "float32") or "float32"
        if name not in COMPUTE_DTYPES:
            raise ConfigError(
                f"config.model.compute_dtype: unknown value {name!r}; accepted: {', '.join(COMPUTE_DTYPES)}"
            )
        return jdiff.Policy() if name == "float32" else jdiff.Policy(compute_dtype=name)

    def _float32_only(self, section: str):
        """A recipe whose networks do not take a compute dtype refuses bfloat16 in one line."""
        if self.policy.compute_dtype is not None:
            raise ConfigError(
                f"config.model.compute_dtype: {self.config.model.compute_dtype!r} is not available with "
                f"a config.{section} section (its networks compute in float32); accepted: float32"
            )

    def _dtype_kwargs(self) -> dict:
        """The network's dtype / param_dtype under `policy` (nothing for float32: every network takes that)."""
        return {} if self.policy.compute_dtype is None else self.policy.network_kwargs()

    def abstract_model(self) -> nnx.Module:
        """The network of config.model built abstractly (shapes only): bad kwargs fail here."""
        return keyed("model.kwargs", nnx.eval_shape, self._create, jax.random.PRNGKey(0))

    def build_model(self, key=None) -> nnx.Module:
        """The network of config.model initialised from `key` (default PRNGKey(config.seed)).

        Initialized inside one jitted program: eager initialization would compile every
        distinct op of a U-Net separately (a minute on a busy 2-core CPU).
        """
        key = jax.random.PRNGKey(self.config.seed) if key is None else key
        self.abstract_model()
        return nnx.jit(self._create)(key)

    def restore_ema(self, workdir: str) -> _state.EMAWeights:
        """(graphdef, params, rest, step): the EMA weights of the latest checkpoint in `workdir`."""
        return _state.restore_ema(self.config, nnx.jit(self._create)(jax.random.PRNGKey(0)), workdir)

    def prepare_data(self, dataset, workdir: str):
        """The training set the loop iterates over, given the loaded one and the run's workdir (the
        identity; a latent config's recipe returns the cached latents, experiments._latent)."""
        return dataset

    def labels(self, n: int):
        """Labels 0, 1, 2, ... cycling over the classes for n samples (None if unconditional)."""
        return None if self.num_classes is None else jnp.arange(n) % self.num_classes

    def _cond(self, batch):
        return batch[self.config.data.cond] if self.config.data.cond else None

    def _with_label_dropout(self, loss):
        if not self.label_dropout:
            return loss
        return guidance.with_label_dropout(loss, self.label_dropout, self.num_classes)

    def _sampler(self, graphdef, shape, cond, draw, name: str) -> Sampler:
        """The jitted sampler around draw(bound, x_T, cond, key) -> samples."""
        cond = self.labels(shape[0]) if cond is None else cond
        path = self.path

        @jax.jit
        def fn(params, rest, key):
            net = nnx.merge(graphdef, params, rest, copy=True)
            net.eval()  # dropout off
            k_prior, k_draw = jax.random.split(key)
            x_T = path.prior_sample(k_prior, shape, jnp.float32)
            return draw(self.bind(net), x_T, cond, k_draw)

        return Sampler(fn, name)


class DiffusionRecipe(Recipe):
    """A diffusion / flow-matching model: the network bound to its path as a `jdiff.Model`,
    trained with a jdiff.losses loss, sampled by a jdiff.samplers solver on a time grid."""

    def __init__(self, config):
        super().__init__(config)
        special = TWO_TIME_MODELS + GAN_MODELS + NESTED_MODELS
        if config.model.name in special:
            section = (
                "flowmap"
                if config.model.name in TWO_TIME_MODELS
                else "gan"
                if config.model.name in GAN_MODELS
                else "nested"
            )
            raise ConfigError(
                f"config.model.name: {config.model.name!r} is a {section} network and needs a "
                f"config.{section} section; accepted here: "
                f"{', '.join(n for n in _names.MODELS if n not in special)}"
            )
        if config.model.preconditioning not in PRECONDITIONINGS:
            raise ConfigError(
                f"config.model.preconditioning: unknown value {config.model.preconditioning!r}; "
                f"accepted: {', '.join(PRECONDITIONINGS)}"
            )
        name = config.loss.name
        if name in _names.FLOWMAP_LOSSES:
            raise ConfigError(
                f"config.loss.name: {name!r} trains a flow map and needs a config.flowmap section; "
                f"accepted here: {', '.join(_names.LOSSES)}"
            )
        loss = keyed("loss.name", _names.get_loss, name)
        options = _loss_options(config, loss)
        if config.model.preconditioning == "edm" and "sigma_data" in inspect.signature(loss).parameters:
            options.setdefault("sigma_data", config.model.sigma_data)
        self.loss = functools.partial(loss, **options)
        if config.get("guidance", None) is not None:
            self._guide(guidance_weight(config))
        self._sampling()  # the sample section's names, checked

    def bind(self, net) -> jdiff.Model:
        """The `jdiff.Model` of `net`: EDM-preconditioned (kind "x0") for model.preconditioning
        "edm", else the network itself with its prediction kind `net.kind`."""
        if self.config.model.preconditioning == "edm":
            return jdiff.edm_denoiser(net, self.path, self.config.model.sigma_data, policy=self.policy)
        return jdiff.Model(net, self.path, net.kind, policy=self.policy)

    def build_loss(self):
        loss = self._with_label_dropout(self.loss)

        def loss_fn(net, batch, key):
            return loss(self.bind(net), key, batch["x"], cond=self._cond(batch))

        return loss_fn

    def _guide(self, weight) -> Callable:
        """model -> the classifier-free guided model of `weight` (config.guidance's interval and
        rescale; the null class is num_classes), or the identity for weight None."""
        if weight is None:
            return lambda model: model
        if self.num_classes is None:
            raise ConfigError(
                "config.model.kwargs.num_classes: classifier-free guidance needs a class-conditional "
                "model (data.cond = 'label' and num_classes set)"
            )
        g = self.config.get("guidance", None)
        interval = tuple(g.interval) if g is not None and g.get("interval", None) else None
        rescale = float(g.get("rescale", 0.0)) if g is not None else 0.0
        return functools.partial(
            guidance.classifier_free, w=weight, null_cond=self.num_classes, interval=interval, rescale=rescale
        )

    def _sampling(self, solver=None, solver_kwargs=None, grid=None, num_steps=None):
        """(solver object, time grid, output name) from the arguments, else config.sample."""
        s = self.config.sample
        name = solver or s.solver
        kwargs = kwargs_of(s.solver_kwargs) if solver is None else dict(solver_kwargs or {})
        steps = int(num_steps or s.num_steps)
        grid = s.grid if grid is None else grid
        if not isinstance(grid, str):  # the times themselves (e.g. a grid fitted by `fit_grid`)
            ts = jnp.asarray(grid)
            if num_steps is not None and int(num_steps) != ts.shape[0] - 1:
                raise ConfigError(
                    f"config.sample.grid: the given grid has {ts.shape[0] - 1} steps, not num_steps = "
                    f"{num_steps}; leave num_steps out with a given grid"
                )
            steps = ts.shape[0] - 1
        elif grid.endswith(".npy"):  # a saved grid (samplers.save_grid, e.g. of samplers.optimize_grid)
            ts = keyed("sample.grid", samplers.load_grid, grid, self.path)
            if num_steps is not None and int(num_steps) != ts.shape[0] - 1:
                raise ConfigError(
                    f"config.sample.grid: {grid!r} has {ts.shape[0] - 1} steps, not num_steps = "
                    f"{num_steps}; leave num_steps out with a grid file"
                )
            steps = ts.shape[0] - 1
        else:
            ts = keyed("sample.grid", _names.get_grid, grid, self.path, steps)
        return keyed("sample.solver", _names.get_solver, name, **kwargs), ts, f"{name}_{steps}"

    def make_sampler(
        self, graphdef, shape, *, num_steps=None, grid=None, cond=None, solver=None, solver_kwargs=None, weight=None
    ) -> Sampler:
        solver, ts, name = self._sampling(solver, solver_kwargs, grid, num_steps)
        guide = self._guide(guidance_weight(self.config, weight))

        def draw(model, x_T, cond, key):
            return samplers.sample(solver, guide(model), x_T, ts, cond=cond, key=key)

        return self._sampler(graphdef, shape, cond, draw, name)

    def fit_grid(
        self,
        graphdef,
        params,
        rest,
        shape,
        key,
        *,
        objective,
        iterations: int,
        learning_rate: float,
        init=None,
        num_steps=None,
        cond=None,
        solver=None,
        solver_kwargs=None,
        weight=None,
        progress=None,
    ) -> tuple[samplers.OptimizedGrid, str]:
        """`jdiff.samplers.optimize_grid` of the sampler `make_sampler` would build, on the weights
        (params, rest) of `graphdef`: the solver's `num_steps`-step grid for this model (guided
        as its samples are), fitted on `shape[0]` prior draws of `key` (one jitted program).

        init: the starting grid's name or .npy file (default config.sample.grid). objective: a
        `samplers` grid objective (GlobalError(), LocalError()). Returns (result, output name).
        """
        solver, ts, name = self._sampling(solver, solver_kwargs, init, num_steps)
        if solver.stochastic:
            raise ConfigError(
                f"config.sample.solver: {name.rsplit('_', 1)[0]!r} draws noise with these options; "
                "accepted: a deterministic solver (grids are fitted for deterministic solvers)"
            )
        guide = self._guide(guidance_weight(self.config, weight))
        cond = self.labels(shape[0]) if cond is None else cond
        path = self.path

        @jax.jit
        def fit(params, rest, key):
            net = nnx.merge(graphdef, params, rest, copy=True)
            net.eval()  # dropout off
            k_prior, k_fit = jax.random.split(key)
            x_fit = path.prior_sample(k_prior, shape, jnp.float32)
            return samplers.optimize_grid(
                solver,
                guide(self.bind(net)),
                k_fit,
                x_fit,
                objective=objective,
                init=ts,
                cond=cond,
                iterations=iterations,
                learning_rate=learning_rate,
                progress=progress,
            )

        return fit(params, rest, key), name


class _OneTimeNet(eqx.Module):
    """A one-time network net(x, c, cond) as the raw flow-map network F(x, t, s, cond): it ignores s
    (a consistency model only ever jumps to the data end) and sees t or EDM's c_noise = -lambda / 8."""

    net: Any
    path: AbstractPath
    edm_time: bool = eqx.field(static=True)

    def __call__(self, x, t, s, cond=None):
        return self.net(x, -self.path.log_snr(t) / 8.0 if self.edm_time else t, cond)


class FlowMapRecipe(Recipe):
    """A flow map f(x, t, s): the network under config.flowmap.param as a `jdiff.flowmaps.FlowMap`,
    trained with a jdiff.flowmaps loss and sampled with `jdiff.flowmaps.sample`."""

    def __init__(self, config):
        super().__init__(config)
        f = config.flowmap
        if config.get("guidance", None) is not None:
            raise ConfigError(
                "config.guidance: classifier-free guidance is for diffusion configs; a flow-map config "
                "samples with jdiff.flowmaps.sample"
            )
        if config.model.preconditioning != "none":
            raise ConfigError(
                f"config.model.preconditioning: {config.model.preconditioning!r}: a flow map is "
                "preconditioned by config.flowmap.param; accepted: none"
            )
        self.target = f.get("target", "online")  # workdirs written before the key trained with "online"
        for key, value, accepted in (
            ("flowmap.time_input", f.time_input, TIME_INPUTS),
            ("flowmap.target", self.target, TARGETS),
        ):
            if value not in accepted:
                raise ConfigError(f"config.{key}: unknown value {value!r}; accepted: {', '.join(accepted)}")
        param_kwargs = {"sigma_data": f.sigma_data} if f.param == "ddim_denoiser" else {}
        self.param = keyed("flowmap.param", _names.get_flowmap_param, f.param, **param_kwargs)

        name = config.loss.name
        if name in _names.LOSSES:
            raise ConfigError(
                f"config.loss.name: {name!r} trains a diffusion model, not a flow map (this config has "
                f"a flowmap section); accepted: {', '.join(_names.FLOWMAP_LOSSES)}"
            )
        loss = keyed("loss.name", _names.get_flowmap_loss, name)
        if name in AVERAGE_VELOCITY_LOSSES and not isinstance(self.param, flowmaps.AverageVelocity):
            raise ConfigError(f"config.flowmap.param: {name} trains an average velocity; accepted: average_velocity")
        self.loss = functools.partial(
            loss, **_loss_options(config, loss, supplied=("step", "total_steps", "target_flow", "teacher_step"))
        )

        self._sampling()  # the sampling names, checked

        self.teacher_workdir = self.teacher = self.teacher_solver = None
        if name == CONSISTENCY_DISTILLATION:
            self.teacher_workdir = f.get("teacher_workdir", "") or None
            self.teacher = self._teacher_recipe()
            self.teacher_solver = keyed("flowmap.teacher_solver", _names.get_solver, f.teacher_solver)
            if self.teacher_solver.stochastic:
                raise ConfigError(
                    f"config.flowmap.teacher_solver: {f.teacher_solver!r} draws noise; distillation "
                    "needs a deterministic solver (e.g. heun, euler, ddim)"
                )

    def _teacher_recipe(self) -> DiffusionRecipe:
        """The DiffusionRecipe of the teacher (its workdir's config, else flowmap.teacher_config)."""
        f = self.config.flowmap
        key = "flowmap.teacher_workdir" if self.teacher_workdir else "flowmap.teacher_config"
        if not (self.teacher_workdir or f.get("teacher_config", "")):
            raise ConfigError(
                "config.flowmap.teacher_config: consistency distillation needs a teacher: set "
                "flowmap.teacher_workdir (a trained run) or flowmap.teacher_config (a config file)"
            )
        try:
            tconfig = load_config(self.teacher_workdir) if self.teacher_workdir else load_config_file(f.teacher_config)
            teacher = recipe_for(tconfig)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"config.{key}: {str(e).splitlines()[0]}") from e
        if not isinstance(teacher, DiffusionRecipe):
            raise ConfigError(f"config.{key}: the teacher must be a diffusion model (its config has a flowmap section)")
        if type(teacher.path) is not type(self.path):
            raise ConfigError(
                f"config.path.name: the student's path must be the teacher's ({type(teacher.path).__name__})"
            )
        return teacher

    @functools.cached_property
    def _teacher_ema(self) -> _state.EMAWeights:
        return self.teacher.restore_ema(self.teacher_workdir)

    def teacher_model(self) -> jdiff.Model:
        """The teacher as a jdiff.Model: its workdir's EMA weights, or a freshly initialised network."""
        if self.teacher_workdir:
            w = self._teacher_ema
            net = nnx.merge(w.graphdef, w.params, w.rest)
        else:
            net = self.teacher.build_model()
        net.eval()
        return self.teacher.bind(net)

    def build_model(self, key=None) -> nnx.Module:
        """The student network; with flowmap.init_from_teacher, the teacher's EMA weights."""
        net = super().build_model(key)
        if self.config.flowmap.get("init_from_teacher", False) and self.teacher_workdir:
            nnx.update(net, self._teacher_ema.params)
        return net

    def bind(self, net) -> flowmaps.FlowMap:
        """The flow map of `net` under config.flowmap.param (a one-time network ignores s)."""
        if self.config.model.name not in TWO_TIME_MODELS:
            net = _OneTimeNet(net, self.path, self.config.flowmap.time_input == "edm")
        return flowmaps.FlowMap(net, self.path, self.param, policy=self.policy)

    def build_loss(self):
        """The flow-map loss; consistency losses are a `training.ContextLoss`, given the train
        step's index (the iCT curriculum) and the EMA network (flowmap.target = "ema")."""
        name = self.config.loss.name
        fixed = {}
        if name == CONSISTENCY_DISTILLATION:
            fixed["teacher_step"] = flowmaps.solver_step(self.teacher_solver, self.teacher_model())
        if name == CONSISTENCY_TRAINING:
            fixed["total_steps"] = int(self.config.total_steps)
        loss = self._with_label_dropout(functools.partial(self.loss, **fixed))

        if name not in (CONSISTENCY_TRAINING, CONSISTENCY_DISTILLATION):

            def loss_fn(net, batch, key):
                return loss(self.bind(net), key, batch["x"], cond=self._cond(batch))

            return loss_fn

        use_ema = self.target == "ema"

        def context_loss_fn(net, batch, key, *, step, target):
            extra = {"step": step} if name == CONSISTENCY_TRAINING else {}
            # target_flow None: the loss uses the online flow map under stop_gradient (iCT's choice).
            target_flow = self.bind(target) if use_ema else None
            return loss(self.bind(net), key, batch["x"], cond=self._cond(batch), target_flow=target_flow, **extra)

        return training.ContextLoss(context_loss_fn)

    def make_sampler(
        self, graphdef, shape, *, num_steps=None, grid=None, cond=None, solver=None, solver_kwargs=None, weight=None
    ) -> Sampler:
        if solver is not None or solver_kwargs:
            raise ValueError(
                "`solver` does not apply to a flow-map config: it samples with jdiff.flowmaps.sample, "
                "the flow map's own jumps (choose num_steps)"
            )
        if weight is not None:
            raise ValueError("`weight`: classifier-free guidance is for diffusion configs, not flow maps")
        ts, name = self._sampling(grid, num_steps)
        gamma = float(self.config.flowmap.gamma)

        def draw(flow, x_T, cond, key):
            return flowmaps.sample(flow, x_T, ts, cond=cond, key=key, gamma=gamma)

        return self._sampler(graphdef, shape, cond, draw, name)

    def _sampling(self, grid=None, num_steps=None):
        """(time grid, output name) from the arguments, else sample.grid and flowmap.num_steps."""
        steps = int(num_steps or self.config.flowmap.num_steps)
        ts = keyed("sample.grid", _names.get_grid, grid or self.config.sample.grid, self.path, steps)
        return ts, f"flowmap_{steps}"


class NestedRecipe(Recipe):
    """Nested multi-resolution diffusion (Gu et al. 2023): a network of the levels of a
    `jdiff.nested.Pyramid` (config.nested) bound as one `jdiff.Model`, trained with
    `nested.nested_loss` and sampled by any jdiff.samplers solver on the tuple of levels."""

    def __init__(self, config):
        super().__init__(config)
        refuse_sections(config, ("flowmap", "gan", "guidance"), "a nested config (config.nested)")
        self._float32_only("nested")
        if config.model.name not in NESTED_MODELS:
            raise ConfigError(
                f"config.model.name: {config.model.name!r} does not take a tuple of levels; accepted "
                f"with a config.nested section: {', '.join(NESTED_MODELS)}"
            )
        if config.model.preconditioning != "none":
            raise ConfigError(
                f"config.model.preconditioning: {config.model.preconditioning!r}; accepted with config.nested: none"
            )
        n = config.nested
        self.pyramid = keyed("nested.factors", nested.Pyramid, tuple(n.factors), shift_power=n.shift_power)
        levels = self.pyramid.num_levels
        if self.pyramid.factors != tuple(2**i for i in range(levels)):
            raise ConfigError(
                f"config.nested.factors: {tuple(n.factors)}; accepted: halving levels (1, 2, 4, ...), "
                "the resolutions of a nested U-Net"
            )
        if config.model.kwargs.get("num_levels", None) != levels:
            raise ConfigError(
                f"config.model.kwargs.num_levels: {config.model.kwargs.get('num_levels', None)!r}; "
                f"accepted: {levels}, the levels of config.nested.factors"
            )
        for key in ("weights", "start_steps"):
            value = tuple(n.get(key, ()))
            if len(value) != levels or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in value
            ):
                raise ConfigError(
                    f"config.nested.{key}: {value!r}; accepted: {levels} numbers >= 0, finest level first"
                )
        self.weights, self.start_steps = tuple(n.weights), tuple(int(s) for s in n.start_steps)
        name = config.loss.name
        if name not in _names.NESTED_LOSSES:
            raise ConfigError(
                f"config.loss.name: {name!r} is not a nested loss; accepted with config.nested: "
                f"{', '.join(_names.NESTED_LOSSES)}"
            )
        loss = _names.get_nested_loss(name)
        self.loss = functools.partial(
            loss, pyramid=self.pyramid, **_loss_options(config, loss, supplied=("pyramid", "weights", "return_levels"))
        )
        self._sampling()  # the sample section's names, checked

    def bind(self, net) -> jdiff.Model:
        """The `jdiff.Model` of the nested network (it takes and returns the tuple of levels)."""
        return jdiff.Model(net, self.path, net.kind)

    def build_loss(self):
        """nested_loss with config.nested.weights, the per-level losses as metrics; with nonzero
        start_steps a `training.ContextLoss` whose weights follow `nested.progressive_weights`."""
        loss = self._with_label_dropout(self.loss)

        def levels_loss(net, batch, key, weights):
            total, levels = loss(
                self.bind(net), key, batch["x"], cond=self._cond(batch), weights=weights, return_levels=True
            )
            return total, {f"loss_level{i}": levels[:, i] for i in range(levels.shape[1])}

        if not any(self.start_steps):
            return lambda net, batch, key: levels_loss(net, batch, key, self.weights)

        def progressive(net, batch, key, *, step, target):
            return levels_loss(net, batch, key, nested.progressive_weights(self.weights, self.start_steps, step))

        return training.ContextLoss(progressive)

    def _sampling(self, solver=None, solver_kwargs=None, grid=None, num_steps=None):
        s = self.config.sample
        name = solver or s.solver
        kwargs = kwargs_of(s.solver_kwargs) if solver is None else dict(solver_kwargs or {})
        steps = int(num_steps or s.num_steps)
        return (
            keyed("sample.solver", _names.get_solver, name, **kwargs),
            keyed("sample.grid", _names.get_grid, grid or s.grid, self.path, steps),
            f"{name}_{steps}",
        )

    def make_sampler(
        self, graphdef, shape, *, num_steps=None, grid=None, cond=None, solver=None, solver_kwargs=None, weight=None
    ) -> Sampler:
        """Samples every level jointly from their priors; returns the finest level's images."""
        if weight is not None:
            raise ValueError("`weight`: classifier-free guidance is not wired for nested configs")
        solver, ts, name = self._sampling(solver, solver_kwargs, grid, num_steps)
        cond = self.labels(shape[0]) if cond is None else cond
        path, pyramid = self.path, self.pyramid

        @jax.jit
        def fn(params, rest, key):
            net = nnx.merge(graphdef, params, rest, copy=True)
            net.eval()
            k_prior, k_draw = jax.random.split(key)
            x_T = pyramid.prior_sample(path, k_prior, shape[1:], shape[0])
            levels = samplers.sample(solver, self.bind(net), x_T, ts, cond=cond, key=k_draw)
            return pyramid.images(levels)[0]

        return Sampler(fn, name)


class AdversarialRecipe(Recipe):
    """A denoising diffusion GAN (Xiao et al. 2022): the generator of a GAN pair bound to its path and
    its T-step grid as a `jdiff.adversarial.DDGAN`, trained with `adversarial.ddgan_loss` (the
    discriminator is the pair's), sampled with `jdiff.adversarial.sample` in T steps."""

    def __init__(self, config):
        super().__init__(config)
        refuse_sections(config, ("flowmap", "guidance"), "a GAN config (config.gan)")
        self._float32_only("gan")
        if config.model.name not in GAN_MODELS:
            raise ConfigError(
                f"config.model.name: {config.model.name!r} is not a generator + discriminator pair; "
                f"accepted with a config.gan section: {', '.join(GAN_MODELS)}"
            )
        if config.model.preconditioning != "none":
            raise ConfigError(
                f"config.model.preconditioning: {config.model.preconditioning!r}: a DDGAN generator "
                "predicts x0 itself; accepted: none"
            )
        if self.label_dropout:
            raise ConfigError(
                "config.loss.label_dropout: label dropout is for classifier-free guidance of "
                "diffusion configs; accepted with config.gan: 0"
            )
        name = config.loss.name
        if name not in _names.GAN_LOSSES:
            raise ConfigError(
                f"config.loss.name: {name!r} does not train a GAN; accepted with config.gan: "
                f"{', '.join(_names.GAN_LOSSES)}"
            )
        loss = _names.get_gan_loss(name)
        self.loss = functools.partial(loss, **_loss_options(config, loss))
        steps = config.gan.num_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(
                f"config.gan.num_steps: {steps!r}; accepted: an int >= 1 (the DDGAN's T, 2 to 8 in Xiao et al.)"
            )
        self.num_steps = steps
        self.grid = keyed("sample.grid", _names.get_grid, config.sample.grid, self.path, steps)
        _state.build_optimizer(config)  # checks gan.discriminator_learning_rate

    def bind(self, net) -> adversarial.DDGAN:
        """The `DDGAN` of the pair's generator on this config's path and T-step grid."""
        return adversarial.DDGAN(net.generator, self.path, self.grid, net.generator.latent_dim)

    def build_loss(self):
        """loss_fn(pair, batch, key) -> (ddgan_loss(...).loss, the two players' terms as metrics)."""

        def loss_fn(net, batch, key):
            out = self.loss(self.bind(net), net.discriminator, key, batch["x"], cond=self._cond(batch))
            extra = {
                "d_loss": out.d_loss,
                "g_loss": out.g_loss,
                "r1": out.r1,
                "d_real": out.d_real,
                "d_fake": out.d_fake,
            }
            return out.loss, extra

        return loss_fn

    def make_sampler(
        self, graphdef, shape, *, num_steps=None, grid=None, cond=None, solver=None, solver_kwargs=None, weight=None
    ) -> Sampler:
        if solver is not None or solver_kwargs:
            raise ValueError("`solver` does not apply to a GAN config: it samples with jdiff.adversarial.sample")
        if weight is not None:
            raise ValueError("`weight`: classifier-free guidance is for diffusion configs, not GANs")
        if num_steps not in (None, self.num_steps) or grid not in (None, self.config.sample.grid):
            raise ValueError(
                f"`num_steps`, `grid`: a DDGAN samples on the {self.num_steps}-step "
                f"{self.config.sample.grid!r} grid it was trained on (config.gan.num_steps, sample.grid)"
            )

        def draw(ddgan, x_T, cond, key):
            return adversarial.sample(ddgan, key, x_T, cond=cond)

        return self._sampler(graphdef, shape, cond, draw, f"ddgan_{self.num_steps}")


def _pixel_recipe_for(config) -> Recipe:
    """The pixel-space recipe of `config`: FlowMapRecipe when it has a `flowmap` section,
    AdversarialRecipe for a `gan` section, NestedRecipe for a `nested` section, else DiffusionRecipe."""
    if config.get("flowmap", None) is not None:
        return FlowMapRecipe(config)
    if config.get("gan", None) is not None:
        return AdversarialRecipe(config)
    if config.get("nested", None) is not None:
        return NestedRecipe(config)
    return DiffusionRecipe(config)


def recipe_for(config) -> Recipe:
    """The recipe of `config`: experiments._latent.AutoencoderRecipe for a config with an
    `autoencoder` section; else the pixel-space recipe above, wrapped in
    experiments._latent.LatentRecipe (cached latents in, decoded samples out) when the config has
    a `latent` section."""
    if config.get("autoencoder", None) is not None:
        return _latent.AutoencoderRecipe(config)
    recipe = _pixel_recipe_for(config)
    if config.get("latent", None) is not None:
        return _latent.LatentRecipe(config, recipe)
    return recipe
