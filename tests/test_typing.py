"""The jaxtyping shape annotations of the public functions hold, checked at test time as diffrax's
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
from helpers import all_paths
from jaxtyping import TypeCheckError, jaxtyped

from jdiff import predictions
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
    for name in ONE_TIME_METHODS:
        fn = _method_of_one_time(name)
        for t in times:
            assert fn(path, t).shape == jnp.shape(t), name
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
