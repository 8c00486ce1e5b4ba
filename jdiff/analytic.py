"""The exact Gaussian-mixture oracle: log p_t, score, denoiser and velocity for any path.

If x0 ~ sum_k w_k N(mu_k, S_k), then under a Gaussian path x_t = a x0 + s eps,

    x_t | k ~ N(a mu_k, C_k),     C_k = a^2 S_k + s^2 I,

so p_t is again a Gaussian mixture, and with responsibilities r_k(x_t) = p(k | x_t):

    score(x_t)    = -sum_k r_k C_k^{-1} (x_t - a mu_k)
    E[x0 | x_t]   = sum_k r_k (mu_k + a S_k C_k^{-1} (x_t - a mu_k))
    E[eps | x_t]  = -s score(x_t)

Every quantity is exact, which makes the mixture the test bed of every solver, loss,
guidance rule and likelihood estimator in jdiff. Methods act on one example x of shape
(D,) and a scalar t; `as_model(path, kind)` gives the batched `jdiff.Model` samplers expect.
Class labels, when given, tag components (several components may share a class) and
enable the class-conditional versions used for guidance.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jdiff import _checks, predictions
from jdiff._model import Model
from jdiff.paths import AbstractPath

__all__ = ["GaussianMixture"]


class GaussianMixture(eqx.Module):
    """A mixture of K Gaussians in D dimensions.

    Args:
        weights: (K,) mixture weights (normalized on construction).
        means: (K, D) component means.
        covs: (K, D, D) covariances; or give `stds` instead, (K,) isotropic or (K, D) diagonal.
        labels: optional (K,) integer class of each component.
    """

    weights: jax.Array
    means: jax.Array
    covs: jax.Array
    labels: jax.Array | None
    num_classes: int = eqx.field(static=True)

    def __init__(self, weights, means, covs=None, *, stds=None, labels=None):
        means = jnp.asarray(means)
        if means.ndim != 2:
            raise ValueError(f"`means` must have shape (K, D); got {means.shape}")
        k, d = means.shape
        weights = jnp.asarray(weights, means.dtype)
        if weights.shape != (k,):
            raise ValueError(f"`weights` must have shape ({k},) to match `means`; got {weights.shape}")
        if (covs is None) == (stds is None):
            raise ValueError("give exactly one of `covs` (K, D, D) and `stds` (K,) or (K, D)")
        if covs is None:
            stds = jnp.asarray(stds, means.dtype)
            if stds.shape not in ((k,), (k, d)):
                raise ValueError(f"`stds` must have shape ({k},) or ({k}, {d}); got {stds.shape}")
            stds = jnp.broadcast_to(stds.reshape(k, -1), (k, d))
            covs = jax.vmap(jnp.diag)(stds**2)
        covs = jnp.asarray(covs, means.dtype)
        if covs.shape != (k, d, d):
            raise ValueError(f"`covs` must have shape ({k}, {d}, {d}); got {covs.shape}")
        self.weights = weights / jnp.sum(weights)
        self.means = means
        self.covs = covs
        if labels is None:
            self.labels, self.num_classes = None, 0
        else:
            labels = jnp.asarray(labels, jnp.int32)
            if labels.shape != (k,):
                raise ValueError(f"`labels` must have shape ({k},); got {labels.shape}")
            self.labels, self.num_classes = labels, int(jnp.max(labels)) + 1

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # -- data distribution ---------------------------------------------------------
    def sample(self, key, n: int, *, return_components: bool = False):
        """Draw n samples (n, D); optionally also their component indices (n,)."""
        kc, kn = jax.random.split(key)
        comp = jax.random.categorical(kc, jnp.log(self.weights), shape=(n,))
        chol = jnp.linalg.cholesky(self.covs)[comp]
        z = jax.random.normal(kn, (n, self.dim), self.means.dtype)
        x = self.means[comp] + jnp.einsum("nij,nj->ni", chol, z)
        return (x, comp) if return_components else x

    def log_prob(self, x):
        """log p_0(x) of one example (D,)."""
        return self._log_prob(x, jnp.asarray(1.0, x.dtype), jnp.asarray(0.0, x.dtype))

    # -- marginals under a path ----------------------------------------------------
    def _component_terms(self, x, a, s):
        """Per component: log w_k + log N(x; a mu_k, C_k), and C_k^{-1}(x - a mu_k)."""
        d = self.dim
        cov = a * a * self.covs + s * s * jnp.eye(d, dtype=x.dtype)[None]
        chol = jnp.linalg.cholesky(cov)
        diff = x[None, :] - a * self.means  # (K, D)
        z = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
        prec_diff = jax.scipy.linalg.solve_triangular(chol, z[..., None], lower=True, trans=1)[..., 0]
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        logn = -0.5 * jnp.sum(z * z, -1) - 0.5 * logdet - 0.5 * d * math.log(2 * math.pi)
        return jnp.log(self.weights) + logn, prec_diff

    def _log_prob(self, x, a, s, class_mask=None):
        logits, _ = self._component_terms(x, a, s)
        if class_mask is not None:
            logits = jnp.where(class_mask, logits, -jnp.inf)
            return jax.nn.logsumexp(logits) - jax.nn.logsumexp(jnp.where(class_mask, jnp.log(self.weights), -jnp.inf))
        return jax.nn.logsumexp(logits)

    def _mask(self, cond):
        if cond is None:
            return None
        return self.labels == self.check_class(cond)

    def check_class(self, cond, name: str = "cond"):
        """`cond` (an int or int array) must name classes that have components: a class without
        one has no distribution. Raises a ValueError now when `cond` is concrete, at run time
        (`equinox.error_if`) when it is traced. Returns `cond` as an array."""
        if self.labels is None:
            raise ValueError(
                f"`{name}` was given but this GaussianMixture has no `labels` (class-conditional "
                "quantities need labels=(K,) on construction)"
            )
        concrete = _checks.is_concrete(self.labels)
        classes = sorted({int(v) for v in np.asarray(self.labels).tolist()}) if concrete else None
        accepted = f"the mixture's classes {classes}" if classes is not None else "a class of the mixture's `labels`"
        dtype = jnp.result_type(cond)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(f"`{name}` must be integer class labels, one of {accepted}; got dtype {dtype}")
        message = f"`{name}` names a class with no component; accepted: {accepted}"
        if _checks.is_concrete(cond, self.labels):  # before any jnp call (a tracer inside jit)
            arr = np.asarray(cond)
            bad = ~np.isin(arr, np.asarray(self.labels))
            if np.any(bad):
                raise ValueError(f"{message}; got {int(arr.reshape(-1)[int(np.argmax(bad.reshape(-1)))])}")
            return jnp.asarray(cond)
        cond = jnp.asarray(cond)
        labels = jnp.reshape(self.labels, (1,) * cond.ndim + (-1,))  # explicit ranks: rank promotion may raise
        return eqx.error_if(cond, ~jnp.any(cond[..., None] == labels, axis=-1), message)

    def _as(self, x, t, path):
        x = jnp.asarray(x)
        if x.shape != (self.dim,):
            raise ValueError(f"`x` must have shape ({self.dim},) (one example); got {x.shape}; use jax.vmap")
        return path.alpha(t).astype(x.dtype), path.sigma(t).astype(x.dtype)

    def marginal_log_prob(self, x, t, path: AbstractPath, cond=None):
        """log p_t(x), or log p_t(x | class cond)."""
        a, s = self._as(x, t, path)
        return self._log_prob(x, a, s, self._mask(cond))

    def _posterior(self, x, t, path, cond):
        a, s = self._as(x, t, path)
        logits, prec_diff = self._component_terms(x, a, s)
        mask = self._mask(cond)
        if mask is not None:
            logits = jnp.where(mask, logits, -jnp.inf)
        return jax.nn.softmax(logits), prec_diff, a, s

    def score(self, x, t, path: AbstractPath, cond=None):
        """grad_x log p_t(x) (class-conditional if `cond` is given)."""
        r, prec_diff, _, _ = self._posterior(x, t, path, cond)
        return -r @ prec_diff

    def denoiser(self, x, t, path: AbstractPath, cond=None):
        """E[x0 | x_t = x]."""
        r, prec_diff, a, _ = self._posterior(x, t, path, cond)
        post_means = self.means + a * jnp.einsum("kij,kj->ki", self.covs, prec_diff)
        return r @ post_means

    def predict(self, x, t, path: AbstractPath, cond=None, *, kind: str):
        """The exact prediction of any `kind` ("x0", "eps", "v", "score", "velocity")."""
        predictions.check_kind(kind)
        r, prec_diff, a, s = self._posterior(x, t, path, cond)
        score = -r @ prec_diff
        if kind == "score":
            return score
        x0 = r @ (self.means + a * jnp.einsum("kij,kj->ki", self.covs, prec_diff))
        eps = -s * score  # finite at s = 0, unlike (x - a x0) / s
        return predictions.from_x0_eps(x0, eps, kind, x, t, path)

    def class_log_posterior(self, x, t, path: AbstractPath):
        """log p_t(c | x) for c = 0 .. num_classes - 1 (the exact noisy classifier)."""
        if self.labels is None:
            raise ValueError("class posteriors need `labels` on the GaussianMixture")
        a, s = self._as(x, t, path)
        logits, _ = self._component_terms(x, a, s)
        onehot = jax.nn.one_hot(self.labels, self.num_classes, dtype=bool)  # (K, C)
        per_class = jnp.where(onehot, logits[:, None], -jnp.inf)
        return jax.nn.logsumexp(per_class, axis=0) - jax.nn.logsumexp(logits)

    def sample_class(self, key, n: int, cond: int):
        """n samples from the class-conditional data distribution p_0(x | c) (`cond` a class of `labels`)."""
        if jnp.ndim(cond) != 0:
            raise ValueError(f"`cond` must be one class label (a scalar int); got shape {jnp.shape(cond)}")
        mask = self._mask(cond)
        w = jnp.where(mask, self.weights, 0.0)
        return GaussianMixture(w, self.means, self.covs).sample(key, n)

    # -- as a model ----------------------------------------------------------------
    def as_model(self, path: AbstractPath, kind: str = "x0") -> Model:
        """The exact model of this mixture on `path` as a `jdiff.Model` predicting `kind`.

        Batched: x (N, D), t a scalar or (N,), cond None or (N,) class labels (then the
        class-conditional prediction of each example's class).
        """
        return Model(_MixtureNet(self, path, predictions.check_kind(kind)), path, kind)


class _MixtureNet(eqx.Module):
    """The batched exact prediction of a GaussianMixture (the `net` of `GaussianMixture.as_model`)."""

    mixture: GaussianMixture
    path: AbstractPath
    kind: str = eqx.field(static=True)

    def __call__(self, x, t, cond=None):
        n = x.shape[0]
        tb = jnp.broadcast_to(jnp.asarray(t, x.dtype), (n,))
        gm, path, kind = self.mixture, self.path, self.kind
        if cond is None:
            return jax.vmap(lambda xi, ti: gm.predict(xi, ti, path, kind=kind))(x, tb)
        if jnp.shape(cond) != (n,):
            raise ValueError(
                f"`cond` of the mixture's model must be None or one class label per example, shape "
                f"({n},); got shape {jnp.shape(cond)}"
            )
        cond = gm.check_class(cond)
        return jax.vmap(lambda xi, ti, ci: gm.predict(xi, ti, path, ci, kind=kind))(x, tb, cond)
