"""Streaming feature statistics, the Frechet distance and the Inception Score against closed
forms and whole-set numpy computations."""

import itertools

import numpy as np
import pytest

from jdiff import metrics
from jdiff.metrics import FeatureStats, InceptionScoreStats

# -- Frechet distance between Gaussians: closed forms ---------------------------------------


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def test_frechet_distance_two_by_two_closed_form():
    # For 2x2 SPD A, B: tr sqrt(A^1/2 B A^1/2) = sqrt(tr(AB) + 2 sqrt(det A det B)), because a 2x2
    # PSD M has tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)). A and B do not commute here.
    a = np.array([[2.0, 0.6], [0.6, 0.5]])
    b = np.array([[1.0, -0.3], [-0.3, 3.0]])
    mu1, mu2 = np.array([0.5, -1.0]), np.array([2.0, 1.0])
    tr_sqrt = np.sqrt(np.trace(a @ b) + 2.0 * np.sqrt(np.linalg.det(a) * np.linalg.det(b)))
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(a) + np.trace(b) - 2.0 * tr_sqrt
    assert metrics.frechet_distance_from_stats(mu1, a, mu2, b) == pytest.approx(exact, rel=1e-12)


def test_frechet_distance_near_singular_covariances_closed_form():
    # Commuting covariances U diag(l1) U^T, U diag(l2) U^T of rank 10 in 64 dimensions (as Inception
    # features with fewer samples than 2048 give): d^2 = |dmu|^2 + sum (sqrt l1 - sqrt l2)^2 exactly.
    d, r = 64, 10
    u = _rotation(d, 0)
    rng = np.random.default_rng(1)
    l1 = np.concatenate([rng.uniform(0.1, 4.0, r), np.zeros(d - r)])
    l2 = np.concatenate([rng.uniform(0.1, 4.0, r), np.full(d - r, 1e-14)])
    c1, c2 = (u * l1) @ u.T, (u * l2) @ u.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    got = metrics.frechet_distance_from_stats(mu1, c1, mu2, c2)
    assert got == pytest.approx(exact, rel=1e-12)  # scipy.linalg.sqrtm (pytorch-fid) is off by ~1e-6 + 1e-7j here
    # one singular covariance against itself: only the means differ
    assert metrics.frechet_distance_from_stats(mu1, c1, mu2, c1) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_fid_between_two_known_gaussians_from_streamed_samples():
    # Samples of N(m1, S1) and N(m2, S2) streamed in batches: the distance of the fitted Gaussians
    # converges to the exact one (sampling error ~ 1e-2 at this N), and the streamed statistics are
    # exactly the whole-set ones.
    d, n = 4, 200_000
    rng = np.random.default_rng(2)
    s1 = _rotation(d, 3) @ np.diag([1.0, 0.5, 0.2, 2.0]) @ _rotation(d, 3).T
    s2 = np.diag([0.7, 1.5, 0.3, 1.0])
    m1, m2 = np.zeros(d), np.array([0.3, -0.2, 0.0, 0.5])
    x = rng.multivariate_normal(m1, s1, n)
    y = rng.multivariate_normal(m2, s2, n)
    sx, sy = FeatureStats.empty(d), FeatureStats.empty(d)
    for i in range(0, n, 30_000):
        sx, sy = sx.update(x[i : i + 30_000]), sy.update(y[i : i + 30_000])
    w12 = np.linalg.eigvalsh(_sqrtm(s1) @ s2 @ _sqrtm(s1))
    exact = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(w12))
    fid = metrics.frechet_distance_from_stats(*sx.mean_cov(), *sy.mean_cov())
    assert fid == pytest.approx(exact, abs=0.02)
    assert fid == pytest.approx(
        metrics.frechet_distance_from_stats(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T)), rel=1e-10
    )


def _sqrtm(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(w)) @ v.T


# -- streaming mean / covariance --------------------------------------------------------------


def test_streaming_stats_equal_numpy_on_the_whole_set():
    # Batches of uneven sizes, features with a mean 1e4 times their spread (where the raw-moment
    # formula sum x x^T / n - mu mu^T loses ~8 digits), merged in two different orders.
    rng = np.random.default_rng(0)
    x = 1e4 + rng.standard_normal((5000, 16)) @ rng.standard_normal((16, 16))
    sizes = [1, 7, 500, 992, 1500, 2000]
    bounds = np.cumsum([0] + sizes)
    parts = [FeatureStats.of(x[a:b]) for a, b in itertools.pairwise(bounds)]
    forward = FeatureStats.empty(16)
    for p in parts:
        forward = forward.merge(p)
    tree = (parts[0].merge(parts[1]).merge(parts[2])).merge(parts[3].merge(parts[4].merge(parts[5])))
    mu, sigma = np.mean(x, 0), np.cov(x, rowvar=False)
    for s in (forward, tree):
        assert s.count == 5000
        np.testing.assert_allclose(s.mean_cov()[0], mu, rtol=1e-14)
        np.testing.assert_allclose(s.mean_cov()[1], sigma, rtol=1e-9, atol=1e-9 * np.abs(sigma).max())
    # float32 features are accumulated in float64
    s32 = FeatureStats.empty(16).update(x[:100].astype(np.float32))
    assert s32.m2.dtype == np.float64
    back = FeatureStats.from_arrays(forward.to_arrays("fid_"), "fid_")
    np.testing.assert_array_equal(back.m2, forward.m2)


def test_stats_files_use_the_common_layout(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(5), np.eye(5)
    metrics.save_stats(tmp_path / "ref.npz", mu, sigma, num_samples=np.int64(10))
    with np.load(tmp_path / "ref.npz") as z:  # what pytorch-fid's loader reads
        np.testing.assert_array_equal(z["mu"], mu)
        np.testing.assert_array_equal(z["sigma"], sigma)
    m2, s2 = metrics.load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(m2, mu)
    np.testing.assert_array_equal(s2, sigma)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match="must hold arrays `mu` and `sigma`; it has mean"):
        metrics.load_stats(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        metrics.load_stats(tmp_path / "absent.npz")


# -- Inception Score ----------------------------------------------------------------------------


def _reference_inception_score(logits, splits):
    # The original computation (openai/improved-gan inception_score): softmax, contiguous splits,
    # KL(p(y|x) || p(y)) averaged in each split, exponentiated; mean and std over splits.
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    n = p.shape[0]
    scores = []
    for k in range(splits):
        part = p[k * n // splits : (k + 1) * n // splits]
        py = part.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
    return np.mean(scores), np.std(scores)


def test_streaming_inception_score_equals_the_whole_set_computation():
    rng = np.random.default_rng(0)
    n, k = 1003, 1008
    logits = 3.0 * rng.standard_normal((n, k))
    stats = InceptionScoreStats.empty(n, k, splits=10)
    order = rng.permutation(n)  # shards arrive in any order
    for chunk in np.array_split(order, 7):
        stats = stats.update(logits[chunk], chunk)
    mean, std = stats.mean_std()
    ref_mean, ref_std = _reference_inception_score(logits, 10)
    assert mean == pytest.approx(ref_mean, rel=1e-12)
    assert std == pytest.approx(ref_std, rel=1e-9)


def test_inception_score_closed_forms():
    # Uniform predictions: p(y|x) = p(y), IS = 1. Confident predictions spread evenly over K
    # classes: KL = log K, IS = K.
    k = 10
    stats = InceptionScoreStats.empty(100, k, splits=1).update(np.zeros((100, k)), np.arange(100))
    assert stats.mean_std()[0] == pytest.approx(1.0, abs=1e-12)
    confident = 60.0 * np.eye(k)[np.arange(100) % k]
    stats = InceptionScoreStats.empty(100, k, splits=1).update(confident, np.arange(100))
    assert stats.mean_std()[0] == pytest.approx(k, rel=1e-9)
    with pytest.raises(ValueError, match="sample indices in"):
        stats.update(confident[:2], np.array([0, 100]))
