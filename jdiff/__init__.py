"""jdiff: diffusion, score-based and flow-matching models as one Gaussian-path framework in JAX.

Submodules are the public namespaces (`jdiff.paths`, `jdiff.predictions`, `jdiff.analytic`,
`jdiff.samplers`, `jdiff.losses`, ...); they are imported on first attribute access, so
`import jdiff` stays cheap. The core names are re-exported here.
"""

import importlib

from jdiff._model import Model as Model
from jdiff._model import edm_denoiser as edm_denoiser
from jdiff.analytic import GaussianMixture as GaussianMixture
from jdiff.paths import EDM as EDM
from jdiff.paths import AbstractPath as AbstractPath
from jdiff.paths import CustomPath as CustomPath
from jdiff.paths import Linear as Linear
from jdiff.paths import LogSNRPath as LogSNRPath
from jdiff.paths import SubVP as SubVP
from jdiff.paths import Trigonometric as Trigonometric
from jdiff.paths import VEGeometric as VEGeometric
from jdiff.paths import VPCosine as VPCosine
from jdiff.paths import VPLinear as VPLinear
from jdiff.precision import Policy as Policy
from jdiff.predictions import convert as convert

__version__ = "0.1.0"

_SUBMODULES = (
    "adversarial",
    "analytic",
    "checkpoint",
    "data",
    "flowmaps",
    "guidance",
    "latent",
    "likelihood",
    "losses",
    "metrics",
    "models",
    "nested",
    "parallel",
    "paths",
    "predictions",
    "samplers",
    "schedules",
    "training",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"jdiff.{name}")
    raise AttributeError(f"module 'jdiff' has no attribute {name!r}")
