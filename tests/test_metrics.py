"""jdiff.metrics against closed forms for Gaussians and known mode structures."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy import stats

from jdiff import metrics
from jdiff.data import load_digits


def _gauss(key, n, mean, std):
    mean = jnp.asarray(mean, jnp.float64)
    return mean[None, :] + std * jax.random.normal(key, (n, mean.shape[0]), jnp.float64)


def _replicates(fn, reps=24):
    """Values of fn(key) over `reps` independent keys, jitted and vmapped."""
    return np.asarray(jax.jit(jax.vmap(fn))(jax.random.split(jax.random.PRNGKey(7), reps)))


# -- Frechet distance -----------------------------------------------------------------


def _random_cov(key, d):
    a = jax.random.normal(key, (d, d), jnp.float64)
    return np.asarray(a @ a.T / d + 0.1 * jnp.eye(d))


def test_frechet_from_stats_closed_forms():
    rng = np.random.default_rng(0)
    d = 5
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    c1, c2 = _random_cov(jax.random.PRNGKey(0), d), _random_cov(jax.random.PRNGKey(1), d)
    # Non-commuting covariances: the textbook formula with scipy's sqrtm of C1 C2.
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2) - 2 * np.real(np.trace(scipy.linalg.sqrtm(c1 @ c2)))
    assert metrics.frechet_distance_from_stats(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-10)
    assert metrics.frechet_distance_from_stats(mu2, c2, mu1, c1) == pytest.approx(ref, rel=1e-10)  # symmetric
    # Diagonal (commuting) covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2.
    s1, s2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    got = metrics.frechet_distance_from_stats(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert got == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2), rel=1e-12)
    assert metrics.frechet_distance_from_stats(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-10)
    # Rank-deficient covariance (N < D features): still real and exact (one zero eigenvalue).
    c3 = c1.copy()
    c3[:, 0] = c3[0, :] = 0.0
    ref3 = np.trace(c3 + c2) - 2 * np.real(np.trace(scipy.linalg.sqrtm(c3 @ c2)))
    assert metrics.frechet_distance_from_stats(mu1, c3, mu1, c2) == pytest.approx(ref3, rel=1e-6)
    with pytest.raises(ValueError, match="cov1"):
        metrics.frechet_distance_from_stats(mu1, c1[:3, :3], mu2, c2)


def test_frechet_distance_of_samples_with_a_feature_function():
    # Samples of two Gaussians through a linear feature map A: the Frechet distance of the
    # features converges to the closed form for N(A mu, A C A^T) (bias O(D^2 / n)).
    d, n = 3, 40_000
    c1, c2 = _random_cov(jax.random.PRNGKey(2), d), _random_cov(jax.random.PRNGKey(3), d)
    mu1, mu2 = np.zeros(d), np.array([0.5, -0.3, 0.2])
    x = jax.random.multivariate_normal(jax.random.PRNGKey(4), mu1, c1, (n,))
    y = jax.random.multivariate_normal(jax.random.PRNGKey(5), mu2, c2, (n,))
    a = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    feature = lambda b: b @ a.T
    ref = metrics.frechet_distance_from_stats(a @ mu1, a @ c1 @ a.T, a @ mu2, a @ c2 @ a.T)
    got = metrics.frechet_distance(x, y, feature, batch_size=7000)
    assert got == pytest.approx(ref, abs=0.03), (got, ref)  # ref ~ 0.9; measured |err| ~ 5e-3
    # Same distribution: zero up to the O(D^2 / n) bias.
    x2 = jax.random.multivariate_normal(jax.random.PRNGKey(6), mu1, c1, (n,))
    assert 0 <= metrics.frechet_distance(x, x2) < 2e-3


# -- sliced Wasserstein ---------------------------------------------------------------


def test_sliced_wasserstein_shifted_gaussians():
    # N(0, I) vs N(m, I): every projection is a 1-D shift by theta.m, so
    # SW_2^2 = E (theta.m)^2 = |m|^2 / D exactly.
    # Monte Carlo over 400 directions: (theta.m)^2 / |m|^2 ~ Beta(1/2, 3/2) has relative sd 1,
    # so SW_2 carries ~2.5% direction noise; the tolerance is 4 sd.
    d, n = 4, 1000
    m = jnp.array([1.0, -0.5, 0.8, 0.2])
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    x, y = _gauss(k[0], n, jnp.zeros(d), 1.0), _gauss(k[1], n, m, 1.0)
    ref = float(jnp.sqrt(jnp.sum(m**2) / d))
    sw = float(metrics.sliced_wasserstein(k[2], x, y, num_projections=400))
    assert sw == pytest.approx(ref, rel=0.1), (sw, ref)
    # Unequal sample sizes go through the quantile functions.
    sw_unequal = float(metrics.sliced_wasserstein(k[2], x, y[:700], num_projections=400))
    assert sw_unequal == pytest.approx(ref, rel=0.1), (sw_unequal, ref)
    # Same distribution: the finite-sample value is small and shrinks with n.
    same = [float(metrics.sliced_wasserstein(k[3], x[:nn], _gauss(k[4], nn, jnp.zeros(d), 1.0))) for nn in (60, 1000)]
    # Measured 0.27 (n = 60) and 0.071 (n = 1000): the n^-1/2 rate predicts a ratio of 4.
    assert same[1] < 0.15 * ref and same[0] / same[1] > 2.5, same


# -- MMD and energy distance ----------------------------------------------------------


def _mmd_gauss(m1, s1, m2, s2, ell, d):
    """Population MMD^2 of N(m1, s1^2 I), N(m2, s2^2 I) under exp(-|a - b|^2 / (2 ell^2))."""

    def e(sa, sb, dm2):
        v = ell**2 + sa**2 + sb**2
        return (ell**2 / v) ** (d / 2) * math.exp(-dm2 / (2 * v))

    dm2 = float(np.sum((np.asarray(m1) - np.asarray(m2)) ** 2))
    return e(s1, s1, 0.0) + e(s2, s2, 0.0) - 2 * e(s1, s2, dm2)


def test_mmd_unbiased_against_the_gaussian_closed_form():
    d, n = 3, 300
    m = jnp.array([0.4, 0.0, -0.3])
    bandwidths = (1.0, (0.5, 2.0))  # one RBF kernel; a sum of two

    def draws(key):
        kx, ky, kz = jax.random.split(key, 3)
        x, same = _gauss(kx, n, jnp.zeros(d), 1.0), _gauss(ky, n + 50, jnp.zeros(d), 1.0)
        shifted = _gauss(kz, n + 50, m, 1.3)
        return jnp.stack([jnp.stack([metrics.mmd(x, y, bandwidth=bw) for y in (same, shifted)]) for bw in bandwidths])

    vals = _replicates(draws)  # (reps, bandwidth, same / shifted)
    for i, bw in enumerate(bandwidths):
        ref_shift = sum(_mmd_gauss(np.zeros(d), 1.0, m, 1.3, ell, d) for ell in np.atleast_1d(bw))
        for j, ref in enumerate((0.0, ref_shift)):
            se = vals[:, i, j].std(ddof=1) / math.sqrt(vals.shape[0])
            assert abs(vals[:, i, j].mean() - ref) < 4 * se, (bw, vals[:, i, j].mean(), ref, se)
        assert ref_shift > 20 * vals[:, i, 0].std(ddof=1) / math.sqrt(vals.shape[0])  # the test can tell them apart


def test_energy_distance_unbiased_against_the_gaussian_closed_form():
    # 1-D: E|Z| for Z ~ N(mu, v) is sqrt(2 v / pi) exp(-mu^2 / 2v) + mu (1 - 2 Phi(-mu / sqrt v)).
    def e_abs(mu, v):
        return math.sqrt(2 * v / math.pi) * math.exp(-(mu**2) / (2 * v)) + mu * (
            1 - 2 * stats.norm.cdf(-mu / math.sqrt(v))
        )

    m, s = 0.5, 1.5
    ref = 2 * e_abs(m, 1 + s**2) - e_abs(0, 2) - e_abs(0, 2 * s**2)
    n = 300

    def draws(key, mean, std):
        kx, ky = jax.random.split(key)
        return metrics.energy_distance(_gauss(kx, n, jnp.zeros(1), 1.0), _gauss(ky, n, jnp.full(1, mean), std))

    reps = _replicates(lambda k: jnp.stack([draws(k, 0.0, 1.0), draws(jax.random.fold_in(k, 1), m, s)]))
    for vals, target in ((reps[:, 0], 0.0), (reps[:, 1], ref)):
        se = vals.std(ddof=1) / math.sqrt(len(vals))
        assert abs(vals.mean() - target) < 4 * se, (vals.mean(), target, se)
    assert ref > 0.15  # 0.166: well separated from 0 at the measured se ~ 0.01


# -- precision / recall ---------------------------------------------------------------


def test_precision_recall_on_known_mode_structures():
    # Real: two well-separated modes. Generated with one mode dropped (mode collapse):
    # precision ~ 1, recall ~ 1/2. Same distribution: both high. Disjoint: both 0.
    n, d = 1000, 2
    ks = jax.random.split(jax.random.PRNGKey(0), 6)
    centres = jnp.array([[-4.0, 0.0], [4.0, 0.0]])
    real = centres[jnp.arange(n) % 2] + 0.5 * jax.random.normal(ks[0], (n, d))
    same = centres[jnp.arange(n) % 2] + 0.5 * jax.random.normal(ks[1], (n, d))
    collapsed = centres[:1] + 0.5 * jax.random.normal(ks[2], (n, d))
    far = jnp.array([[0.0, 20.0]]) + 0.5 * jax.random.normal(ks[3], (n, d))

    pr = metrics.precision_recall(real, same, block=300)
    assert float(pr.precision) > 0.9 and float(pr.recall) > 0.9, pr
    pr = metrics.precision_recall(real, collapsed, block=300)
    assert float(pr.precision) > 0.9 and abs(float(pr.recall) - 0.5) < 0.05, pr
    pr = metrics.precision_recall(real, far)
    assert float(pr.precision) == 0.0 and float(pr.recall) == 0.0, pr
    with pytest.raises(ValueError, match="`k`"):
        metrics.precision_recall(real[:3], same[:3], k=3)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="same dimension"):
        metrics.mmd(jnp.zeros((4, 2)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="`x`"):
        metrics.energy_distance(jnp.zeros(4), jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="`p`"):
        metrics.sliced_wasserstein(jax.random.PRNGKey(0), jnp.zeros((4, 2)), jnp.zeros((4, 2)), p=0.5)


def test_public_names_are_flat_reexports():
    # jdiff.metrics is a package of private modules; every public name lives at its top level.
    names = [
        "PrecisionRecall",
        "energy_distance",
        "frechet_distance",
        "frechet_distance_from_stats",
        "gaussian_stats",
        "mmd",
        "precision_recall",
        "sliced_wasserstein",
        "DigitClassifier",
        "classifier_accuracy",
        "frechet_digit_distance",
        "train_digit_classifier",
    ]
    for name in names:
        obj = getattr(metrics, name)
        assert obj.__module__.startswith("jdiff.metrics._"), (name, obj.__module__)


# -- the digit classifier -------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier():
    return metrics.train_digit_classifier(seed=0)


def test_digit_classifier_accuracy_and_frechet_digit_distance(classifier):
    model, acc = classifier
    assert acc >= 0.95, acc  # measured 0.983 on the 359 held-out 8x8 digits (seed 0)
    x, labels = (jnp.asarray(a) for a in load_digits())
    assert float(metrics.classifier_accuracy(model, x, labels)) > 0.97  # train + held-out
    assert model.features(x[:5]).shape == (5, 128)
    # FDD: two halves of the data set are close; a class-collapsed sample or noisy digits are far.
    half_a, half_b = x[0::2], x[1::2]
    fdd_same = metrics.frechet_digit_distance(model, half_a, half_b)
    fdd_ones = metrics.frechet_digit_distance(model, half_a, x[labels == 1])
    noisy = jnp.clip(half_b + 0.5 * jax.random.normal(jax.random.PRNGKey(0), half_b.shape, jnp.float32), -1, 1)
    fdd_noisy = metrics.frechet_digit_distance(model, half_a, noisy)
    assert fdd_ones > 20 * fdd_same and fdd_noisy > 5 * fdd_same, (fdd_same, fdd_ones, fdd_noisy)


def test_digit_classifier_is_deterministic_from_its_seed():
    model, acc = metrics.train_digit_classifier(seed=1, steps=100)
    model2, acc2 = metrics.train_digit_classifier(seed=1, steps=100)
    assert acc2 == acc
    x = jnp.linspace(-1, 1, 64, dtype=jnp.float32).reshape(1, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model2(x)))
    with pytest.raises(ValueError, match="dataset"):
        metrics.train_digit_classifier(seed=0, dataset="cifar")


# -- experiments/evaluate.py end to end -------------------------------------------------


@pytest.mark.slow
def test_evaluate_a_trained_toy_workdir(tmp_path):
    # Smoke test of the entry point (slow: trains a 6-step run first). Likelihood values of an
    # untrained model have no ground truth; this checks the plumbing, the JSON and finiteness.
    import json

    from experiments import _lib
    from experiments.configs import toy2d_fm

    workdir = str(tmp_path / "toy")
    _lib.train_and_evaluate(toy2d_fm.get_config("runlocal"), workdir)
    res = _lib.evaluate(workdir, num_examples=8, num_samples=64, batch_size=8, vlb_steps=10, elbo_time_samples=2)
    with open(res["json"]) as f:
        saved = json.load(f)
    for k in ("ode_bpd", "vlb_bpd", "elbo_bpd", "ode_nfe", "sliced_wasserstein", "mmd_rbf", "precision", "recall"):
        assert math.isfinite(saved[k]), (k, saved[k])
    assert saved["continuous_data"] and saved["divergence"] == "exact" and saved["num_examples"] == 8
    assert "ode_bpd" in _lib.format_table(res)
