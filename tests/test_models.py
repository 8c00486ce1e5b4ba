"""jdiff.models: shapes and dtypes for every model x kind, conditioning reaches the output,
adaLN-Zero DiT starts at exactly zero, no recompilation for a new batch, dropout switching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import _names
from jdiff import models
from jdiff.predictions import KINDS

try:
    from helpers import count_compiles
except ImportError:  # pragma: no cover
    from tests.helpers import count_compiles

B = 3


def _random_model(build, seed=0):
    """A model of `build`'s structure with N(0, 0.3^2) parameters, materialized on the host from
    its abstract shape: compiling the real initializers of a U-Net costs tens of seconds on CPU,
    and these tests need only some parameters in which every layer is active."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # RNG streams (dropout)
            return jax.random.key(seed) if leaf.shape == () else jax.random.split(jax.random.key(seed), leaf.shape)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)  # RNG counters

    return nnx.merge(graphdef, jax.tree.map(fill, state))


def _make(build, **kw):
    """Build under one jit: eager construction would compile every initializer op separately."""
    return nnx.jit(lambda: build(**kw))()


@nnx.jit
def _apply(model, x, t, c):
    return model(x, t, c)


def _builders():
    return {
        "mlp": (lambda **kw: models.MLP(2, hidden=16, depth=1, rngs=nnx.Rngs(0), **kw), (2,)),
        "unet": (
            lambda **kw: models.UNet(
                8,
                1,
                ch=16,
                ch_mult=(1, 2),
                num_res_blocks=1,
                attn_resolutions=(4,),
                dropout=0.0,
                rngs=nnx.Rngs(0),
                **kw,
            ),
            (8, 8, 1),
        ),
        "dit": (
            lambda **kw: models.DiT(8, 1, patch_size=2, hidden=32, depth=1, num_heads=2, rngs=nnx.Rngs(0), **kw),
            (8, 8, 1),
        ),
    }


BUILDERS = _builders()


@functools.cache
def _random(name):
    """One class-conditional model with random parameters per architecture, shared by the tests
    so that the forward pass compiles once per architecture (the jit cache keys on structure)."""
    return _random_model(lambda: BUILDERS[name][0](num_classes=4))


def _inputs(name, seed, t=0.5, labels=(0, 3, 4)):
    """x (B, ...) float32, t (B,) float32, labels (B,) int: the one input signature every test uses."""
    x = jax.random.normal(jax.random.PRNGKey(seed), (B, *BUILDERS[name][1]), jnp.float32)
    return x, jnp.full((B,), t, jnp.float32), jnp.array(labels)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_shapes_dtypes_every_kind(name):
    build, _ = BUILDERS[name]
    x, t, c = _inputs(name, 1)
    for kind in KINDS:  # abstract evaluation: the shapes and dtypes without compiling
        model = nnx.eval_shape(lambda k=kind: build(kind=k, num_classes=4))
        assert model.kind == kind and model.num_classes == 4
        y = nnx.eval_shape(lambda m: m(x, t, c), model)
        assert y.shape == x.shape and y.dtype == jnp.float32
    # A scalar time (samplers) and cond None (the null class) give the same signature.
    assert nnx.eval_shape(lambda m: m(x, 0.5, None), model) == y
    for dtype in (jnp.float64, jnp.bfloat16):  # the output has the input's dtype
        assert nnx.eval_shape(lambda m, d=dtype: m(x.astype(d), t, c), model).dtype == dtype
    y = _apply(_random(name), x, t, c)  # 4 = the null class
    assert y.shape == x.shape and y.dtype == jnp.float32 and jnp.all(jnp.isfinite(y))
    with pytest.raises(ValueError, match="kind"):
        build(kind="noise")
    with pytest.raises(ValueError, match="`t`"):
        nnx.eval_shape(lambda m: m(x, jnp.zeros((B + 1,)), c), model)
    with pytest.raises(ValueError, match="`cond`"):
        nnx.eval_shape(lambda m: m(x, t, jnp.zeros((B + 1,), jnp.int32)), model)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_conditioning_reaches_output(name):
    model = _random(name)
    x, t3, c = _inputs(name, 2, 0.3, (1, 1, 1))
    y = np.asarray(_apply(model, x, t3, c))
    # A different class, a different time, or the null class (cond None -> index 4) each
    # change every example's output.
    others = [
        _apply(model, x, t3, jnp.array([2, 2, 2])),
        _apply(model, x, t3 + 0.4, c),
        _apply(model, x, t3, jnp.array([4, 4, 4])),
    ]
    for other in others:
        diff = np.abs(np.asarray(other) - y).reshape(B, -1).max(axis=1)
        assert np.all(diff > 1e-3), diff
    # Per-example conditioning: changing example 0's class changes example 0 only.
    y2 = np.asarray(_apply(model, x, t3, jnp.array([2, 1, 1])))
    assert np.abs(y2[0] - y[0]).max() > 1e-3
    np.testing.assert_allclose(y2[1:], y[1:], rtol=1e-5, atol=1e-6)
    uncond = nnx.eval_shape(lambda: BUILDERS[name][0]())
    with pytest.raises(ValueError, match="unconditional"):
        nnx.eval_shape(lambda m: m(x, t3, c), uncond)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_jit_does_not_recompile_for_new_batch(name):
    model = _random(name)
    x1, t1, c1 = _inputs(name, 3, 0.2, (0, 1, 2))
    x2, t2, c2 = _inputs(name, 4, 0.7, (3, 4, 0))
    y1 = _apply(model, x1, t1, c1)
    with count_compiles() as n:  # new data, times and labels of the same shapes
        y2 = _apply(model, x2, t2, c2).block_until_ready()
    assert n() == 0
    assert np.abs(np.asarray(y2) - np.asarray(y1)).max() > 0  # it really ran on the new batch


def test_get_model_lists_names():
    with pytest.raises(ValueError, match="mlp, unet, dit"):
        _names.get_model("resnet")
    m = nnx.eval_shape(lambda: _names.get_model("mlp", in_features=2, hidden=8, depth=1, rngs=nnx.Rngs(0)))
    assert m.kind == "velocity"


def test_sinusoidal_embedding_matches_ddpm_formula():
    t = jnp.array([0.0, 0.25, 1.0])
    emb = models.sinusoidal_embedding(t, 6)
    freqs = 10_000.0 ** (-jnp.arange(3) / 3)
    args = 1000.0 * t[:, None] * freqs[None, :]
    np.testing.assert_allclose(emb, jnp.concatenate([jnp.cos(args), jnp.sin(args)], 1), rtol=1e-12)


def test_time_scale_rescales_the_time_input():
    """time_scale s makes the network a function of s t: a net with s = 1 at time c equals the
    same parameters with s = 1000 at time c / 1000 (EDM's c_noise = -lambda/8 is fed with s = 1)."""
    build = lambda s: models.MLP(2, hidden=16, depth=1, time_scale=s, rngs=nnx.Rngs(0))
    net1 = _random_model(lambda: build(1.0))
    net1000 = nnx.merge(nnx.graphdef(_random_model(lambda: build(1000.0))), nnx.state(net1))
    x = jax.random.normal(jax.random.PRNGKey(7), (B, 2), jnp.float64)
    c = jnp.array([-2.5, 0.1, 3.0])  # c_noise range of VE sigma in [0.002, 80]
    y1 = jax.jit(lambda x, c: net1(x, c))(x, c)
    np.testing.assert_allclose(jax.jit(lambda x, c: net1000(x, c))(x, c / 1000), y1, rtol=1e-9, atol=1e-12)
    assert np.abs(np.asarray(jax.jit(lambda x, c: net1000(x, c))(x, c)) - np.asarray(y1)).max() > 1e-3


def test_fourier_frequencies_are_not_params():
    m = nnx.eval_shape(lambda: models.MLP(2, hidden=8, depth=1, time_embedding="fourier", rngs=nnx.Rngs(0)))
    params = nnx.state(m, nnx.Param)
    assert not any("fourier" in str(p) for p, _ in nnx.to_flat_state(params))
    assert any("fourier" in str(p) for p, _ in nnx.to_flat_state(nnx.state(m)))


def test_dropout_switches_with_train_eval():
    m = _random_model(lambda: models.MLP(2, hidden=16, depth=2, dropout=0.5, rngs=nnx.Rngs(0)))
    x, t = jnp.ones((4, 2), jnp.float32), jnp.full((4,), 0.5, jnp.float32)
    m.eval()
    np.testing.assert_array_equal(_apply(m, x, t, None), _apply(m, x, t, None))
    m.train()
    assert np.abs(np.asarray(_apply(m, x, t, None)) - np.asarray(_apply(m, x, t, None))).max() > 1e-4


@pytest.mark.parametrize(
    "name,size,channels,ch_mult,attn",
    [
        ("unet", 28, 1, (1, 2, 2, 2), (7,)),
        ("unet", 32, 3, (1, 2, 2, 2), (16,)),
        ("dit", 28, 1, None, None),
        ("dit", 32, 3, None, None),
    ],
)
def test_image_sizes(name, size, channels, ch_mult, attn):
    """28x28x1 (odd sizes 7 -> 4 -> 7 on the way up) and 32x32x3, checked abstractly."""
    if name == "unet":
        build = lambda: models.UNet(
            size,
            channels,
            ch=16,
            ch_mult=ch_mult,
            num_res_blocks=1,
            attn_resolutions=attn,
            num_classes=10,
            rngs=nnx.Rngs(0),
        )
    else:
        build = lambda: models.DiT(
            size, channels, patch_size=4, hidden=32, depth=1, num_heads=2, num_classes=10, rngs=nnx.Rngs(0)
        )
    model = nnx.eval_shape(build)
    x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    y = nnx.eval_shape(lambda m, x: m(x, 0.5, jnp.array([1, 10])), model, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    if name == "unet":  # attention exactly at the requested resolution, down and up
        attn_blocks = [b for b in list(model.down) + list(model.up) if isinstance(b, models.unet.AttnBlock)]
        assert len(attn_blocks) == 1 + 2  # at one level: after its 1 res block down, 2 up
    with pytest.raises(ValueError, match="`x`"):
        nnx.eval_shape(lambda m: m(jnp.zeros((2, size + 1, size, channels), jnp.float32), 0.5), model)


def test_dit_adaln_zero_fresh_output_is_zero_and_only_final_layer_learns_first():
    model = _make(BUILDERS["dit"][0], num_classes=4)  # the real initialization
    x = jax.random.normal(jax.random.PRNGKey(4), (B, *BUILDERS["dit"][1]), jnp.float32)
    y = _apply(model, x, jnp.array([0.01, 0.5, 0.99], jnp.float32), jnp.array([0, 2, 4]))
    np.testing.assert_array_equal(y, np.zeros_like(y))  # exactly zero, not merely small

    @nnx.jit
    def grads(model):
        return nnx.grad(lambda m: jnp.sum((m(x, jnp.full((B,), 0.5, jnp.float32), jnp.array([0, 1, 2])) - x) ** 2))(
            model
        )

    flat = {"/".join(map(str, p)): np.abs(np.asarray(v)).max() for p, v in nnx.to_flat_state(grads(model))}
    # With zero output weights, gradient reaches only the output projection at the first step.
    final = {k: v for k, v in flat.items() if k.startswith("final/linear")}
    assert final and all(v > 1e-3 for v in final.values()), final
    assert all(v == 0 for k, v in flat.items() if k not in final)


def test_bfloat16_compute_keeps_float32_params():
    m32 = _random("mlp")
    m16 = _random_model(lambda: BUILDERS["mlp"][0](num_classes=4, dtype=jnp.bfloat16))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    x, t, c = _inputs("mlp", 6)
    y32, y16 = np.asarray(_apply(m32, x, t, c)), np.asarray(_apply(m16, x, t, c))
    assert y16.dtype == np.float32  # cast back to the input dtype
    # bf16 has an 8-bit mantissa: relative error ~ 2^-8 per op, a few percent through the net.
    rel = np.abs(y16 - y32).max() / np.abs(y32).max()
    assert 0 < rel < 0.05, rel


@pytest.mark.slow  # ~10 s: tracing 326 initializers is quadratic in flax's RNG bookkeeping
def test_unet_matches_ddpm_cifar10_parameter_count():
    """The DDPM CIFAR-10 architecture (ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention
    at 16) has 35.7M parameters (Ho et al. 2020, Sec. 4); counted abstractly. The default
    suite checks the same construction at small width (test_image_sizes)."""
    model = nnx.eval_shape(
        lambda: models.UNet(
            32, 3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), rngs=nnx.Rngs(0)
        )
    )
    count = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert round(count / 1e5) == 357, count
