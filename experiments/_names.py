"""Every look-up by name lives here: configs name things, the library takes objects.

    get_path("vp_cosine")                 -> jdiff.VPCosine()
    get_solver("dpmpp_2m")                -> jdiff.samplers.DPMSolverPP2M()
    get_grid("karras", path, 18)          -> jdiff.samplers.karras_grid(path, 18)
    get_clock("sigma")                    -> "sigma", the `clock=` of samplers.Euler / Heun / LMS
    get_grid_objective("local_error")     -> jdiff.samplers.LocalError()
    get_time_sampler("lognormal", p_mean=-1.2)  -> a jdiff.losses time sampler
    get_weighting("min_snr", gamma=5.0)   -> jdiff.losses.MinSNR(5.0)
    get_model("unet", **kwargs)           -> jdiff.models.UNet(**kwargs)
    get_dataset("digits")                 -> jdiff.data.load_digits()
    get_loss("dsm_loss")                  -> jdiff.losses.dsm_loss
    get_flowmap_loss("flowmaps.meanflow_loss")  -> jdiff.flowmaps.meanflow_loss
    get_flowmap_param("ddim_denoiser", sigma_data=0.5)  -> jdiff.flowmaps.DDIMDenoiser(0.5)
    get_gan_loss("adversarial.ddgan_loss")      -> jdiff.adversarial.ddgan_loss
    get_nested_loss("nested.nested_loss")       -> jdiff.nested.nested_loss
    get_divergence("hutchinson", num_probes=4)  -> jdiff.likelihood.Hutchinson(num_probes=4)
    get_autoencoder("autoencoder_kl", **kwargs)  -> jdiff.models.AutoencoderKL(**kwargs)
    get_discriminator("patch", **kwargs)  -> jdiff.latent.PatchDiscriminator(**kwargs)

Each `get_*` raises a ValueError that names the argument and lists the accepted names; the
config layer (`experiments._config`) turns it into a one-line error naming the config key.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from jdiff import adversarial, data, flowmaps, latent, likelihood, losses, models, nested, paths, samplers
from jdiff.data import images, sources, toy

__all__ = [
    "AUTOENCODERS",
    "CLOCKS",
    "DATASETS",
    "DISCRIMINATORS",
    "DIVERGENCES",
    "FLOWMAP_LOSSES",
    "FLOWMAP_PARAMS",
    "GAN_LOSSES",
    "GRIDS",
    "GRID_OBJECTIVES",
    "LOSSES",
    "MODELS",
    "NESTED_LOSSES",
    "PATHS",
    "SOLVERS",
    "TIME_SAMPLERS",
    "TOY_SETS",
    "WEIGHTINGS",
    "get_autoencoder",
    "get_clock",
    "get_dataset",
    "get_discriminator",
    "get_divergence",
    "get_flowmap_loss",
    "get_flowmap_param",
    "get_gan_loss",
    "get_grid",
    "get_grid_objective",
    "get_loss",
    "get_model",
    "get_nested_loss",
    "get_path",
    "get_solver",
    "get_time_sampler",
    "get_weighting",
]


def _lookup(table: dict, name, what: str):
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown {what} {name!r}; accepted: {', '.join(table)}")
    return table[name]


PATHS = {
    "vp": paths.VPLinear,
    "vp_linear": paths.VPLinear,
    "vp_cosine": paths.VPCosine,
    "subvp": paths.SubVP,
    "ve": paths.VEGeometric,
    "edm": paths.EDM,
    "linear": paths.Linear,
    "rectified_flow": paths.Linear,
    "trig": paths.Trigonometric,
}


def get_path(name: str, **kwargs) -> paths.AbstractPath:
    """A path by name, with keyword overrides of its parameters."""
    return _lookup(PATHS, name, "path")(**kwargs)


SOLVERS = {
    "ddpm": samplers.DDPM,
    "ddim": samplers.DDIM,
    "euler": samplers.Euler,
    "heun": samplers.Heun,
    "dpm_solver": samplers.DPMSolver,
    "dpm_solver_2m": samplers.DPMSolver2M,
    "dpmpp_2m": samplers.DPMSolverPP2M,
    "dpmpp_3m": samplers.DPMSolverPP3M,
    "dpmpp_2m_sde": samplers.DPMSolverPP2MSDE,
    "unipc": samplers.UniPC,
    "lms": samplers.LMS,
    "euler_maruyama": samplers.EulerMaruyama,
    "pc": samplers.PredictorCorrector,
}


def get_solver(name: str, **kwargs) -> samplers.AbstractSolver:
    """A fixed-step solver by name with its keyword arguments, e.g. get_solver("ddim", eta=1.0).

    For "pc", `predictor` may itself be a name: get_solver("pc", predictor="euler_maruyama", snr=0.1).
    """
    cls = _lookup(SOLVERS, name, "solver")
    if name == "pc" and isinstance(kwargs.get("predictor"), str):
        kwargs["predictor"] = get_solver(kwargs["predictor"])
    return cls(**kwargs)


GRIDS = {
    "uniform": samplers.uniform_grid,
    "log_snr": samplers.log_snr_grid,
    "karras": samplers.karras_grid,
    "quadratic": samplers.quadratic_grid,
}


def get_grid(name: str, path: paths.AbstractPath, num_steps: int, **kwargs):
    """A time grid by name for `path` with `num_steps` steps (and the grid's keyword options)."""
    return _lookup(GRIDS, name, "grid")(path, num_steps, **kwargs)


# The integration clock of the solvers that take `clock=` (samplers.Euler, Heun, LMS): the
# library's values are these names.
CLOCKS = {"auto": "auto", "t": "t", "sigma": "sigma"}


def get_clock(name: str) -> str:
    """The `clock=` value of a solver by name ("auto", "t" or "sigma")."""
    return _lookup(CLOCKS, name, "clock")


GRID_OBJECTIVES = {
    "global_error": samplers.GlobalError,
    "local_error": samplers.LocalError,
}


def get_grid_objective(name: str, **kwargs):
    """An objective of `samplers.optimize_grid` by name, with its keyword options."""
    return _lookup(GRID_OBJECTIVES, name, "grid objective")(**kwargs)


TIME_SAMPLERS = {
    "uniform": losses.uniform_time,
    "stratified": losses.stratified_time,
    "antithetic": losses.stratified_time,
    "lognormal": losses.lognormal_time,
    "logit_normal": losses.logit_normal_time,
}


def get_time_sampler(name: str, **kwargs):
    """A time sampler by name, with its keyword options bound (e.g. `p_mean=`)."""
    fn = _lookup(TIME_SAMPLERS, name, "time sampler")
    return functools.partial(fn, **kwargs) if kwargs else fn


WEIGHTINGS = {
    "none": None,
    "snr": losses.SNRWeighting,
    "min_snr": losses.MinSNRWeighting,
    "likelihood": losses.LikelihoodWeighting,
    "edm": losses.EDMWeighting,
}


def get_weighting(name: str, **kwargs):
    """A loss weighting by name ("none" is None: unit weight in the loss's target space)."""
    cls = _lookup(WEIGHTINGS, name, "weighting")
    if cls is None:
        if kwargs:
            raise ValueError(f"the 'none' weighting takes no options; got {', '.join(kwargs)}")
        return None
    return cls(**kwargs)


MODELS = {
    "mlp": models.MLP,
    "unet": models.UNet,
    "dit": models.DiT,
    "flowmap_mlp": models.FlowMapMLP,
    "ddgan_mlp": models.DDGANMLP,
    "ddgan_conv": models.DDGANConv,
    "nested_unet": models.NestedUNet,
}


def get_model(name: str, **kwargs):
    """A network by name built with keyword arguments (rngs included)."""
    return _lookup(MODELS, name, "model")(**kwargs)


TOY_SETS = {
    "moons": toy.moons,
    "checkerboard": toy.checkerboard,
    "eight_gaussians": toy.eight_gaussians,
    "8gaussians": toy.eight_gaussians,
    "swiss_roll": toy.swiss_roll,
    "gaussian_mixture": toy.gaussian_mixture,
}


def _toy(name):
    def load(n: int = 10_000, seed: int = 0, **kwargs) -> data.Dataset:
        """n samples of the toy set drawn with PRNGKey(seed), with their labels."""
        x, label = TOY_SETS[name](jax.random.PRNGKey(seed), n, with_labels=True, **kwargs)
        return data.Dataset(np.asarray(x, np.float32), np.asarray(label, np.int32))

    return load


DATASETS = {
    **{name: _toy(name) for name in TOY_SETS},
    "digits": images.load_digits,
    "mnist5k": images.load_mnist5k,
    "npz": sources.load_npz,
    "image_folder": sources.load_image_folder,
    "cifar10": lambda split="train", **kw: sources.load_tfds("cifar10", split, **kw),
}


def get_dataset(name: str, **kwargs) -> data.Dataset:
    """A Dataset(x, label) by name with the loader's keyword arguments.

    Names: the toy sets (kwargs n, seed and the sampler's own), "digits", "mnist5k",
    "npz" (path, key, label_key), "image_folder" (path, size, mode), "cifar10" (split), and
    "tfds/<name>" for any tensorflow-datasets set (split, data_dir).
    """
    if isinstance(name, str) and name.startswith("tfds/"):
        return sources.load_tfds(name[len("tfds/") :], **kwargs)
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}, tfds/<name>")
    return DATASETS[name](**kwargs)


LOSSES = {
    "dsm_loss": losses.dsm_loss,
    "ddpm_loss": losses.ddpm_loss,
    "edm_loss": losses.edm_loss,
    "cfm_loss": losses.cfm_loss,
    "vdm_loss": losses.vdm_loss,
    "vlb": losses.vlb,
}


def get_loss(name: str):
    """A diffusion loss `loss(model, key, x0, *, cond, **options) -> (B,)` by name."""
    return _lookup(LOSSES, name, "loss")


FLOWMAP_LOSSES = {
    "flowmaps.consistency_training_loss": flowmaps.consistency_training_loss,
    "flowmaps.consistency_distillation_loss": flowmaps.consistency_distillation_loss,
    "flowmaps.meanflow_loss": flowmaps.meanflow_loss,
    "flowmaps.shortcut_loss": flowmaps.shortcut_loss,
}


def get_flowmap_loss(name: str):
    """A flow-map loss `loss(flow, key, x0, *, cond, **options) -> (B,)` by name."""
    return _lookup(FLOWMAP_LOSSES, name, "flow-map loss")


FLOWMAP_PARAMS = {"average_velocity": flowmaps.AverageVelocity, "ddim_denoiser": flowmaps.DDIMDenoiser}


def get_flowmap_param(name: str, **kwargs) -> flowmaps.AbstractFlowMapParam:
    """A flow-map parameterization by name with its keyword arguments (DDIMDenoiser: sigma_data)."""
    return _lookup(FLOWMAP_PARAMS, name, "flow-map parameterization")(**kwargs)


GAN_LOSSES = {"adversarial.ddgan_loss": adversarial.ddgan_loss}


def get_gan_loss(name: str):
    """An adversarial loss `loss(ddgan, discriminator, key, x0, *, cond, **options)` by name."""
    return _lookup(GAN_LOSSES, name, "adversarial loss")


NESTED_LOSSES = {"nested.nested_loss": nested.nested_loss}


def get_nested_loss(name: str):
    """A nested (multi-resolution) loss `loss(model, key, x0, *, pyramid, weights, cond, **options)` by name."""
    return _lookup(NESTED_LOSSES, name, "nested loss")


DIVERGENCES = {"exact": None, "hutchinson": likelihood.Hutchinson}


def get_divergence(name: str, **kwargs):
    """The divergence estimator of `jdiff.likelihood.ode_log_likelihood` by name: "exact" is
    None (the exact trace), "hutchinson" a `Hutchinson(num_probes=..., probe=...)`."""
    cls = _lookup(DIVERGENCES, name, "divergence")
    if cls is None:
        if kwargs:
            raise ValueError(f"the exact divergence takes no options; got {', '.join(kwargs)}")
        return None
    return cls(**kwargs)


AUTOENCODERS = {"autoencoder_kl": models.AutoencoderKL}


def get_autoencoder(name: str, **kwargs):
    """An autoencoder for jdiff.latent by name with its keyword arguments (e.g. rngs, block_out_channels)."""
    return _lookup(AUTOENCODERS, name, "autoencoder")(**kwargs)


DISCRIMINATORS = {"patch": latent.PatchDiscriminator}


def get_discriminator(name: str, **kwargs):
    """An autoencoder's GAN discriminator by name with its keyword arguments (in_channels, ch, num_layers, rngs)."""
    return _lookup(DISCRIMINATORS, name, "discriminator")(**kwargs)
