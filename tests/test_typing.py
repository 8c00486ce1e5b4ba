"""The jaxtyping shape annotations of the public functions (paths, predictions, samplers, losses) hold, checked at test time as diffrax's
tests do: each call below runs through `jaxtyped(typechecker=beartype)`, so an annotation that
disagrees with what a function accepts or returns fails here, and a call whose shapes disagree
with the annotation is refused before the function runs.

The path methods are annotated once, on `AbstractPath`; every built-in path's implementation is
checked against those annotations (a method returning a shape other than its time's fails).
"""

import typing

import beartype
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_paths, mixture_2d
from jaxtyping import TypeCheckError, jaxtyped

from jdiff import Model, losses, predictions, samplers
from jdiff.paths import AbstractPath

PATHS = all_paths()
ONE_TIME_METHODS = ("alpha", "sigma", "d_alpha", "d_sigma", "log_snr", "d_log_snr", "drift", "diffusion2")


def checked(fn):
    return jaxtyped(typechecker=beartype.beartype)(fn)


def with_annotations_of(base, fn):
    """`fn` (same parameter names as `base`) carrying `base`'s resolved annotations."""
    fn.__annotations__ = typing.get_type_hints(base)
    return checked(fn)


def _method_of_one_time(name):
    def call(self, t):
        return getattr(self, name)(t)

    return with_annotations_of(getattr(AbstractPath, name), call)


def _t_from_log_snr():
    def call(self, lam):
        return self.t_from_log_snr(lam)

    return with_annotations_of(AbstractPath.t_from_log_snr, call)


def _marginal():
    def call(self, key, x0, t):
        return self.marginal(key, x0, t)

    return with_annotations_of(AbstractPath.marginal, call)


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
def test_every_path_keeps_the_shape_of_its_times(path):
    lo, hi = path.t_min + 0.01 * (path.t_max - path.t_min), path.t_max - 0.01 * (path.t_max - path.t_min)
    times = [0.5 * (lo + hi), jnp.linspace(lo, hi, 6).reshape(2, 3)]
    assert _method_of_one_time("alpha")(path, times[0]).shape == ()  # a Python float is a time of shape ()
    for name in ONE_TIME_METHODS:
        assert _method_of_one_time(name)(path, times[1]).shape == (2, 3), name
    lam = path.log_snr(times[1])
    np.testing.assert_allclose(_t_from_log_snr()(path, lam), times[1], rtol=1e-5, atol=1e-6)
    x0 = jnp.ones((4, 3))
    xt, eps = _marginal()(path, jax.random.key(0), x0, jnp.full((4,), 0.5 * (lo + hi)))
    assert xt.shape == eps.shape == x0.shape


def test_a_wrongly_shaped_return_is_caught():
    # The check can fail: a path whose alpha broadcasts its time to a larger shape breaks "*t".
    class Broken:
        def alpha(self, t):
            return jnp.broadcast_to(t, (2,) + jnp.shape(t))

    with pytest.raises(TypeCheckError):
        _method_of_one_time("alpha")(Broken(), jnp.ones(3))


def test_conversions_keep_the_shape_of_x():
    path = PATHS["vp_cosine"]
    x = jax.random.normal(jax.random.key(1), (4, 2, 3))
    t = jnp.linspace(0.2, 0.8, 4)
    to_pair, from_pair, convert = map(checked, (predictions.to_x0_eps, predictions.from_x0_eps, predictions.convert))
    for src in predictions.KINDS:
        x0, eps = to_pair(x, src, x, t, path)
        assert from_pair(x0, eps, src, x, t, path).shape == x.shape
        assert convert(x, src, "x0", x, 0.5, path).shape == x.shape
    with pytest.raises(TypeCheckError, match="pred"):  # a (B, 1) prediction for (B, 2, 3) data
        convert(x[:, :1, :1], "eps", "x0", x, t, path)
    pre = checked(predictions.edm_preconditioning)(t, path)
    assert pre.c_skip.shape == t.shape


def test_samplers_grids_and_losses_take_a_batch_and_return_one_loss_per_example():
    path = PATHS["vp_cosine"]
    model = mixture_2d(jnp.float32).as_model(path, "eps")
    key = jax.random.key(2)
    grid = checked(samplers.karras_grid)(path, 4)
    x_T = path.prior_sample(key, (8, 2))
    sample = checked(samplers.sample)
    assert sample(samplers.DDIM(), model, x_T, grid).shape == x_T.shape
    levels = {"low": x_T[:, :1], "high": x_T}  # a pytree state (jdiff.nested): one batch axis for all
    assert jax.tree.map(jnp.shape, sample(samplers.Euler(), _pytree_model(path), levels, grid)) == {
        "low": (8, 1),
        "high": (8, 2),
    }
    with pytest.raises(TypeCheckError, match="grid"):  # a 2-D grid
        sample(samplers.DDIM(), model, x_T, grid[None])
    with pytest.raises(TypeCheckError, match="x_T"):  # levels with different batch sizes
        sample(samplers.Euler(), _pytree_model(path), {"low": x_T[:4, :1], "high": x_T}, grid)
    x0 = mixture_2d(jnp.float32).sample(key, 8)
    for loss in (losses.dsm_loss, losses.ddpm_loss, losses.edm_loss, losses.cfm_loss, losses.vdm_loss):
        assert checked(loss)(model, key, x0).shape == (8,), loss.__name__
    with pytest.raises(TypeCheckError, match="x0"):  # no batch axis
        checked(losses.dsm_loss)(model, key, x0[0, 0])


def _pytree_model(path):
    """A zero eps-prediction on a pytree state (what a nested network returns: one output per level)."""
    return Model(lambda x, t, cond=None: jax.tree.map(jnp.zeros_like, x), path, "eps")
