"""jdiff.models: shapes and dtypes for every model x kind, conditioning reaches the output,
adaLN-Zero DiT starts at exactly zero, no recompilation for a new batch, dropout switching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdiff import models
from jdiff.predictions import KINDS

try:
    from helpers import count_compiles
except ImportError:  # pragma: no cover
    from tests.helpers import count_compiles

B = 3


@nnx.jit
def _randomize(model):
    """Set every parameter to N(0, 0.3^2) in place: zero-initialized layers would hide whether
    conditioning reaches the output, since a fresh model's last layer outputs zero."""
    leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    nnx.update(model, jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, p.shape, p.dtype)
                                                   for k, p in zip(keys, leaves)]))
    return model


def _make(build, **kw):
    """Build under one jit: eager construction would compile every initializer op separately."""
    return nnx.jit(lambda: build(**kw))()


@nnx.jit
def _apply(model, x, t, c):
    return model(x, t, c)


def _builders():
    return {
        "mlp": (lambda **kw: models.MLP(2, hidden=16, depth=1, rngs=nnx.Rngs(0), **kw), (2,)),
    }


BUILDERS = _builders()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_shapes_dtypes_every_kind(name):
    build, shape = BUILDERS[name]
    x = jax.random.normal(jax.random.PRNGKey(1), (B, *shape), jnp.float32)
    for kind in KINDS:  # abstract evaluation: the shapes and dtypes without compiling
        model = nnx.eval_shape(lambda: build(kind=kind, num_classes=4))
        assert model.kind == kind and model.num_classes == 4
        y = nnx.eval_shape(lambda m: m(x, 0.5, jnp.array([0, 3, 4])), model)  # 4 = null class
        assert y.shape == x.shape and y.dtype == jnp.float32
    model = _make(build, kind=kind, num_classes=4)
    y = _apply(model, x, 0.5, jnp.array([0, 3, 4]))
    assert y.shape == x.shape and y.dtype == jnp.float32 and jnp.all(jnp.isfinite(y))
    y = _apply(model, x.astype(jnp.float64), jnp.array([0.1, 0.5, 0.9]), None)  # per-example times
    assert y.shape == x.shape and y.dtype == jnp.float64
    y = nnx.eval_shape(lambda m: m(x.astype(jnp.bfloat16), 0.5, None), model)
    assert y.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="kind"):
        build(kind="noise")
    with pytest.raises(ValueError, match="`t`"):
        model(x, jnp.zeros((B + 1,)))
    with pytest.raises(ValueError, match="`cond`"):
        model(x, 0.5, jnp.zeros((B + 1,), jnp.int32))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_conditioning_reaches_output(name):
    build, shape = BUILDERS[name]
    model = _randomize(_make(build, num_classes=4))
    x = jax.random.normal(jax.random.PRNGKey(2), (B, *shape), jnp.float32)
    t3, t7 = jnp.full((B,), 0.3, jnp.float32), jnp.full((B,), 0.7, jnp.float32)
    y = np.asarray(_apply(model, x, t3, jnp.array([1, 1, 1])))
    # A different class, a different time, or the null class (cond None -> index 4) each
    # change every example's output.
    others = [_apply(model, x, t3, jnp.array([2, 2, 2])), _apply(model, x, t7, jnp.array([1, 1, 1])),
              _apply(model, x, t3, jnp.array([4, 4, 4]))]
    for other in others:
        diff = np.abs(np.asarray(other) - y).reshape(B, -1).max(axis=1)
        assert np.all(diff > 1e-3), diff
    np.testing.assert_array_equal(nnx.eval_shape(lambda m: m(x, 0.3, None), model).shape, x.shape)
    # Per-example conditioning: changing example 0's class changes example 0 only.
    y2 = np.asarray(_apply(model, x, t3, jnp.array([2, 1, 1])))
    assert np.abs(y2[0] - y[0]).max() > 1e-3
    np.testing.assert_allclose(y2[1:], y[1:], rtol=1e-5, atol=1e-6)
    uncond = nnx.eval_shape(lambda: build())
    with pytest.raises(ValueError, match="unconditional"):
        nnx.eval_shape(lambda m: m(x, 0.3, jnp.array([1, 1, 1])), uncond)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_jit_does_not_recompile_for_new_batch(name):
    build, shape = BUILDERS[name]
    model = _make(build, num_classes=4)
    x1, x2 = jax.random.normal(jax.random.PRNGKey(3), (2, B, *shape), jnp.float32)
    t1, t2 = jnp.full((B,), 0.2, jnp.float32), jnp.full((B,), 0.7, jnp.float32)
    c1, c2 = jnp.array([0, 1, 2]), jnp.array([3, 4, 0])
    y1 = _apply(model, x1, t1, c1)
    with count_compiles() as n:  # new data, times and labels of the same shapes
        y2 = _apply(model, x2, t2, c2).block_until_ready()
    assert n() == 0
    assert np.abs(np.asarray(y2) - np.asarray(y1)).max() > 0  # it really ran on the new batch


def test_get_model_lists_names():
    with pytest.raises(ValueError, match="mlp"):
        models.get_model("resnet")
    m = nnx.eval_shape(lambda: models.get_model("mlp", in_features=2, hidden=8, depth=1, rngs=nnx.Rngs(0)))
    assert m.kind == "velocity"


def test_sinusoidal_embedding_matches_ddpm_formula():
    t = jnp.array([0.0, 0.25, 1.0])
    emb = models.sinusoidal_embedding(t, 6)
    freqs = 10_000.0 ** (-jnp.arange(3) / 3)
    args = 1000.0 * t[:, None] * freqs[None, :]
    np.testing.assert_allclose(emb, jnp.concatenate([jnp.cos(args), jnp.sin(args)], 1), rtol=1e-12)


def test_fourier_frequencies_are_not_params():
    m = nnx.eval_shape(lambda: models.MLP(2, hidden=8, depth=1, time_embedding="fourier", rngs=nnx.Rngs(0)))
    params = nnx.state(m, nnx.Param)
    assert not any("fourier" in str(p) for p, _ in nnx.to_flat_state(params))
    assert any("fourier" in str(p) for p, _ in nnx.to_flat_state(nnx.state(m)))


def test_dropout_switches_with_train_eval():
    m = _randomize(_make(lambda: models.MLP(2, hidden=16, depth=2, dropout=0.5, rngs=nnx.Rngs(0))))
    x, t = jnp.ones((4, 2), jnp.float32), jnp.full((4,), 0.5, jnp.float32)
    m.eval()
    np.testing.assert_array_equal(_apply(m, x, t, None), _apply(m, x, t, None))
    m.train()
    assert np.abs(np.asarray(_apply(m, x, t, None)) - np.asarray(_apply(m, x, t, None))).max() > 1e-4
