"""jdiff.models.AutoencoderKL: shapes of the SD VAE layout, the posterior, the latent normalization."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdiff.models import AutoencoderKL
from jdiff.models.autoencoder import DiagonalGaussian

TINY = {"block_out_channels": (4, 8, 8), "layers_per_block": 1, "latent_channels": 3, "norm_num_groups": 2}


def _tiny(**kw):
    return AutoencoderKL(1, **{**TINY, **kw}, rngs=nnx.Rngs(0))


@jax.jit
def _roundtrip(graphdef, state, x):
    ae = nnx.merge(graphdef, state)
    post = ae.encode(x)
    return post.mean, post.logvar, ae.decode(post.mode()), ae.to_latent(x), ae.from_latent(ae.to_latent(x))


def test_shapes_follow_the_downsampling_factor():
    # 3 levels: factor 4; the SD VAE's pad-then-stride-2 downsampling maps 28 -> 14 -> 7 and 9 -> 4 -> 2.
    ae = _tiny()
    assert ae.downsampling_factor == 4
    for hw, latent in (((28, 28), (7, 7)), ((9, 12), (2, 3))):
        x = jnp.zeros((2, *hw, 1))
        mean, logvar, rec, z, _ = _roundtrip(*nnx.split(ae), x)
        assert mean.shape == logvar.shape == z.shape == (2, *latent, 3) == (2, *ae.latent_shape((*hw, 1)))
        if hw[0] % 4 == 0 and hw[1] % 4 == 0:
            assert rec.shape == x.shape  # the decoder upsamples by the same factor


def test_layout_counts_and_optional_layers():
    ae = _tiny()
    assert len(ae.encoder.down_blocks) == 3 and len(ae.decoder.up_blocks) == 3
    assert all(len(b.resnets) == 1 for b in ae.encoder.down_blocks)  # layers_per_block
    assert all(len(b.resnets) == 2 for b in ae.decoder.up_blocks)  # layers_per_block + 1
    assert ae.encoder.down_blocks[-1].downsamplers is None and ae.decoder.up_blocks[-1].upsamplers is None
    assert ae.encoder.down_blocks[1].resnets[0].conv_shortcut is not None  # 4 -> 8 channels
    assert ae.encoder.conv_out.kernel.shape == (3, 3, 8, 6)  # mean and log-variance
    assert ae.quant_conv.kernel.shape == (1, 1, 6, 6) and ae.post_quant_conv.kernel.shape == (1, 1, 3, 3)
    bare = _tiny(use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)
    assert bare.quant_conv is None and bare.post_quant_conv is None and bare.encoder.mid_block.attentions is None


def test_posterior_kl_sample_and_clipping():
    mean = jnp.array([[0.3, -1.2], [2.0, 0.0]])
    logvar = jnp.array([[-0.5, 0.4], [-40.0, 25.0]])
    post = DiagonalGaussian(mean, logvar)
    np.testing.assert_allclose(post.logvar[1], [-30.0, 20.0])  # diffusers' clamp
    # KL(N(m, v) || N(0, 1)) per coordinate = (m^2 + v - 1 - log v) / 2, against numerical quadrature
    # of the integral of q log(q / p) for the first example.
    z = jnp.linspace(-12.0, 12.0, 200_001)
    kl_quad = 0.0
    for m, lv in zip(mean[0], logvar[0]):
        q = jax.scipy.stats.norm.pdf(z, m, jnp.exp(0.5 * lv))
        kl_quad += jnp.trapezoid(q * (jnp.log(q) - jax.scipy.stats.norm.logpdf(z)), z)
    np.testing.assert_allclose(post.kl()[0], kl_quad, rtol=1e-6)
    # Samples: mean and std of 20000 draws of the first example within 5 standard errors.
    draws = jax.vmap(lambda k: DiagonalGaussian(mean[:1], logvar[:1]).sample(k))(
        jax.random.split(jax.random.PRNGKey(0), 20_000)
    )[:, 0]
    std = np.exp(0.5 * np.asarray(logvar[0]))
    assert np.all(np.abs(draws.mean(0) - mean[0]) < 5 * std / math.sqrt(20_000))
    assert np.all(np.abs(draws.std(0) - std) < 5 * std / math.sqrt(2 * 20_000))
    np.testing.assert_array_equal(post.mode(), mean)


def test_latent_normalization_round_trip():
    ae = _tiny(scaling_factor=0.5, shift_factor=0.25)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1), minval=-1, maxval=1)
    mean, _, rec, z, rec_z = _roundtrip(*nnx.split(ae), x)
    np.testing.assert_allclose(z, (mean - 0.25) * 0.5, rtol=1e-6)  # z_model = (z - shift) * scale
    np.testing.assert_allclose(rec_z, rec, atol=1e-5)  # from_latent undoes it before decoding
    _, _, rest = nnx.split(ae, nnx.Param, ...)
    assert {".".join(map(str, p)) for p, _ in nnx.to_flat_state(rest)} == {"scale", "shift", "moments"}


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="norm_num_groups"):
        _tiny(block_out_channels=(6, 8), norm_num_groups=4)  # 4 groups do not divide 6 channels
    with pytest.raises(ValueError, match="block_out_channels"):
        _tiny(block_out_channels=())
    with pytest.raises(ValueError, match="latent_channels"):
        _tiny(latent_channels=0)
    with pytest.raises(ValueError, match="scaling_factor"):
        _tiny(scaling_factor=0.0)
    ae = _tiny()
    with pytest.raises(ValueError, match=r"`x`.*\(B, H, W, 1\)"):
        ae.encode(jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"`z`.*\(B, h, w, 3\)"):
        ae.decode(jnp.zeros((2, 2, 2, 4)))
