"""jdiff.latent.LatentModel: samplers, guidance and flow maps on latents, decoded once at the end.

Two "autoencoders" whose latent law is known in closed form:
* the identity: every sampler on the latent model must give exactly (bit for bit) its pixel-space
  result;
* a linear one, E(x) = s Q^T (x - c) with Q orthogonal: the latent law of the Gaussian mixture
  is the mixture with means s Q^T (mu_k - c) and covariances s^2 Q^T C_k Q, so its exact oracle
  is the latent model. With s = 1, c = 0 sampling commutes with the rotation (decoded latent
  samples = pixel samples started from Q z_T); with s != 1 the decoded samples must have the
  pixel mixture's mean and covariance, and the latent likelihood is the latent mixture's exact
  log-density.
"""

import diffrax
import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import callback_oracle, count_compiles, mixture_2d

import jdiff
from jdiff import flowmaps, guidance, latent
from jdiff import samplers as S

GM = mixture_2d()
PATH = jdiff.VPCosine()

SOLVERS = {
    "ddpm": S.DDPM(),
    "ddim": S.DDIM(),
    "ddim_eta1": S.DDIM(eta=1.0),
    "euler": S.Euler(),
    "heun": S.Heun(),
    "heun_churn": S.Heun(s_churn=20.0),
    "dpm_solver_3": S.DPMSolver(order=3),
    "dpmpp_2m": S.DPMSolverPP2M(),
    "dpmpp_3m": S.DPMSolverPP3M(),
    "dpmpp_2m_sde": S.DPMSolverPP2MSDE(),
    "unipc": S.UniPC(),
    "lms_3": S.LMS(order=3),
    "euler_maruyama": S.EulerMaruyama(),
    "pc": S.PredictorCorrector(S.EulerMaruyama(), n_corrector=1, snr=0.16),
}


def _rotation(angle=0.7, reflect=True):
    c, s = np.cos(angle), np.sin(angle)
    q = np.array([[c, -s], [s, c]])
    return jnp.asarray(q @ np.diag([1.0, -1.0]) if reflect else q)  # det -1: a reflection too


def _linear_codec(q, s, c):
    """(encoder, decoder, latent mixture) of E(x) = s Q^T (x - c)."""
    c = c[None, :]
    enc = lambda x: s * (x - c) @ q
    dec = lambda z: (z / s) @ q.T + c
    gm_z = jdiff.GaussianMixture(
        GM.weights, s * (GM.means - c) @ q, covs=s**2 * jnp.einsum("ji,kjl,lm->kim", q, GM.covs, q), labels=GM.labels
    )
    return enc, dec, gm_z


def _identity_lm(kind="eps"):
    return latent.LatentModel(callback_oracle(PATH, kind), lambda z: z, (2,), encoder=lambda x: x)


@pytest.fixture(scope="module")
def pixel_and_latent_runs():
    """Every fixed-step solver on the pixel oracle and on the identity-decoded latent oracle."""
    pixel, lm = callback_oracle(PATH, "eps"), _identity_lm()
    x_T = PATH.prior_sample(jax.random.PRNGKey(0), (64, 2), jnp.float64)
    grid = S.log_snr_grid(PATH, 6)
    key = jax.random.PRNGKey(1)
    run_pixel = jax.jit(lambda x: {n: S.sample(sv, pixel, x, grid, key=key) for n, sv in SOLVERS.items()})
    run_latent = jax.jit(
        lambda z: {
            n: lm.generate(lambda m, z_T, sv=sv: S.sample(sv, m, z_T, grid, key=key), z) for n, sv in SOLVERS.items()
        }
    )
    return run_pixel(x_T), run_latent(x_T)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_identity_autoencoder_is_pixel_space_for_every_solver(pixel_and_latent_runs, name):
    pixel, lat = pixel_and_latent_runs
    np.testing.assert_array_equal(np.asarray(lat[name]), np.asarray(pixel[name]))


def test_identity_autoencoder_diffrax_guidance_and_flow_maps():
    # cond == 2 is classifier-free guidance's null class: the oracle has no such class (it
    # refuses it), so the null class selects the unconditional oracle
    lm = latent.LatentModel(callback_oracle(PATH, "v", null_class=True), lambda z: z, (2,))
    pixel = callback_oracle(PATH, "v", null_class=True)
    labels = jnp.arange(32) % 2
    cfg = lambda m: guidance.classifier_free(m, 2.5, null_cond=GM.num_classes)
    flow = flowmaps.FlowMap(lambda x, t, s, c: pixel.velocity(x, t, c), PATH, flowmaps.AverageVelocity())
    lm_flow = latent.LatentModel(flow, lambda z: z, (2,))
    draws = {
        # the adaptive PF-ODE and the reverse SDE (diffrax)
        "ode": lambda m, z: S.solve_pf_ode(m, z, rtol=1e-6, atol=1e-6).sample,
        "sde": lambda m, z: (
            S.solve_reverse_sde(m, jax.random.PRNGKey(3), z, num_steps=20, solver=diffrax.Euler()).sample
        ),
        # classifier-free guidance applied in latent space (lm.map), sampled with Heun
        "cfg": lambda m, z: S.sample(S.Heun(), m, z, S.karras_grid(PATH, 5), cond=labels),
        # a flow map on latents: one Euler jump of the oracle's velocity per step
        "flow": lambda f, z: flowmaps.sample(f, z, S.uniform_grid(PATH, 3)),
    }
    guided = lm.map(cfg)
    assert isinstance(guided, latent.LatentModel) and isinstance(guided.model, jdiff.Model)
    bound = {"ode": (lm, pixel), "sde": (lm, pixel), "cfg": (guided, cfg(pixel)), "flow": (lm_flow, flow)}

    @jax.jit
    def run(x_T):
        return {k: (bound[k][0].generate(d, x_T), d(bound[k][1], x_T)) for k, d in draws.items()}

    for k, (lat, pix) in run(PATH.prior_sample(jax.random.PRNGKey(0), (32, 2), jnp.float64)).items():
        assert np.all(np.isfinite(pix)), k  # assert_array_equal calls NaN equal to NaN
        np.testing.assert_array_equal(lat, pix, err_msg=k)


def test_decoding_happens_once_at_the_end():
    calls, seen = [0], []

    def host_decode(z):
        calls[0] += 1
        seen.append(np.asarray(z))
        return np.asarray(z) * 2.0

    def decoder(z):
        return jax.experimental.io_callback(host_decode, jax.ShapeDtypeStruct(z.shape, z.dtype), z)

    lm = latent.LatentModel(callback_oracle(PATH, "eps"), decoder, (2,))
    x_T = lm.prior_sample(jax.random.PRNGKey(0), 8, jnp.float64)
    assert x_T.shape == (8, 2)
    draw = lambda m, z: S.sample(S.DPMSolverPP2M(), m, z, S.log_snr_grid(PATH, 10))
    x = jax.jit(lambda z: lm.generate(draw, z))(x_T)
    assert calls[0] == 1
    np.testing.assert_allclose(seen[0], draw(lm.model, x_T), atol=1e-12)  # the final latents
    np.testing.assert_array_equal(x, 2.0 * seen[0])


def test_rotation_autoencoder_commutes_with_sampling():
    # s = 1, c = 0: the PF-ODE of the rotated mixture is the rotated PF-ODE, for any deterministic solver.
    q = _rotation()
    enc, dec, gm_z = _linear_codec(q, 1.0, jnp.zeros(2))
    lm = latent.LatentModel(callback_oracle(PATH, "eps", gm_z), dec, (2,), encoder=enc)
    pixel = callback_oracle(PATH, "eps")
    z_T = lm.prior_sample(jax.random.PRNGKey(0), 64, jnp.float64)
    grid = S.log_snr_grid(PATH, 8)
    for solver in (S.DDIM(), S.Heun(), S.DPMSolverPP3M(), S.UniPC()):
        draw = lambda m, z, solver=solver: S.sample(solver, m, z, grid)
        np.testing.assert_allclose(lm.generate(draw, z_T), draw(pixel, z_T @ q.T), atol=1e-10)


def test_scaled_linear_autoencoder_decodes_to_the_pixel_mixture():
    # s = 1.7 and a shift: the latent model is the exact oracle of the latent mixture; 4000 decoded
    # PF-ODE samples must have the pixel mixture's mean and covariance (5 standard errors).
    q, s, c = _rotation(1.9), 1.7, jnp.array([0.4, -0.3])
    enc, dec, gm_z = _linear_codec(q, s, c)
    lm = latent.LatentModel(callback_oracle(PATH, "eps", gm_z), dec, (2,), encoder=enc)
    n = 4000
    z_T = lm.prior_sample(jax.random.PRNGKey(5), n, jnp.float64)
    x = np.asarray(
        jax.jit(lambda z: lm.generate(lambda m, z: S.sample(S.DPMSolverPP3M(), m, z, S.log_snr_grid(PATH, 40)), z))(z_T)
    )
    w, mu, cov = np.asarray(GM.weights), np.asarray(GM.means), np.asarray(GM.covs)
    mean = w @ mu
    c = np.asarray(c)
    second = np.einsum("k,kij->ij", w, cov + np.einsum("ki,kj->kij", mu, mu))
    covariance = second - np.outer(mean, mean)
    sd = np.sqrt(np.diag(covariance))
    assert np.all(np.abs(x.mean(0) - mean) < 5 * sd / np.sqrt(n))
    var_se = np.sqrt(2.0 / n) * np.diag(covariance) * 2.0  # heavy-ish tails of a mixture: a 2x margin
    assert np.all(np.abs(x.var(0) - np.diag(covariance)) < 5 * var_se)
    # A decoder that forgot the scale would be off by a factor 1.7 in std: far outside the bounds.
    assert np.abs(x.std(0) * s - sd).max() > 20 * np.max(sd / np.sqrt(n))


def test_latent_likelihood_is_the_latent_mixture_log_density():
    q, s, c = _rotation(0.4), 0.6, jnp.array([1.0, 0.5])
    enc, dec, gm_z = _linear_codec(q, s, c)
    lm = latent.LatentModel(gm_z.as_model(PATH, "v"), dec, (2,), encoder=enc)
    x = GM.sample(jax.random.PRNGKey(2), 3)
    out = latent.latent_log_likelihood(
        lm, x, rtol=1e-9, atol=1e-9, prior_log_prob=lambda z: gm_z.marginal_log_prob(z, PATH.t_max, PATH)
    )
    exact = jax.vmap(lambda z: gm_z.marginal_log_prob(z, PATH.t_min, PATH))(enc(x))
    np.testing.assert_allclose(out.log_prob, exact, atol=1e-6)
    np.testing.assert_allclose(out.bits_per_latent_dim, -exact / (2 * np.log(2.0)), atol=1e-6)
    assert out.latent_dim == 2 and "not a pixel bits/dim" in out.note
    # The pixel density differs by the encoder's log-Jacobian D log s: the latent number is not it.
    pixel_exact = jax.vmap(lambda y: GM.marginal_log_prob(y, PATH.t_min, PATH))(x)
    assert np.abs(out.log_prob - pixel_exact).min() > 0.5


def test_latent_model_is_a_jit_argument_and_bad_input_is_named():
    identity = lambda z: z
    lm = latent.LatentModel(GM.as_model(PATH, "eps"), identity, (2,))
    draw = jax.jit(lambda lm, z: lm.generate(lambda m, zz: S.sample(S.DDIM(), m, zz, S.uniform_grid(PATH, 3)), z))
    z = jnp.zeros((4, 2))
    draw(lm, z)
    moved = jdiff.GaussianMixture(GM.weights, GM.means + 0.5, covs=GM.covs, labels=GM.labels)
    other = latent.LatentModel(moved.as_model(PATH, "eps"), identity, (2,))
    with count_compiles() as n:
        draw(other, z)  # new mixture parameters (array leaves), same structure: no recompilation
    assert n() == 0
    with pytest.raises(TypeError, match="decoder"):
        latent.LatentModel(lm.model, 3, (2,))
    with pytest.raises(TypeError, match="already a LatentModel"):
        latent.LatentModel(lm, lambda z: z, (2,))
    with pytest.raises(ValueError, match="encoder"):
        lm.encode(z)
    with pytest.raises(TypeError, match="jdiff.Model"):
        latent.latent_log_likelihood(
            latent.LatentModel(flowmaps.FlowMap(lambda x, t, s, c: x, PATH), lambda z: z, (2,), encoder=lambda x: x), z
        )
