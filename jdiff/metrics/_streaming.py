"""Streaming feature statistics: mean and covariance (FID, FD-DINOv2) and the Inception Score,
accumulated batch by batch in float64 on the host, so 50k samples never sit in memory.

    stats = FeatureStats.empty(2048)
    for batch in ...:
        stats = stats.update(features(batch))          # any batch sizes, any order
    mu, sigma = stats.mean_cov()
    save_stats("fid_stats.npz", mu, sigma)             # pytorch-fid's layout: keys mu, sigma
    fid = frechet_distance_from_stats(mu, sigma, *load_stats("ref.npz"))

Shards from other devices or processes combine with `merge` (Chan, Golub & LeVeque's pairwise
update: exact in exact arithmetic, and it never forms the large raw second moment sum x x^T
whose difference with n mu mu^T cancels catastrophically when |mu| >> the spread).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = ["FeatureStats", "InceptionScoreStats", "load_stats", "save_stats"]


def _host64(x, name) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2:
        raise ValueError(f"`{name}` must be a batch of feature vectors (N, D); got shape {a.shape}")
    return a


class FeatureStats(NamedTuple):
    """Count, mean (D,) and centred scatter m2 = sum (x - mean)(x - mean)^T (D, D), float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

    @classmethod
    def of(cls, features) -> FeatureStats:
        """The statistics of one batch of features (N, D)."""
        f = _host64(features, "features")
        mean = f.mean(0) if f.shape[0] else np.zeros(f.shape[1])
        c = f - mean
        return cls(int(f.shape[0]), mean, c.T @ c)

    def update(self, features) -> FeatureStats:
        """These statistics with one more batch of features (N, D)."""
        return self.merge(FeatureStats.of(features))

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The statistics of the union of both sample sets (Chan et al. 1979)."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"cannot merge statistics of dimension {self.mean.shape[0]} and {other.mean.shape[0]}")
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        return FeatureStats(n, mean, m2)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma): the mean and the unbiased covariance (divided by N - 1), as pytorch-fid."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples; these statistics have {self.count}")
        return self.mean.copy(), self.m2 / (self.count - 1)

    def to_arrays(self, prefix: str = "") -> dict:
        """{prefix + "count" / "mean" / "m2": array} for an .npz (resumable evaluations)."""
        return {f"{prefix}count": np.int64(self.count), f"{prefix}mean": self.mean, f"{prefix}m2": self.m2}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> FeatureStats:
        return cls(
            int(arrays[f"{prefix}count"]),
            np.asarray(arrays[f"{prefix}mean"], np.float64),
            np.asarray(arrays[f"{prefix}m2"], np.float64),
        )


def _log_softmax64(logits) -> np.ndarray:
    z = _host64(logits, "logits")
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class InceptionScoreStats(NamedTuple):
    """Per-split sums for the Inception Score over a known number of samples, in any order.

    IS = exp(E_x KL(p(y|x) || p(y))) on each of `splits` contiguous index ranges (sample i is in
    split k when k N / S <= i < (k + 1) N / S, as the original code slices its predictions), and
    E_x KL = E_x[sum_y p log p] - sum_y p_bar log p_bar with p_bar = E_x p(y|x): both terms are
    sums over samples, so the score streams exactly.
    """

    num_samples: int
    count: np.ndarray  # (S,)
    sum_p: np.ndarray  # (S, K)
    sum_plogp: np.ndarray  # (S,)

    @classmethod
    def empty(cls, num_samples: int, num_classes: int, splits: int = 10) -> InceptionScoreStats:
        if not 1 <= splits <= num_samples:
            raise ValueError(f"`splits` must be in 1..num_samples ({num_samples}); got {splits}")
        return cls(int(num_samples), np.zeros(splits, np.int64), np.zeros((splits, num_classes)), np.zeros(splits))

    def update(self, logits, indices) -> InceptionScoreStats:
        """Add samples with class logits (N, K) and global sample indices (N,) in [0, num_samples)."""
        logp = _log_softmax64(logits)
        idx = np.asarray(indices, np.int64)
        if idx.shape != (logp.shape[0],) or (idx.size and (idx.min() < 0 or idx.max() >= self.num_samples)):
            raise ValueError(
                f"`indices` must be ({logp.shape[0]},) sample indices in [0, {self.num_samples}); got shape {idx.shape}"
            )
        splits = self.count.shape[0]
        bounds = np.arange(1, splits) * self.num_samples // splits
        k = np.searchsorted(bounds, idx, side="right")
        p = np.exp(logp)
        count, sum_p, sum_plogp = self.count.copy(), self.sum_p.copy(), self.sum_plogp.copy()
        np.add.at(count, k, 1)
        np.add.at(sum_p, k, p)
        np.add.at(sum_plogp, k, np.sum(p * logp, axis=1))
        return InceptionScoreStats(self.num_samples, count, sum_p, sum_plogp)

    def merge(self, other: InceptionScoreStats) -> InceptionScoreStats:
        return InceptionScoreStats(
            self.num_samples, self.count + other.count, self.sum_p + other.sum_p, self.sum_plogp + other.sum_plogp
        )

    def scores(self) -> np.ndarray:
        """The score of each split (S,)."""
        if np.any(self.count == 0):
            raise ValueError("every Inception Score split needs samples; some are empty")
        p_bar = self.sum_p / self.count[:, None]
        entropy_bar = np.sum(np.where(p_bar > 0, p_bar * np.log(np.where(p_bar > 0, p_bar, 1.0)), 0.0), axis=1)
        return np.exp(self.sum_plogp / self.count - entropy_bar)

    def mean_std(self) -> tuple[float, float]:
        """(mean, std) of the split scores: the numbers papers report as IS +- std."""
        s = self.scores()
        return float(np.mean(s)), float(np.std(s))

    def to_arrays(self, prefix: str = "") -> dict:
        return {
            f"{prefix}num_samples": np.int64(self.num_samples),
            f"{prefix}count": self.count,
            f"{prefix}sum_p": self.sum_p,
            f"{prefix}sum_plogp": self.sum_plogp,
        }

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> InceptionScoreStats:
        return cls(
            int(arrays[f"{prefix}num_samples"]),
            np.asarray(arrays[f"{prefix}count"], np.int64),
            np.asarray(arrays[f"{prefix}sum_p"], np.float64),
            np.asarray(arrays[f"{prefix}sum_plogp"], np.float64),
        )


def save_stats(path, mu, sigma, **extra) -> None:
    """Write reference statistics in the common .npz layout (keys `mu`, `sigma`, as pytorch-fid's
    `--save-stats` and the TTUR / EDM .npz files); `extra` arrays (e.g. num_samples) ride along."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"`mu` must be (D,) and `sigma` (D, D); got {mu.shape} and {sigma.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, mu=mu, sigma=sigma, **extra)


def load_stats(path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a statistics .npz with keys `mu` and `sigma` (pytorch-fid, TTUR, EDM layouts)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"statistics file {path!r} not found")
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z.files or "sigma" not in z.files:
            raise ValueError(f"statistics file {path!r} must hold arrays `mu` and `sigma`; it has {', '.join(z.files)}")
        mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"statistics file {path!r}: `mu` must be (D,) and `sigma` (D, D); got {mu.shape}, {sigma.shape}"
        )
    return mu, sigma
