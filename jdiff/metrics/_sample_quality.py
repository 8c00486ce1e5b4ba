"""Sample-quality metrics: two samples x (N, D) and y (M, D) -> a number.

All are pure functions of arrays with explicit keys; samples are flattened to (N, D).
The unbiased estimators (mmd, energy_distance) have expectation exactly 0 for two samples
of one distribution (they can be negative); sliced Wasserstein, Frechet distance and
precision / recall are biased at finite N (the bias shrinks as N grows).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PrecisionRecall",
    "energy_distance",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "mmd",
    "precision_recall",
    "sliced_wasserstein",
]


def _flat(x, name):
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"`{name}` must be a batch of samples (N, ...); got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def _pair(x, y):
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    dtype = jnp.result_type(x, y, float)
    return x.astype(dtype), y.astype(dtype)


def _sq_dists(a, b):
    """Pairwise squared Euclidean distances (N, M), via |a|^2 + |b|^2 - 2 a.b, clipped at 0."""
    d2 = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(d2, 0.0)


def _offdiag_mean(k):
    n = k.shape[0]
    return (jnp.sum(k) - jnp.trace(k)) / (n * (n - 1))


# -----------------------------------------------------------------------------------
# Low-dimensional sample distances
# -----------------------------------------------------------------------------------


def sliced_wasserstein(key, x, y, *, num_projections: int = 256, p: float = 2.0):
    """Sliced p-Wasserstein distance (mean over directions of W_p^p, then the p-th root).

    SW_p(mu, nu)^p = E_theta W_p^p(theta#mu, theta#nu), theta uniform on the unit sphere.
    Each 1-D W_p compares quantile functions: sorted projections when N = M, otherwise
    both empirical quantile functions at max(N, M) mid-point levels (i + 1/2)/K.
    For N(m1, S) vs N(m2, S): SW_2^2 = |m1 - m2|^2 / D.

    Args:
        key: PRNG key for the random directions.
        x, y: samples (N, ...) and (M, ...).
        num_projections: number of random directions (Monte Carlo over the sphere).
        p: the order p >= 1.
    """
    if p < 1:
        raise ValueError(f"`p` must be >= 1; got {p}")
    return _sliced_wasserstein(key, *_pair(x, y), num_projections, float(p))


@partial(jax.jit, static_argnums=(3, 4))
def _sliced_wasserstein(key, x, y, num_projections, p):
    theta = jax.random.normal(key, (x.shape[1], num_projections), x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    px, py = jnp.sort(x @ theta, axis=0), jnp.sort(y @ theta, axis=0)
    if px.shape[0] != py.shape[0]:
        k = max(px.shape[0], py.shape[0])
        levels = (jnp.arange(k, dtype=x.dtype) + 0.5) / k
        # The empirical quantile function of n sorted values at level q is the value of
        # rank ceil(q n) (inverse of the step CDF).
        quantiles = lambda v: v[jnp.clip(jnp.ceil(levels * v.shape[0]).astype(int) - 1, 0, v.shape[0] - 1)]
        px, py = quantiles(px), quantiles(py)
    return jnp.mean(jnp.abs(px - py) ** p) ** (1.0 / p)


def _bandwidths(bandwidth):
    bw = jnp.atleast_1d(jnp.asarray(bandwidth, float))
    return bw


def mmd(x, y, *, bandwidth=1.0):
    """Unbiased squared maximum mean discrepancy with an RBF kernel (Gretton et al. 2012, eq. 3).

    k(a, b) = sum_l exp(-|a - b|^2 / (2 l^2)) over the bandwidths l in `bandwidth` (a scalar
    or a sequence: a sum of RBF kernels is characteristic too). The U-statistic drops the
    diagonal terms, so E[mmd] = MMD^2 exactly (0 for one distribution; it can be negative).
    For isotropic Gaussians the population value has a closed form (tests/test_metrics.py).

    Args:
        x, y: samples (N, ...) and (M, ...), N, M >= 2.
        bandwidth: RBF length scale(s) l, in the units of the data.
    """
    x, y = _pair(x, y)
    bw = _bandwidths(bandwidth).astype(x.dtype)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("`x` and `y` need at least 2 samples each for the unbiased MMD")

    def k(a, b):
        d2 = _sq_dists(a, b)
        return jnp.sum(jnp.exp(-d2[..., None] / (2.0 * bw[None, None, :] ** 2)), -1)

    return _offdiag_mean(k(x, x)) + _offdiag_mean(k(y, y)) - 2.0 * jnp.mean(k(x, y))


def energy_distance(x, y):
    """Unbiased energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013).

    Zero in expectation iff the distributions agree; equals 2 x (Cramer distance) in 1-D.
    Note: the square-root of the pairwise squared distances has an infinite derivative at
    0, so this function is not meant to be differentiated.
    """
    x, y = _pair(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("`x` and `y` need at least 2 samples each for the unbiased energy distance")
    dist = lambda a, b: jnp.sqrt(_sq_dists(a, b))
    return 2.0 * jnp.mean(dist(x, y)) - _offdiag_mean(dist(x, x)) - _offdiag_mean(dist(y, y))


# -----------------------------------------------------------------------------------
# Frechet distance
# -----------------------------------------------------------------------------------


def gaussian_stats(features):
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64 on the host."""
    f = np.asarray(_flat(features, "features"), np.float64)
    if f.shape[0] < 2:
        raise ValueError(f"`features` needs at least 2 rows for a covariance; got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_eigvals(w, dim):
    """Eigenvalues of a symmetric PSD matrix with round-off removed: eigh's error is ~eps * max|w| per
    eigenvalue, so values below dim * eps * max|w| are zero (their square roots, ~1e-8 each, would
    otherwise add up to ~1e-6 of spurious distance over a near-singular covariance's null space)."""
    return np.where(w > dim * np.finfo(np.float64).eps * np.max(np.abs(w), initial=0.0), w, 0.0)


def _psd_sqrt(a):
    """Symmetric square root of a symmetric PSD matrix via eigh (round-off eigenvalues zeroed)."""
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    return (v * np.sqrt(_psd_eigvals(w, a.shape[0]))) @ v.T


def frechet_distance_from_stats(mu1, cov1, mu2, cov2) -> float:
    """Frechet (2-Wasserstein^2) distance between N(mu1, cov1) and N(mu2, cov2).

    d^2 = |mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2)   (Dowson & Landau 1982).

    Computed in float64 with symmetric eigendecompositions: the inner matrix
    C1^1/2 C2 C1^1/2 is symmetric PSD, so its square root's trace is the sum of the square
    roots of its eigenvalues. This avoids `scipy.linalg.sqrtm` of the non-symmetric product
    C1 C2 (pytorch-fid's route), which returns complex round-off for near-singular
    covariances (Inception features with N < 2048).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
        raise ValueError(
            f"`mu1`, `mu2` must be (D,) and `cov1`, `cov2` (D, D); got {mu1.shape}, {mu2.shape}, "
            f"{cov1.shape}, {cov2.shape}"
        )
    s1 = _psd_sqrt(cov1)
    inner = np.linalg.eigvalsh(0.5 * ((s1 @ cov2 @ s1) + (s1 @ cov2 @ s1).T))
    tr_sqrt = np.sum(np.sqrt(_psd_eigvals(inner, inner.shape[0])))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def frechet_distance(x, y, feature_fn=None, *, batch_size: int = 1000) -> float:
    """Frechet distance between Gaussian fits to feature_fn(x) and feature_fn(y).

    Args:
        x, y: samples (N, ...) and (M, ...).
        feature_fn: maps a batch to features (B, F); None uses the flattened samples
            themselves. With Inception-v3 pool features this is FID (Heusel et al. 2017);
            with `DigitClassifier.features` it is the Frechet digit distance.
        batch_size: feature_fn is applied to batches of this many samples.
    """
    if feature_fn is None:
        feature_fn = lambda b: b

    def feats(a):
        a = jnp.asarray(a)
        return np.concatenate(
            [np.asarray(_flat(feature_fn(a[i : i + batch_size]), "features")) for i in range(0, a.shape[0], batch_size)]
        )

    return frechet_distance_from_stats(*gaussian_stats(feats(x)), *gaussian_stats(feats(y)))


# -----------------------------------------------------------------------------------
# k-NN precision and recall
# -----------------------------------------------------------------------------------


class PrecisionRecall(NamedTuple):
    """precision: fraction of generated samples inside the real manifold estimate;
    recall: fraction of real samples inside the generated manifold estimate."""

    precision: jax.Array
    recall: jax.Array


@partial(jax.jit, static_argnums=2)
def _kth_nn_dist(rows, a, k):
    """Distance from each of `rows` (a block of a) to its k-th nearest row of a, itself excluded."""
    d2 = _sq_dists(rows, a)
    # The k + 1 smallest include the point itself at distance 0.
    return jnp.sqrt(-jax.lax.top_k(-d2, k + 1)[0][:, k])


@jax.jit
def _inside(rows, support, radii):
    """Whether each of `rows` lies within radii[j] of some support row j."""
    return jnp.any(_sq_dists(rows, support) <= (radii**2)[None, :], axis=1)


def _blocks(fn, query, block, *args):
    # Pairwise distances in blocks of rows: memory O(block x N). The last block is padded
    # to the block size so every block reuses one compiled program.
    n = query.shape[0]
    pad = (-n) % block if n > block else 0
    q = jnp.concatenate([query, jnp.repeat(query[-1:], pad, 0)]) if pad else query
    out = jnp.concatenate([fn(q[i : i + block], *args) for i in range(0, q.shape[0], block)])
    return out[:n]


def precision_recall(real, fake, *, k: int = 3, feature_fn=None, block: int = 1024) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019), k = 3 as in the paper.

    The manifold of a sample set is the union of balls around each sample with radius the
    distance to its k-th nearest neighbour in that set. Precision = fraction of `fake`
    inside the real manifold; recall = fraction of `real` inside the fake manifold.

    Args:
        real, fake: samples (N, ...) and (M, ...).
        k: the neighbour defining each ball's radius.
        feature_fn: optional map to a feature space (the paper uses VGG-16 features).
        block: rows per block of the pairwise-distance computation (memory bound).
    """
    if feature_fn is not None:
        real, fake = feature_fn(jnp.asarray(real)), feature_fn(jnp.asarray(fake))
    real, fake = _pair(real, fake)
    if not 1 <= k < min(real.shape[0], fake.shape[0]):
        raise ValueError(f"`k` must be in [1, min(N, M) - 1]; got {k} for N={real.shape[0]}, M={fake.shape[0]}")
    r_real = _blocks(_kth_nn_dist, real, block, real, k)
    r_fake = _blocks(_kth_nn_dist, fake, block, fake, k)
    precision = jnp.mean(_blocks(_inside, fake, block, real, r_real).astype(real.dtype))
    recall = jnp.mean(_blocks(_inside, real, block, fake, r_fake).astype(real.dtype))
    return PrecisionRecall(precision, recall)
