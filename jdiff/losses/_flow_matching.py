"""Conditional flow matching and minibatch optimal-transport couplings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from jdiff._model import Model, check_model
from jdiff._shared import loss_batch, mean_data
from jdiff.losses._regression import target_sq_error
from jdiff.losses._time import sample_times, uniform_time

COUPLINGS = ("independent", "exact", "sinkhorn")


def ot_pairing(key, x0, x1, *, method: str = "exact", epsilon=1e-3, max_iterations=2000):
    """Minibatch optimal-transport pairing of x1 to x0 under the squared Euclidean cost.

    Returns indices j of shape (B,) such that (x0[i], x1[j[i]]) are the coupled pairs
    (Tong et al. 2023, OT-CFM; Pooladian et al. 2023). Runs inside `jax.jit`.

    Args:
        key: PRNG key (used by "sinkhorn" to draw j[i] from row i of the plan).
        x0, x1: (B, ...) batches.
        method: "exact" (the Hungarian algorithm of optax, via `ott.tools.unreg.hungarian`:
            a permutation, O(B^3)) or "sinkhorn" (entropic OT with ott-jax's Sinkhorn,
            regularization `epsilon` relative to the mean cost; j[i] ~ plan[i, :], which for
            small epsilon is the exact assignment).
        epsilon: Sinkhorn regularization as a fraction of the mean pairwise cost.
        max_iterations: Sinkhorn iteration cap.
    """
    # imported here: ott-jax is only needed for OT-CFM
    from ott.geometry import pointcloud

    if method not in ("exact", "sinkhorn"):
        raise ValueError(f"unknown OT method {method!r} for `method`; accepted: exact, sinkhorn")
    b = jnp.shape(x0)[0]
    xf = jax.lax.stop_gradient(jnp.reshape(x0, (b, -1)))
    yf = jax.lax.stop_gradient(jnp.reshape(x1, (b, -1)))
    # ott-jax relies on implicit rank promotion; allow it locally (the caller may run with "raise").
    with jax.numpy_rank_promotion("allow"):
        if method == "exact":
            from ott.tools import unreg

            _, out = unreg.hungarian(pointcloud.PointCloud(xf, yf))
            rows, cols = out.paired_indices
            return jnp.zeros((b,), cols.dtype).at[rows].set(cols)
        from ott.solvers import linear

        geom = pointcloud.PointCloud(xf, yf, epsilon=epsilon, relative_epsilon="mean")
        plan = linear.solve(geom, max_iterations=max_iterations).matrix
        return jax.random.categorical(key, jnp.log(jnp.maximum(plan, 1e-30)), axis=1)


def cfm_loss(
    model: Model,
    key: PRNGKeyArray,
    x0: Float[Array, " batch *_rest"],
    *,
    cond=None,
    coupling: str = "independent",
    time_sampler=uniform_time,
    t=None,
    x1=None,
    ot_epsilon=1e-3,
) -> Float[Array, " batch"]:
    """Conditional flow matching (Lipman et al. 2023; Liu et al. 2023) on any path.

        loss_i = mean_d || u_hat(x_t, t) - (alpha'(t) x0 + sigma'(t) x1) ||^2,  x_t = alpha x0 + sigma x1,

    along `model.path`, with u_hat = `model.velocity` (the model may predict any kind; it is
    converted to the PF-ODE velocity). x1 ~ N(0, I), or the given source batch `x1` (e.g.
    samples of another distribution), is paired with x0 by `coupling`: "independent" (CFM), or
    minibatch OT, "exact" or "sinkhorn" (OT-CFM, Tong et al. 2023; see `ot_pairing`,
    `ot_epsilon` its Sinkhorn regularization). With independent Gaussian x1 the minimizer is the
    marginal PF-ODE velocity E[u | x_t] of the path.

    Args:
        model: the `jdiff.Model` being trained.
        key: PRNG key (times, noise and the Sinkhorn draw).
        x0: (B, ...) data batch.
        cond: conditioning pytree passed to the model, or None.
        coupling: "independent", "exact" or "sinkhorn".
        time_sampler: a callable (key, shape, path, dtype) -> t (default `uniform_time`).
        t: optional (B,) or scalar times, overriding the sampler.
        x1: optional source batch of x0's shape (default: standard normal noise).
        ot_epsilon: Sinkhorn regularization as a fraction of the mean pairwise cost.
    Returns:
        (B,) per-example losses.
    """
    check_model(model)
    key, x0 = loss_batch(model, key, x0)
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r} for `coupling`; accepted: {', '.join(COUPLINGS)}")
    key_t, key_eps, key_ot = jax.random.split(key, 3)
    t = sample_times(key_t, x0, model.path, time_sampler, t)
    if x1 is None:
        x1 = jax.random.normal(key_eps, jnp.shape(x0), jnp.result_type(x0))
    elif jnp.shape(x1) != jnp.shape(x0):
        raise ValueError(f"`x1` has shape {jnp.shape(x1)} but `x0` has shape {jnp.shape(x0)}; they must match")
    else:
        x1 = model.state(x1, "x1").astype(x0.dtype)
    if coupling != "independent":
        x1 = x1[ot_pairing(key_ot, x0, x1, method=coupling, epsilon=ot_epsilon)]
    return mean_data(target_sq_error(model, "velocity", x0, x1, t, cond))
