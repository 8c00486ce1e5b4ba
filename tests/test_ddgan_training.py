"""DDGAN training with the common trainer (jdiff.training): two optimizers in one jitted step, the
players' losses as metrics, finiteness, an exact checkpoint resume, and that the generator
learns from its discriminator (a constant discriminator teaches nothing: the control)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jdiff
from jdiff import adversarial, checkpoint, models, training

PATH = jdiff.VPLinear()
LATENT = 4


def _pair(seed=0):
    return models.DDGANMLP(2, latent_dim=LATENT, hidden=32, depth=1, rngs=nnx.Rngs(seed))


def _loss_fn(num_steps):
    grid = adversarial.ddgan_grid(PATH, num_steps)

    def loss_fn(net, batch, key):
        out = adversarial.ddgan_loss(
            adversarial.DDGAN(net.generator, PATH, grid, LATENT), net.discriminator, key, batch, r1_gamma=0.05
        )
        return out.loss, {"d_loss": out.d_loss, "g_loss": out.g_loss, "d_real": out.d_real, "d_fake": out.d_fake}

    return loss_fn


def _tx(lr=2e-3):
    return adversarial.two_player_optimizer(optax.adam(lr, b1=0.5, b2=0.9), optax.adam(lr, b1=0.5, b2=0.9))


def _batch(i, n=64, mean=(0.0, 0.0), std=1.0):
    z = jax.random.normal(jax.random.PRNGKey(100 + i), (n, 2), jnp.float32)
    return jnp.asarray(mean, jnp.float32)[None] + std * z


def _host(tree):
    return jax.tree.map(
        lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x), tree
    )


def test_two_player_step_is_finite_and_resumes_exactly(tmp_path):
    """K steps, a checkpoint, a fresh process state restored from it, K more steps: bit-identical to
    2K uninterrupted steps, for both networks, both optimizer states and the EMA. Every step is
    finite and reports both players' losses."""
    k = 3
    tx = _tx()
    step_fn = None

    def run(state, start, stop):
        for i in range(start, stop):
            state, m = step_fn(state, _batch(i))
            assert bool(m["finite"]) and all(np.isfinite(float(m[n])) for n in ("loss", "d_loss", "g_loss"))
            np.testing.assert_allclose(m["loss"], m["d_loss"] + m["g_loss"], rtol=1e-5)
        return state

    graphdef, state = training.init_train_state(_pair(), tx, jax.random.PRNGKey(0))
    step_fn = training.make_train_step(_loss_fn(2), graphdef, tx, ema=0.9, grad_clip_norm=None)
    straight = _host(run(state, 0, 2 * k))

    _, state = training.init_train_state(_pair(), tx, jax.random.PRNGKey(0))
    state = run(state, 0, k)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), save_every=1)
    ckpt.save(k, state, force=True)
    ckpt.wait()
    _, fresh = training.init_train_state(_pair(seed=7), tx, jax.random.PRNGKey(0))  # other weights
    resumed = _host(run(ckpt.restore(fresh), k, 2 * k))
    ckpt.close()
    assert int(resumed.step) == 2 * k
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    # both players moved, each with its own optimizer state
    _, init = training.init_train_state(_pair(), tx, jax.random.PRNGKey(0))
    for player in adversarial.PLAYERS:
        moved = [
            np.max(np.abs(a - np.asarray(b)))
            for a, b in zip(jax.tree.leaves(straight.params[player]), jax.tree.leaves(init.params[player]))
        ]
        assert max(moved) > 1e-4, player


class _ConstantDiscriminator(nnx.Module):
    """A broken discriminator: the same logit whatever its input (one trainable bias)."""

    def __init__(self):
        self.bias = nnx.Param(jnp.zeros(()))

    def __call__(self, x_prev, x_t, t, cond=None):
        return jnp.broadcast_to(self.bias[...], x_t.shape[:1]).astype(x_t.dtype)


def _generator_gap(pair, steps=300, num_steps=2):
    """Train `pair` on N((3, -2), 0.3^2 I) and return |mean of its samples - (3, -2)| before and after."""
    mean = jnp.array([3.0, -2.0])
    tx = _tx(3e-3)
    graphdef, state = training.init_train_state(pair, tx, jax.random.PRNGKey(0))
    step_fn = training.make_train_step(_loss_fn(num_steps), graphdef, tx, ema=0.0, grad_clip_norm=None)
    grid = adversarial.ddgan_grid(PATH, num_steps)
    x_T = PATH.prior_sample(jax.random.key(1), (512, 2))

    @jax.jit
    def gap(params, rest):
        net = nnx.merge(graphdef, params, rest, copy=True)
        x = adversarial.sample(adversarial.DDGAN(net.generator, PATH, grid, LATENT), jax.random.key(2), x_T)
        return jnp.linalg.norm(jnp.mean(x, 0) - mean.astype(x.dtype))

    before = float(gap(state.params, state.rest))
    for i in range(steps):
        state, m = step_fn(state, _batch(i, mean=mean, std=0.3))
    assert bool(m["finite"])
    return before, float(gap(state.params, state.rest))


def test_the_generator_learns_from_the_discriminator():
    """300 two-player steps bring the T = 2 DDGAN's sample mean from ~3.9 away from the data's to
    within 0.4 of that (0.8; initial weights of seeds 0-3 end at 0.5-0.9: GAN training oscillates,
    hence the margin); with a constant discriminator (the control) the generator gets no signal
    and stays exactly where it was. A discriminator broken to a constant output fails the first
    assertion."""
    before, after = _generator_gap(_pair())
    assert before > 2.5 and after < 0.4 * before, (before, after)
    broken = _pair()
    broken.discriminator = _ConstantDiscriminator()
    before_c, after_c = _generator_gap(broken)
    assert abs(after_c - before_c) < 0.05 and after_c > 2.5, (before_c, after_c)


# -- the experiments layer: the GAN recipe -------------------------------------------------------


def _toy_config():
    from experiments.configs import toy_ddgan

    return toy_ddgan.get_config("runlocal")


def test_recipe_loss_and_optimizer_are_the_library_calls():
    """The AdversarialRecipe's loss_fn is ddgan_loss on DDGAN(pair.generator, path, the T-step
    grid) with the pair's discriminator and the config's r1_gamma; its optimizer moves the
    generator at optimizer.learning_rate and the discriminator at gan.discriminator_learning_rate
    (Adam's first step is -lr sign(g))."""
    from experiments import _recipes, _state

    config = _toy_config()
    config.optimizer.schedule, config.optimizer.warmup_steps = "constant", 0
    config.optimizer.learning_rate, config.gan.discriminator_learning_rate = 1e-3, 3e-3
    recipe = _recipes.recipe_for(config)
    assert isinstance(recipe, _recipes.AdversarialRecipe)
    net = recipe.build_model()
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 2), jnp.float32)
    key = jax.random.PRNGKey(1)
    loss, extra = recipe.build_loss()(net, {"x": x}, key)
    ddgan = adversarial.DDGAN(
        net.generator, jdiff.VPLinear(), adversarial.ddgan_grid(jdiff.VPLinear(), 4), config.model.kwargs.latent_dim
    )
    want = adversarial.ddgan_loss(ddgan, net.discriminator, key, x, r1_gamma=config.loss.kwargs.r1_gamma)
    np.testing.assert_array_equal(loss, want.loss)
    for name in ("d_loss", "g_loss", "r1", "d_real", "d_fake"):
        np.testing.assert_array_equal(extra[name], getattr(want, name))
    tx = _state.build_optimizer(config)
    params = nnx.state(net, nnx.Param)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    for player, lr in (("generator", 1e-3), ("discriminator", 3e-3)):
        for u in jax.tree.leaves(updates[player]):
            np.testing.assert_allclose(u, -lr, rtol=1e-4)


def test_bad_gan_configs_fail_in_one_line():
    import pytest

    from experiments import _recipes
    from experiments._config import ConfigError

    cases = [
        ({"gan.num_steps": 0}, "config.gan.num_steps"),
        ({"gan.discriminator_learning_rate": -1.0}, "config.gan.discriminator_learning_rate"),
        ({"model.name": "mlp"}, "config.model.name"),
        ({"loss.name": "cfm_loss"}, "config.loss.name"),
        ({"loss.kwargs": {"r1": 1.0}}, "config.loss.kwargs"),
        ({"loss.label_dropout": 0.1}, "config.loss.label_dropout"),
    ]
    for override, key in cases:
        config = _toy_config()
        for k, v in override.items():
            section, field = k.split(".")
            config[section][field] = v
        with pytest.raises(ConfigError) as e:
            _recipes.recipe_for(config)
        assert str(e.value).startswith(key) and "\n" not in str(e.value), (override, str(e.value))
    config = _toy_config()
    del config["gan"]
    with pytest.raises(
        ConfigError,
        match=r"^config\.model\.name: 'ddgan_mlp' is a gan network and needs a "
        r"config\.gan section",
    ):
        _recipes.recipe_for(config)
    recipe = _recipes.recipe_for(_toy_config())
    with pytest.raises(ValueError, match="samples on the 4-step"):
        recipe.make_sampler(None, (4, 2), num_steps=8)
    with pytest.raises(ValueError, match="`solver` does not apply"):
        recipe.make_sampler(None, (4, 2), solver="heun")


def test_digits_ddgan_config_checks():
    """The full digits_ddgan config (its end-to-end run is a slow test): names resolve, and both
    conv networks map their inputs abstractly (generator: x0 of the image shape; discriminator: one
    logit per example)."""
    from experiments import _recipes
    from experiments.configs import digits_ddgan

    for arg in (None, "runlocal"):
        config = digits_ddgan.get_config(arg)
        recipe = _recipes.recipe_for(config)
        net = recipe.abstract_model()
        b = 3
        x = jax.ShapeDtypeStruct((b, *config.data.shape), jnp.float32)
        z = jax.ShapeDtypeStruct((b, config.model.kwargs.latent_dim), jnp.float32)
        t = jax.ShapeDtypeStruct((b,), jnp.float32)
        assert jax.eval_shape(lambda n, x, z, t: n.generator(x, z, t), net, x, z, t).shape == x.shape
        assert jax.eval_shape(lambda n, x, t: n.discriminator(x, x, t), net, x, t).shape == (b,)
        assert recipe.num_steps == config.gan.num_steps == 4
