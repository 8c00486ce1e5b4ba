"""The autoencoder objective: reconstruction, KL, perceptual term, hinge GAN with the adaptive weight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdiff import latent
from jdiff.models import AutoencoderKL


def _pair(seed=0, disc=True):
    rngs = nnx.Rngs(seed)
    ae = AutoencoderKL(
        1,
        block_out_channels=(4, 4),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=2,
        mid_block_add_attention=False,
        rngs=rngs,
    )
    d = latent.PatchDiscriminator(1, ch=4, num_layers=1, rngs=rngs) if disc else None
    return latent.AutoencoderGAN(ae, d)


X = jax.random.uniform(jax.random.PRNGKey(9), (2, 8, 8, 1), minval=-1.0, maxval=1.0)


def test_reconstruction_and_kl_terms():
    pair = _pair(disc=False)
    ae = pair.autoencoder
    kw = {"sample_posterior": False, "update_norm": False}
    t = nnx.jit(
        lambda m, x: latent.autoencoder_loss_terms(
            m, jax.random.PRNGKey(0), x, l1_weight=0.0, l2_weight=1.0, kl_weight=0.25, **kw
        )
    )(pair, X)
    rec, post = nnx.jit(lambda m, x: m(x))(ae, X)  # the module's own decode of the posterior mean
    np.testing.assert_allclose(t.reconstruction, jnp.sum((X - rec) ** 2, axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(t.kl, post.kl(), rtol=1e-6)
    np.testing.assert_allclose(t.loss, t.reconstruction + 0.25 * t.kl, rtol=1e-6)
    assert np.all(np.asarray(t.generator) == 0) and float(t.adaptive_weight) == 0.0
    l1 = nnx.jit(lambda m, x: latent.autoencoder_loss(m.autoencoder, jax.random.PRNGKey(0), x, kl_weight=0.0, **kw))(
        pair, X
    )
    np.testing.assert_allclose(l1, jnp.sum(jnp.abs(X - rec), axis=(1, 2, 3)), rtol=1e-5)


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer():
    pair = _pair(1)
    key = jax.random.PRNGKey(2)

    @nnx.jit
    def run(pair):
        t = latent.autoencoder_loss_terms(pair, key, X, disc_weight=0.5, update_norm=False)

        # Independently: full parameter gradients of the batch-mean reconstruction and generator losses.
        def mean_term(ae, which):
            x_rec = ae.decode(ae.encode(X).sample(key))
            if which == "rec":
                return jnp.mean(jnp.sum(jnp.abs(X - x_rec), axis=(1, 2, 3)))
            return -jnp.mean(pair.discriminator(x_rec))

        g_rec = nnx.grad(lambda ae: mean_term(ae, "rec"))(pair.autoencoder).decoder.conv_out.kernel[...]
        g_gen = nnx.grad(lambda ae: mean_term(ae, "gen"))(pair.autoencoder).decoder.conv_out.kernel[...]
        return t.adaptive_weight, jnp.linalg.norm(g_rec), jnp.linalg.norm(g_gen)

    lam, n_rec, n_gen = run(pair)
    np.testing.assert_allclose(float(lam), 0.5 * float(n_rec) / (float(n_gen) + 1e-4), rtol=1e-4)
    # A constant discriminator gives the generator no gradient: the weight hits its clip (1e4 * 0.5).
    const = latent.AutoencoderGAN(pair.autoencoder, lambda x: jnp.full(x.shape[:3], 0.3))
    t = nnx.jit(lambda m: latent.autoencoder_loss_terms(m, key, X, disc_weight=0.5, update_norm=False))(const)
    assert float(t.adaptive_weight) == pytest.approx(5e3)
    np.testing.assert_allclose(t.generator, -0.3, rtol=1e-6)
    np.testing.assert_allclose(t.discriminator, 0.5 * (0.7 + 1.3), rtol=1e-6)  # hinge at logits 0.3


def _flat_params(tree):
    return [(p, np.asarray(v[...])) for p, v in nnx.to_flat_state(nnx.state(tree, nnx.Param))]


def test_each_network_gets_the_gradient_of_its_own_objective():
    pair = _pair(3)
    key = jax.random.PRNGKey(4)

    def loss(m, step=None):
        return jnp.mean(latent.autoencoder_loss(m, key, X, update_norm=False, disc_start=5, step=step))

    @nnx.jit
    def run(pair):
        grads = nnx.grad(loss)(pair)
        lam = latent.autoencoder_loss_terms(pair, key, X, update_norm=False).adaptive_weight

        def disc_only(d):
            x_rec = pair.autoencoder.decode(pair.autoencoder.encode(X).sample(key))
            return jnp.mean(latent.hinge_discriminator_loss(d(X), d(x_rec)))

        def ae_only(ae):
            t = latent.autoencoder_loss_terms(ae, key, X, update_norm=False)
            x_rec = ae.decode(ae.encode(X).sample(key))
            return jnp.mean(t.loss - lam * jnp.mean(pair.discriminator(x_rec), axis=(1, 2)))

        t_early = latent.autoencoder_loss_terms(pair, key, X, update_norm=False, disc_start=5, step=jnp.asarray(4))
        return (
            nnx.state(grads.discriminator),
            nnx.state(nnx.grad(disc_only)(pair.discriminator)),
            nnx.state(grads.autoencoder),
            nnx.state(nnx.grad(ae_only)(pair.autoencoder)),
            t_early,
        )

    d_got, d_want, a_got, a_want, t = run(pair)
    for got, want in ((d_got, d_want), (a_got, a_want)):
        for (p, a), (_, b) in zip(_flat_params(got), _flat_params(want)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6, err_msg=str(p))
    # Before disc_start both GAN terms are off (so the discriminator gets no gradient): the plain VAE loss.
    np.testing.assert_allclose(t.loss, t.reconstruction + 1e-6 * t.kl, rtol=1e-6)


def test_perceptual_term_and_running_norm():
    # feature_distance with identity features on flat vectors: sum of squared differences of unit vectors.
    fd = latent.feature_distance(lambda x: x.reshape(x.shape[0], -1))
    a, b = jnp.array([[3.0, 4.0]]), jnp.array([[0.0, 2.0]])
    np.testing.assert_allclose(fd(a, b), (0.6 - 0.0) ** 2 + (0.8 - 1.0) ** 2, rtol=1e-6)
    pair = _pair(disc=False)

    @nnx.jit
    def run(pair):
        with_p = latent.autoencoder_loss_terms(
            pair, jax.random.PRNGKey(0), X, perceptual_fn=fd, perceptual_weight=2.0, update_norm=False
        )
        without = latent.autoencoder_loss_terms(pair, jax.random.PRNGKey(0), X, update_norm=False)
        post = pair.autoencoder.encode(X)
        x_rec = pair.autoencoder.decode(post.sample(jax.random.PRNGKey(0)))
        return with_p.reconstruction - without.reconstruction, 2.0 * fd(X, x_rec), post.mean

    diff, want, mean = run(pair)
    np.testing.assert_allclose(diff, want, rtol=1e-4)
    with pytest.raises(ValueError, match="perceptual_fn"):
        latent.autoencoder_loss(pair, jax.random.PRNGKey(0), X, perceptual_weight=1.0)
    with pytest.raises(ValueError, match="kl_weight"):
        latent.autoencoder_loss(pair, jax.random.PRNGKey(0), X, kl_weight=-1.0)
    # The loss folds the batch's posterior means into the running normalization (first batch: exact).
    nnx.jit(lambda m: latent.autoencoder_loss(m, jax.random.PRNGKey(0), X, shift=True))(pair)
    assert float(pair.autoencoder.moments[...][0]) == 1.0
    assert float(pair.autoencoder.scale[...]) == pytest.approx(1.0 / float(mean.std()), rel=1e-4)
    assert float(pair.autoencoder.shift[...]) == pytest.approx(float(mean.mean()), rel=1e-4, abs=1e-6)


def test_patch_discriminator_shapes():
    d = latent.PatchDiscriminator(1, ch=4, num_layers=2, rngs=nnx.Rngs(0))
    assert jax.eval_shape(d, jnp.zeros((2, 28, 28, 1))).shape == (2, 5, 5)  # 28 -> 14 -> 7 -> 6 -> 5
    d = latent.PatchDiscriminator(3, ch=4, num_layers=3, rngs=nnx.Rngs(0))
    assert jax.eval_shape(d, jnp.zeros((1, 32, 32, 3))).shape == (1, 2, 2)
