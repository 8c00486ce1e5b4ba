"""Shared test fixtures: the analytic Gaussian-mixture oracle, every path, a compile counter."""

import contextlib

import jax
import jax.numpy as jnp

import jdiff
from jdiff import paths


def all_paths():
    """One instance of every built-in path, with ids for pytest.parametrize."""
    return {
        "vp_linear": paths.VPLinear(),
        "vp_cosine": paths.VPCosine(),
        "subvp": paths.SubVP(),
        "ve": paths.VEGeometric(),
        "linear": paths.Linear(),
        "trig": paths.Trigonometric(),
        "logsnr": paths.LogSNRPath(lambda t: -2.0 * jnp.log(jnp.tan(0.5 * jnp.pi * t)) + 1.0),
        "custom": paths.CustomPath(lambda t: (1.0 - t) ** 2, lambda t: jnp.sqrt(t)),
    }


def mixture_2d(dtype=jnp.float64):
    """A 2-D mixture of three anisotropic Gaussians; components 0 and 1 are class 0, 2 is class 1."""
    return jdiff.GaussianMixture(
        weights=jnp.array([0.5, 0.3, 0.2], dtype),
        means=jnp.array([[-1.0, 0.5], [1.2, 1.0], [0.3, -1.3]], dtype),
        covs=jnp.array(
            [[[0.10, 0.03], [0.03, 0.05]], [[0.04, -0.01], [-0.01, 0.08]], [[0.06, 0.0], [0.0, 0.02]]], dtype
        ),
        labels=jnp.array([0, 0, 1]),
    )


def mixture_1d(dtype=jnp.float64):
    return jdiff.GaussianMixture(
        weights=jnp.array([0.3, 0.7], dtype), means=jnp.array([[-1.0], [2.0]], dtype), stds=jnp.array([0.5, 0.8], dtype)
    )


@contextlib.contextmanager
def count_compiles():
    """Count XLA compilations inside the block: `with count_compiles() as n: ...; n()`."""
    counter = [0]

    def listener(event, *args, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            counter[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield lambda: counter[0]
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
