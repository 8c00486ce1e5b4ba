"""jdiff.adversarial: the DDGAN posterior step and T-step chain against the Gaussian-mixture
oracle, the GAN loss terms against closed forms, the one-gradient two-player arrangement, the
two-player optimizer, and bad input."""

import equinox as eqx
import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import count_compiles, mixture_2d

import jdiff
from jdiff import adversarial, models, samplers

N = 20_000  # draws per moment check


def _exact_denoiser_generator(gm, path):
    """G(x_t, z, t) = E[x0 | x_t] of the oracle (z ignored)."""
    model = gm.as_model(path, "x0")
    return lambda x, z, t, cond=None: model.x0(x, t)


def _posterior_draw(gm, path, x, t, z):
    """One draw of x0 ~ p(x0 | x_t = x) of the mixture for one example, from z = (u, e) with u
    ~ N(0, 1) choosing the component (through its normal CDF) and e ~ N(0, I_D).

    p(x0 | x_t) = sum_k r_k N(m_k, V_k) with C_k = a^2 S_k + s^2 I, m_k = mu_k + a S_k C_k^-1 (x -
    a mu_k), V_k = S_k - a^2 S_k C_k^-1 S_k and r_k prop. to w_k N(x; a mu_k, C_k): Gaussian
    conditioning written out here, independently of jdiff.analytic's implementation.
    """
    a, s = path.alpha(t), path.sigma(t)
    d = gm.dim
    cov = a**2 * gm.covs + s**2 * jnp.eye(d)[None]
    gain = a * jnp.einsum("kij,kjl->kil", gm.covs, jnp.linalg.inv(cov))  # a S C^-1
    m = gm.means + jnp.einsum("kij,kj->ki", gain, x[None] - a * gm.means)
    v = gm.covs - a * jnp.einsum("kij,kjl->kil", gain, gm.covs)
    logp = jax.vmap(lambda mu, c: jax.scipy.stats.multivariate_normal.logpdf(x, a * mu, c))(gm.means, cov)
    r = jax.nn.softmax(jnp.log(gm.weights) + logp)
    k = jnp.minimum(jnp.searchsorted(jnp.cumsum(r), jax.scipy.stats.norm.cdf(z[0])), r.shape[0] - 1)
    return m[k] + jnp.linalg.cholesky(v[k] + 1e-12 * jnp.eye(d)) @ z[1:]  # jitter: v is ~0 at small t


def _exact_posterior_generator(gm, path):
    """G(x_t, z, t) = a draw of x0 ~ p(x0 | x_t): the ideal DDGAN generator (latent_dim = D + 1)."""

    def g(x, z, t, cond=None):
        return jax.vmap(lambda xi, ti, zi: _posterior_draw(gm, path, xi, ti, zi))(x, t, z)

    return g


def _marginal_sample(gm, path, key, t, n):
    """n draws of x_t ~ p_t: data noised to t exactly (the chain's exact start)."""
    k0, k1 = jax.random.split(key)
    return path.alpha(t) * gm.sample(k0, n) + path.sigma(t) * jax.random.normal(k1, (n, gm.dim))


@pytest.mark.parametrize(
    "path", [jdiff.VPLinear(), jdiff.Linear(), jdiff.VEGeometric(0.01, 5.0)], ids=["vp", "linear", "ve"]
)
def test_posterior_step_with_the_exact_denoiser_has_the_closed_form_moments(path):
    """With G = the oracle's E[x0 | x_t], one DDGAN step from t to s at a fixed x_t draws
    x_s ~ N(mu, v I) with the Gaussian-conditioning closed form of (x_s, x_t) | x0:
    mu = a_s x0 + (a_t / a_s) s_s^2 / s_t^2 (x_t - a_t x0), v = s_s^2 - (a_t / a_s)^2 s_s^4 / s_t^2."""
    gm = mixture_2d()
    grid = adversarial.ddgan_grid(path, 4)
    ddgan = adversarial.DDGAN(_exact_denoiser_generator(gm, path), path, grid, 1)
    for i in (0, 2):  # a high-noise and a low-noise step (both intermediate: the last returns x0)
        t, s = grid[i], grid[i + 1]
        x_t = jnp.array([0.4, -0.3])
        x0 = gm.denoiser(x_t, t, path)
        a_t, a_s, s_t, s_s = path.alpha(t), path.alpha(s), path.sigma(t), path.sigma(s)
        mu = a_s * x0 + (a_t / a_s) * s_s**2 / s_t**2 * (x_t - a_t * x0)
        var = s_s**2 - (a_t / a_s) ** 2 * s_s**4 / s_t**2
        step = adversarial.DDGAN(ddgan.generator, path, jnp.array([t, s, grid[-1]]), 1)  # step 0 of 2: t -> s
        _, traj = adversarial.sample(step, jax.random.key(i), jnp.tile(x_t, (N, 1)), return_trajectory=True)
        x_s = traj[1]
        se = np.sqrt(var / N)
        np.testing.assert_array_less(np.abs(x_s.mean(0) - mu), 5 * se)
        # sample variance: relative standard error sqrt(2 / N) per coordinate
        np.testing.assert_allclose(x_s.var(0), var * np.ones(2), rtol=5 * np.sqrt(2 / N))
        np.testing.assert_allclose(np.corrcoef(x_s.T)[0, 1], 0.0, atol=5 / np.sqrt(N))


@pytest.mark.parametrize("num_steps", [2, 4])
def test_exact_posterior_generator_samples_the_data_in_t_steps(num_steps):
    """A G that draws x0 ~ p(x0 | x_t) (the oracle's exact posterior) makes the T-step chain
    exact for any T: from x_T ~ p_{t_max}, the samples have the mixture's mean, covariance and
    component occupancy. The exact *denoiser* E[x0 | x_t] (a Gaussian step's best mean) fails
    the same check at T = 2: large steps need the multimodal generator."""
    gm = mixture_2d()
    path = jdiff.VPLinear()
    grid = adversarial.ddgan_grid(path, num_steps)
    x_T = _marginal_sample(gm, path, jax.random.key(0), grid[0], N)
    mean = gm.weights @ gm.means
    cov = jnp.einsum("k,kij->ij", gm.weights, gm.covs + jnp.einsum("ki,kj->kij", gm.means, gm.means)) - jnp.outer(
        mean, mean
    )

    def check(x, tol=5.0):
        se = np.sqrt(np.diag(cov) / N)
        ok = np.all(np.abs(x.mean(0) - mean) < tol * se)
        c = np.cov(np.asarray(x).T)
        ok &= np.allclose(c, cov, atol=tol * np.sqrt(2 / N) * np.max(np.diag(cov)))
        # occupancy of the component whose mean is nearest (the components barely overlap)
        near = np.argmin(((np.asarray(x)[:, None] - np.asarray(gm.means)[None]) ** 2).sum(-1), 1)
        occ = np.bincount(near, minlength=3) / N
        ok &= np.all(np.abs(occ - np.asarray(gm.weights)) < tol * np.sqrt(gm.weights * (1 - gm.weights) / N) + 0.01)
        return bool(ok)

    exact = adversarial.DDGAN(_exact_posterior_generator(gm, path), path, grid, gm.dim + 1)
    x = jax.jit(lambda k: adversarial.sample(exact, k, x_T))(jax.random.key(1))
    assert check(x)
    if num_steps == 2:
        mean_only = adversarial.DDGAN(_exact_denoiser_generator(gm, path), path, grid, 1)
        assert not check(adversarial.sample(mean_only, jax.random.key(1), x_T))


def test_sample_calls_the_generator_t_times_and_a_new_grid_does_not_recompile():
    gm = mixture_2d()
    path = jdiff.VPLinear()
    calls = [0]
    exact = gm.as_model(path, "x0")

    def host(x, t):
        calls[0] += 1
        return np.asarray(exact.x0(jnp.asarray(x), jnp.asarray(t)))

    def g(x, z, t, cond=None):
        return jax.experimental.io_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x, t)

    ddgan = adversarial.DDGAN(g, path, adversarial.ddgan_grid(path, 3), 2)
    assert ddgan.nfe == ddgan.num_steps == 3
    run = jax.jit(lambda d, k, x: adversarial.sample(d, k, x))
    x_T = jnp.zeros((5, 2))
    x, traj = adversarial.sample(ddgan, jax.random.key(0), x_T, return_trajectory=True)
    assert calls[0] == 3 and traj.shape == (4, 5, 2)
    np.testing.assert_array_equal(traj[-1], x)
    run(ddgan, jax.random.key(0), x_T)
    other = adversarial.DDGAN(g, path, samplers.log_snr_grid(path, 3), 2)
    with count_compiles() as n:
        run(other, jax.random.key(0), x_T)
    assert n() == 0


def test_last_step_returns_the_generators_x0():
    """The grid's last time is the data level: the last step's output is G's x0_hat, no noise."""
    path = jdiff.VPLinear()
    g = lambda x, z, t, cond=None: jnp.full_like(x, 0.25) + 0.0 * z[:, :1]
    ddgan = adversarial.DDGAN(g, path, adversarial.ddgan_grid(path, 2), 3)
    x = adversarial.sample(ddgan, jax.random.key(0), jnp.ones((7, 2)))
    np.testing.assert_array_equal(x, 0.25)


# -- the adversarial objective ---------------------------------------------------------------


def _toy_ddgan(num_steps=4, path=None):
    path = jdiff.VPLinear() if path is None else path
    g = lambda x, z, t, cond=None: 0.5 * x + z[:, :2]
    return adversarial.DDGAN(g, path, adversarial.ddgan_grid(path, num_steps), 2)


def test_constant_discriminator_gives_the_equilibrium_values():
    """D = c everywhere: d_loss = softplus(-c) + softplus(c), g_loss = softplus(-c), no R1; at
    c = 0 the discriminator's loss is 2 log 2 and the generator's log 2 (the minimax value -log 4)."""
    x0 = mixture_2d().sample(jax.random.key(0), 16)
    for c in (0.0, 1.5):
        d = lambda xs, xt, t, cond=None, c=c: jnp.full(xs.shape[:1], c)
        out = adversarial.ddgan_loss(_toy_ddgan(), d, jax.random.key(1), x0, r1_gamma=10.0)
        np.testing.assert_allclose(out.d_loss, np.log1p(np.exp(-c)) + np.log1p(np.exp(c)), rtol=1e-12)
        np.testing.assert_allclose(out.g_loss, np.log1p(np.exp(-c)), rtol=1e-12)
        np.testing.assert_array_equal(out.r1, 0.0)
    np.testing.assert_allclose(
        adversarial.ddgan_loss(_toy_ddgan(), lambda xs, xt, t, c=None: 0 * xs[:, 0], jax.random.key(1), x0).d_loss,
        2 * np.log(2),
        rtol=1e-12,
    )


def test_r1_is_the_gradient_norm_on_the_real_sample():
    """R1 = gamma / 2 ||grad_{x_prev} D(x_prev, x_t, t)||^2 on real pairs: for D = w . x_prev it is
    gamma / 2 ||w||^2 whatever the pair; for D = -||x_prev||^2 / 2 on a one-step DDGAN (the real
    x_prev is the data itself) it is gamma / 2 ||x0||^2, so the penalty sees the real sample, not
    the generator's."""
    x0 = mixture_2d().sample(jax.random.key(0), 16)
    w = jnp.array([0.3, -1.2])
    out = adversarial.ddgan_loss(
        _toy_ddgan(), lambda xs, xt, t, c=None: xs @ w + xt[:, 0], jax.random.key(1), x0, r1_gamma=0.2
    )
    np.testing.assert_allclose(out.r1, 0.1 * (w @ w), rtol=1e-12)
    quad = lambda xs, xt, t, c=None: -0.5 * jnp.sum(xs**2, -1)
    out = adversarial.ddgan_loss(_toy_ddgan(num_steps=1), quad, jax.random.key(1), x0, r1_gamma=0.2)
    np.testing.assert_allclose(out.r1, 0.1 * jnp.sum(x0**2, -1), rtol=1e-12)
    np.testing.assert_allclose(out.d_real, -0.5 * jnp.sum(x0**2, -1), rtol=1e-12)


def test_one_gradient_is_each_players_own_gradient():
    """grad_D(loss) = grad_D(d_loss), grad_G(loss) = grad_G(g_loss), and each player's loss sends
    nothing to the other player; the generator does get a gradient. (Small equinox players:
    the arrangement does not depend on the network library.)"""
    path = jdiff.VPLinear()
    grid = adversarial.ddgan_grid(path, 3)
    x0 = mixture_2d().sample(jax.random.key(0), 32)
    k = jax.random.split(jax.random.key(5), 4)
    players = {
        "generator": {"w": jax.random.normal(k[0], (2, 2)), "v": jax.random.normal(k[1], (3, 2))},
        "discriminator": {"a": jax.random.normal(k[2], (4, 8)), "u": jax.random.normal(k[3], (8,))},
    }

    class G(eqx.Module):
        p: dict

        def __call__(self, x, z, t, cond=None):
            return x @ self.p["w"] + z @ self.p["v"] * t[:, None]

    class D(eqx.Module):
        p: dict

        def __call__(self, xs, xt, t, cond=None):
            return jnp.tanh(jnp.concatenate([xs, xt], -1) @ self.p["a"]) @ self.p["u"] * (1 + t)

    @jax.jit
    def all_grads(p):
        def grads(term):
            def f(p):
                out = adversarial.ddgan_loss(
                    adversarial.DDGAN(G(p["generator"]), path, grid, 3),
                    D(p["discriminator"]),
                    jax.random.key(3),
                    x0,
                    r1_gamma=0.1,
                )
                return jnp.mean(getattr(out, term))

            g = jax.grad(f)(p)
            return g["generator"], g["discriminator"]

        return grads("loss"), grads("d_loss"), grads("g_loss")

    (g_total, d_total), (g_d, d_d), (g_g, d_g) = all_grads(players)
    for a, b in zip(jax.tree.leaves(d_total), jax.tree.leaves(d_d)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    for a, b in zip(jax.tree.leaves(g_total), jax.tree.leaves(g_g)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert all(np.all(a == 0) for a in jax.tree.leaves(g_d))
    assert all(np.all(a == 0) for a in jax.tree.leaves(d_g))
    assert min(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g_g)) > 1e-4
    assert min(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(d_d)) > 1e-4


def test_two_player_optimizer_updates_each_network_with_its_own_optimizer():
    pair = models.DDGANMLP(2, latent_dim=4, hidden=8, depth=1, rngs=nnx.Rngs(0))
    params = nnx.state(pair, nnx.Param)
    tx = adversarial.two_player_optimizer(optax.sgd(1.0), optax.sgd(0.0))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(np.all(u == -1.0) for u in jax.tree.leaves(updates["generator"]))
    assert all(np.all(u == 0.0) for u in jax.tree.leaves(updates["discriminator"]))
    with pytest.raises(ValueError, match="`generator` or `discriminator`"):
        tx.init({"generator": jnp.ones(2), "critic": jnp.ones(2)})
    with pytest.raises(TypeError, match="`discriminator` must be an optax"):
        adversarial.two_player_optimizer(optax.sgd(1.0), "adam")


def test_bad_input_names_the_argument():
    path = jdiff.VPLinear()
    g = lambda x, z, t, c=None: x
    with pytest.raises(ValueError, match="`grid` must lie inside"):
        adversarial.DDGAN(g, jdiff.Linear(), jnp.array([1.0, 0.5, 0.0]), 2)
    with pytest.raises(ValueError, match="strictly decreasing"):
        adversarial.DDGAN(g, path, jnp.array([0.2, 0.5]), 2)
    with pytest.raises(ValueError, match="`latent_dim`"):
        adversarial.DDGAN(g, path, adversarial.ddgan_grid(path, 2), 0)
    with pytest.raises(TypeError, match="`generator` must be a callable"):
        adversarial.DDGAN("G", path, adversarial.ddgan_grid(path, 2), 2)
    with pytest.raises(ValueError, match="`num_steps`"):
        adversarial.ddgan_grid(path, 0)
    with pytest.raises(TypeError, match="`ddgan` must be a jdiff.adversarial.DDGAN"):
        adversarial.sample(g, jax.random.key(0), jnp.zeros((2, 2)))
    ddgan = adversarial.DDGAN(lambda x, z, t, c=None: x[:, :1], path, adversarial.ddgan_grid(path, 2), 2)
    with pytest.raises(ValueError, match="must predict x0 of the shape of x_t"):
        adversarial.sample(ddgan, jax.random.key(0), jnp.zeros((2, 2)))
    x0 = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="one logit per example"):
        adversarial.ddgan_loss(_toy_ddgan(), lambda xs, xt, t, c=None: xs, jax.random.key(0), x0)
    with pytest.raises(ValueError, match="`r1_gamma`"):
        adversarial.ddgan_loss(_toy_ddgan(), lambda xs, xt, t, c=None: xs[:, 0], jax.random.key(0), x0, r1_gamma=-1)
