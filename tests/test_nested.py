"""jdiff.nested: the pyramid of a Gaussian mixture is the stacked mixture; the joint denoiser of the
levels is the exact posterior mean (checked in information form, independently); fixed-step
solvers sample a pytree of levels exactly as the raveled state and reproduce the pyramid; the
nested loss is minimised by the exact joint model; the nested U-Net; bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

import jdiff
from jdiff import models, nested, samplers

SHAPE = (4, 4, 1)  # levels 4x4 and 2x2 (factors 1, 2)
D = 16


def _mixture():
    """A 2-component mixture on 4x4 images with full-rank, correlated covariances."""
    k = jax.random.split(jax.random.key(0), 3)
    a = 0.3 * jax.random.normal(k[0], (D, D))
    covs = jnp.stack([a @ a.T + 0.05 * jnp.eye(D), 0.08 * jnp.eye(D) + 0.04])
    means = jnp.stack([0.8 * jax.random.normal(k[1], (D,)), -0.8 * jax.random.normal(k[2], (D,))])
    return jdiff.GaussianMixture(jnp.array([0.4, 0.6]), means, covs)


def _pool_matrix(h, w, f):
    """The average-pooling matrix (h w / f^2, h w) written out pixel by pixel."""
    p = np.zeros((h * w // f**2, h * w))
    for i, j in itertools.product(range(h), range(w)):
        p[(i // f) * (w // f) + j // f, i * w + j] = 1.0 / f**2
    return p


PYRAMID = nested.Pyramid((1, 2), shift_power=1.0)  # the 4x4 level has SNR / 2


def test_pyramid_matrix_and_mixture_are_the_pooled_levels():
    """A x.flatten() equals the flattened levels exactly (written-out pooling matrices and scales),
    and the stacked mixture's mean and covariance are those of the levels of data samples."""
    gm = _mixture()
    a = np.concatenate([c * _pool_matrix(4, 4, f) for f, c in zip(PYRAMID.factors, PYRAMID.scales)])
    np.testing.assert_allclose(PYRAMID.matrix(SHAPE), a, rtol=0, atol=1e-15)
    np.testing.assert_allclose(PYRAMID.log_snr_shifts, [-np.log(2.0), 0.0])
    x = gm.sample(jax.random.key(1), 40_000)
    levels = PYRAMID(x.reshape(-1, *SHAPE))
    np.testing.assert_allclose(np.concatenate([y.reshape(len(x), -1) for y in levels], 1), x @ a.T, atol=1e-12)
    stacked = nested.pyramid_mixture(gm, PYRAMID, SHAPE)
    mean = stacked.weights @ stacked.means
    cov = np.einsum(
        "k,kij->ij", stacked.weights, stacked.covs + np.einsum("ki,kj->kij", stacked.means, stacked.means)
    ) - np.outer(mean, mean)
    y = np.asarray(x @ a.T)
    se = np.sqrt(np.diag(cov) / len(y))
    np.testing.assert_array_less(np.abs(y.mean(0) - mean), 5 * se)
    np.testing.assert_allclose(np.cov(y.T), cov, atol=5 * np.sqrt(2 / len(y)) * np.max(np.diag(cov)))


def test_joint_denoiser_is_the_exact_posterior_mean():
    """E[level l | all noisy levels] from nested.exact_model equals c_l P_l E[x | y_t] computed in
    information form: per component, precision S^-1 + (a / s)^2 sum_l c_l^2 P_l^T P_l and mean
    Sigma (S^-1 mu + a / s^2 sum_l c_l P_l^T y_l), weighted by scipy's N(y_t; a A mu, a^2 A S A^T +
    s^2 I) responsibilities. The levels are coherent: pooling the fine estimate gives the coarse."""
    gm = _mixture()
    path = jdiff.VPCosine()
    model = nested.exact_model(gm, PYRAMID, SHAPE, path, "x0")
    ps = [c * _pool_matrix(4, 4, f) for f, c in zip(PYRAMID.factors, PYRAMID.scales)]
    a_mat = np.concatenate(ps)
    rng = np.random.default_rng(0)
    for t in (0.3, 0.7):
        a, s = float(path.alpha(t)), float(path.sigma(t))
        x = np.asarray(gm.sample(jax.random.key(2), 3))
        y_t = x @ a_mat.T * a + s * rng.normal(size=(3, a_mat.shape[0]))
        levels_t = (jnp.asarray(y_t[:, :16].reshape(3, 4, 4, 1)), jnp.asarray(y_t[:, 16:].reshape(3, 2, 2, 1)))
        got = model.net(levels_t, jnp.full((3,), t), None)
        for i in range(3):
            logp, post = [], []
            for w, mu, cov in zip(np.asarray(gm.weights), np.asarray(gm.means), np.asarray(gm.covs)):
                prec = np.linalg.inv(cov) + (a / s) ** 2 * sum(p.T @ p for p in ps)
                rhs = np.linalg.solve(cov, mu) + a / s**2 * a_mat.T @ y_t[i]
                post.append(np.linalg.solve(prec, rhs))
                logp.append(
                    np.log(w)
                    + scipy.stats.multivariate_normal(
                        a * a_mat @ mu, a**2 * a_mat @ cov @ a_mat.T + s**2 * np.eye(len(a_mat))
                    ).logpdf(y_t[i])
                )
            r = np.exp(np.array(logp) - scipy.special.logsumexp(logp))
            x_hat = r @ np.array(post)
            for lvl, p in zip(got, ps):
                np.testing.assert_allclose(np.asarray(lvl[i]).ravel(), p @ x_hat, rtol=1e-8, atol=1e-10)
        coarse_from_fine = nested.avg_pool(got[0], 2) / PYRAMID.scales[0] * PYRAMID.scales[1]
        np.testing.assert_allclose(coarse_from_fine, got[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "solver",
    [samplers.DDIM(), samplers.Heun(), samplers.DPMSolverPP2M(), samplers.DDPM()],
    ids=["ddim", "heun", "dpmpp_2m", "ddpm"],
)
def test_pytree_state_samples_exactly_as_the_raveled_state(solver):
    """Any solver on the tuple of levels with the nested exact model gives the run on the flat
    stacked state with the stacked mixture's model (the same numbers, trajectory included)."""
    gm = _mixture()
    path = jdiff.VPCosine()
    grid = samplers.log_snr_grid(path, 8)
    x_T = PYRAMID.prior_sample(path, jax.random.key(3), SHAPE, 6, jnp.float64)
    key = jax.random.key(4) if solver.stochastic else None
    levels, traj = samplers.sample(
        solver,
        nested.exact_model(gm, PYRAMID, SHAPE, path, "eps"),
        x_T,
        grid,
        key=key,
        return_trajectory=True,
        denoise_to_zero=True,
    )
    flat_T = jnp.concatenate([y.reshape(6, -1) for y in x_T], 1)
    flat, flat_traj = samplers.sample(
        solver,
        nested.pyramid_mixture(gm, PYRAMID, SHAPE).as_model(path, "eps"),
        flat_T,
        grid,
        key=key,
        return_trajectory=True,
        denoise_to_zero=True,
    )
    assert [y.shape for y in levels] == [(6, 4, 4, 1), (6, 2, 2, 1)]
    assert [y.shape for y in traj] == [(10, 6, 4, 4, 1), (10, 6, 2, 2, 1)]
    np.testing.assert_allclose(jnp.concatenate([y.reshape(6, -1) for y in levels], 1), flat, rtol=0, atol=1e-12)
    np.testing.assert_allclose(traj[1].reshape(10, 6, -1), flat_traj[:, :, 16:], rtol=0, atol=1e-12)


def test_one_sampling_run_reproduces_the_pyramid():
    """Heun on the PF-ODE of the exact joint model, all levels at once (40 steps, log-SNR grid):
    the coarse level equals the pooled fine level (to the discretisation error) and the fine
    level has the mixture's mean and covariance."""
    gm = _mixture()
    path = jdiff.VPCosine()
    n = 4000
    x_T = PYRAMID.prior_sample(path, jax.random.key(5), SHAPE, n, jnp.float64)
    model = nested.exact_model(gm, PYRAMID, SHAPE, path, "x0")
    run = jax.jit(
        lambda x: samplers.sample(samplers.Heun(), model, x, samplers.log_snr_grid(path, 40), denoise_to_zero=True)
    )
    fine, coarse = PYRAMID.images(run(x_T))
    coherence = np.abs(np.asarray(nested.avg_pool(fine, 2) - coarse))
    assert coherence.max() < 2e-2 and coherence.mean() < 2e-3, (coherence.max(), coherence.mean())
    x = np.asarray(fine).reshape(n, -1)
    mean = gm.weights @ gm.means
    cov = np.einsum("k,kij->ij", gm.weights, gm.covs + np.einsum("ki,kj->kij", gm.means, gm.means)) - np.outer(
        mean, mean
    )
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(np.diag(cov) / n) + 5e-3)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=6 * np.sqrt(2 / n) * np.max(np.diag(cov)))


def test_the_exact_joint_model_minimises_the_nested_loss():
    """With the same draws, adding a constant delta to level l's eps prediction raises the mean
    nested loss by w_l (delta^2 + 2 delta mean(residual)), and the exact model's residual has
    mean 0 (within 5 standard errors): the loss's target is the exact joint eps of the pyramid
    noised level by level. Per-level losses and weights combine as sum_l w_l L_l."""
    gm = _mixture()
    path = jdiff.VPCosine()
    exact = nested.exact_model(gm, PYRAMID, SHAPE, path, "eps")
    x0 = gm.sample(jax.random.key(6), 20_000).reshape(-1, *SHAPE)
    key, w, delta = jax.random.key(7), (2.0, 0.5), 0.1

    def shifted(level):
        def net(levels, t, cond=None):
            out = list(exact.net(levels, t, cond))
            out[level] = out[level] + delta
            return tuple(out)

        return jdiff.Model(net, path, "eps")

    base, per_level = nested.nested_loss(exact, key, x0, pyramid=PYRAMID, weights=w, return_levels=True)
    np.testing.assert_allclose(base, per_level @ np.asarray(w), rtol=1e-12)
    for level in (0, 1):
        diff = float(jnp.mean(nested.nested_loss(shifted(level), key, x0, pyramid=PYRAMID, weights=w) - base))
        resid = (diff / w[level] - delta**2) / (2 * delta)  # the mean residual of level `level`
        se = 1.0 / np.sqrt(x0.shape[0] * (16 if level == 0 else 4))  # eps residuals have std <= 1
        assert abs(resid) < 5 * se, (level, diff, resid, se)
    np.testing.assert_allclose(nested.progressive_weights((4.0, 1.0), (100, 0), 50), [0.0, 1.0])
    np.testing.assert_allclose(nested.progressive_weights((4.0, 1.0), (100, 0), 100), [4.0, 1.0])


def test_nested_unet_levels_see_each_other():
    """The nested U-Net maps the three MNIST levels (28, 14, 7) to predictions of their shapes
    (abstractly: a 28x28 compile takes minutes), starts at zero (zero-initialised heads), and once
    its weights move every level's prediction depends on every level's input (the coarse U-Net
    sits inside the fine one): perturbing level j alone changes prediction i, for all i, j."""
    net = nnx.eval_shape(
        lambda: models.NestedUNet(
            28, 1, num_levels=3, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0, rngs=nnx.Rngs(0)
        )
    )
    levels = tuple(jax.ShapeDtypeStruct((2, s, s, 1), jnp.float32) for s in (28, 14, 7))
    out = jax.eval_shape(lambda n, lv: n(lv, 0.5), net, levels)
    assert [o.shape for o in out] == [(2, 28, 28, 1), (2, 14, 14, 1), (2, 7, 7, 1)]
    net = models.NestedUNet(
        8, 1, num_levels=3, ch=4, ch_mult=(1, 1, 1), num_res_blocks=1, dropout=0.0, rngs=nnx.Rngs(0)
    )  # 8, 4, 2: the same wiring, cheaper to compile
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    forward = jax.jit(lambda p, lv: nnx.merge(graphdef, p, rest)(lv, 0.5))  # examples do not interact
    # 4 groups of 2 examples: the base levels, then level j perturbed alone (group j + 1)
    base = [jax.random.normal(jax.random.key(i), (2, s, s, 1), jnp.float32) for i, s in enumerate((8, 4, 2))]
    levels = tuple(
        jnp.concatenate(
            [
                y + (0.5 * jax.random.normal(jax.random.key(10 + j), y.shape) if j == lvl else 0.0)
                for j in (None, 0, 1, 2)
            ]
        )
        for lvl, y in enumerate(base)
    )
    out = forward(params, levels)
    assert [o.shape for o in out] == [(8, 8, 8, 1), (8, 4, 4, 1), (8, 2, 2, 1)]
    assert all(float(jnp.max(jnp.abs(o))) == 0.0 for o in out)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(9), len(leaves))
    params = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
    out = [np.asarray(o).reshape(4, 2, -1) for o in forward(params, levels)]
    change = np.array([[np.max(np.abs(o[j + 1] - o[0])) for j in range(3)] for o in out])  # [i][j]
    assert change.min() > 1e-4, change


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`factors` must be strictly increasing"):
        nested.Pyramid((2, 1))
    with pytest.raises(ValueError, match="`log_snr_shifts` must be 2 finite numbers"):
        nested.Pyramid((1, 2), log_snr_shifts=(0.0,))
    with pytest.raises(ValueError, match="not divisible by the pooling factor 4"):
        nested.Pyramid((1, 4)).shapes((6, 6, 1))
    gm = _mixture()
    path = jdiff.VPCosine()
    model = nested.exact_model(gm, PYRAMID, SHAPE, path, "eps")
    with pytest.raises(ValueError, match="share the leading batch axis"):
        samplers.sample(
            samplers.DDIM(), model, (jnp.zeros((2, 4, 4, 1)), jnp.zeros((3, 2, 2, 1))), samplers.log_snr_grid(path, 2)
        )
    with pytest.raises(ValueError, match="one weight per level"):
        nested.nested_loss(model, jax.random.key(0), jnp.zeros((2, 4, 4, 1)), pyramid=PYRAMID, weights=(1.0,))
    with pytest.raises(TypeError, match="`pyramid` must be a jdiff.nested.Pyramid"):
        nested.nested_loss(model, jax.random.key(0), jnp.zeros((2, 4, 4, 1)), pyramid=(1, 2))
    with pytest.raises(ValueError, match="one multiplier per level"):
        models.NestedUNet(28, 1, num_levels=3, ch_mult=(1, 2), rngs=nnx.Rngs(0))
