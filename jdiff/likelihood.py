"""Log-likelihoods of data under a diffusion / flow model, and their units.

    ode_log_likelihood    log p(x) under the probability-flow ODE (exact trace or `Hutchinson`)
    Hutchinson            the stochastic trace estimator of the divergence (number and law of probes)
    dequantize            integer data k -> x = low + (k + u) * bin_width, u ~ U[0, 1)^D
    bits_per_dim          continuous log-density of dequantized, scaled data -> discrete bits/dim
    nats_to_bits_per_dim  a bound on a discrete log-probability in nats -> bits/dim (no offset)
    vlb_bits_per_dim      the discrete DDPM bound L_T + sum L_{t-1} + L_0 in bits/dim (all T terms)
    elbo_bits_per_dim     the continuous-time (VDM) bound in bits/dim, averaged over time samples

Every function takes the bound model first (`jdiff.Model`: network, path, prediction kind),
then the PRNG key where one is required, then the data, then keyword-only options.

The probability-flow ODE
------------------------
Every model in jdiff defines a velocity u(x, t) = a' x0_hat + s' eps_hat
(`jdiff.Model.velocity`), whose flow dx/dt = u carries p_{t0} to p_{t1}.
Along a trajectory the log-density obeys the instantaneous change of variables
(Chen et al. 2018, "Neural ODEs"; Song et al. 2021, "Score-based generative modeling"):

    d/dt log p_t(x_t) = -div u(x_t, t),   so   log p_{t0}(x) = log p_{t1}(x_{t1}) + int_{t0}^{t1} div u dt.

We integrate the augmented state (x, delta) with d/dt [x, delta] = [u, div u] from the data
end t0 = path.t_min to the noise end t1 = path.t_max with an adaptive diffrax solver, and
add the prior's log-density at x_{t1}. Two approximations are inherent and documented:

* If t_min > 0 (or sigma(t_min) > 0) the result is the log-density of the slightly
  noised data x_{t_min} = a(t_min) x0 + s(t_min) eps, not of x0 itself; for a path with
  a(t_min) != 1 it is also a density of a rescaled variable (log p_{t_min}(x)).
* The prior is N(0, sigma(t_max)^2 I) (`path.prior_log_prob`). Where alpha(t_max) != 0
  (VPLinear: alpha(1) = exp(-B(1)/2) ~ 6.6e-3) the true p_{t_max} is not exactly that
  Gaussian; pass `prior_log_prob=` to use another (the tests pass the oracle's exact
  log p_{t_max}, which makes the estimator exact up to solver tolerance).

The divergence is either exact (`divergence=None`: the trace of the D x D Jacobian from
`jax.jacfwd`, D forward-mode passes; for low dimensions) or Hutchinson's estimator
(`divergence=Hutchinson(num_probes, probe)`, Hutchinson 1989; Grathwohl et al. 2018, FFJORD):
div u ~ (1/M) sum_m v_m^T (du/dx) v_m with M probes v_m (Rademacher or Gaussian, E[v v^T] = I),
each product one `jax.jvp`. The probes are drawn once per solve and held fixed along the
trajectory, so the estimate of int div u dt is v^T (int J dt) v: unbiased, and the ODE
stays an ODE (smooth in t) for the adaptive solver.

Units
-----
Image data are integers k in {0, ..., K-1} per dimension; the model sees x = low + (k + u) h
with bin width h (8-bit data scaled to [-1, 1]: low = -1, h = 2/256; DDPM / score_sde).
For y = k + u (a density on [0, K)^D whose integral over a unit bin is a discrete
probability, Theis et al. 2016, Ho et al. 2019), Jensen gives

    log P(k) >= E_u log q_y(k + u) = E_u log q_x(x) + D log h,

because dx/dy = h in every coordinate. So discrete bits/dim = -(log q_x + D log h) / (D ln 2)
= -log q_x / (D ln 2) - log2 h. For h = 2/256 the offset is log2(128) = 7 bits, which is
score_sde's unexplained `offset = 7. - inverse_scaler(-1.)` (8 for data in [0, 1], where h = 1/256).
Bounds that already integrate a discretized decoder over each bin (DDPM's L_0, VDM) bound
the discrete log P(k) directly and convert without any offset (`nats_to_bits_per_dim`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from jdiff import losses
from jdiff._checks import check_batched, check_key
from jdiff._model import Model, check_model
from jdiff.samplers import diffrax_evals
from jdiff.samplers._ode import check_time_span

__all__ = [
    "BIN_WIDTH_8BIT",
    "PROBES",
    "Hutchinson",
    "ODELikelihood",
    "bits_per_dim",
    "dequantize",
    "elbo_bits_per_dim",
    "nats_to_bits_per_dim",
    "ode_log_likelihood",
    "ode_log_likelihood_batch",
    "vlb_bits_per_dim",
]

PROBES = ("rademacher", "gaussian")


class ODELikelihood(NamedTuple):
    """log_prob: log p_{t0}(x) in nats (one per example); nfe: evaluations of the ODE vector field."""

    log_prob: jax.Array
    nfe: jax.Array


class Hutchinson(eqx.Module):
    """Hutchinson's unbiased estimator of the divergence, tr(du/dx) ~ (1/M) sum_m v_m^T (du/dx) v_m.

    Args:
        num_probes: M, the probes per solve (averaged; the variance falls as 1/M). Each costs one
            `jax.jvp` per vector-field evaluation, against D for the exact trace.
        probe: the law of each probe v, with E[v v^T] = I: "rademacher" (entries +-1) or
            "gaussian" (N(0, I)). With S = (J + J^T)/2, Var[v^T J v] = 2 ||S||_F^2 for Gaussian
            probes and 2 (||S||_F^2 - sum_i S_ii^2) for Rademacher probes, the minimum over
            such probes (Hutchinson 1989).
    """

    num_probes: int = eqx.field(static=True, default=1)
    probe: str = eqx.field(static=True, default="rademacher")

    def __check_init__(self):
        if isinstance(self.num_probes, bool) or not isinstance(self.num_probes, int) or self.num_probes < 1:
            raise ValueError(f"`num_probes` must be a positive integer; got {self.num_probes!r}")
        if self.probe not in PROBES:
            raise ValueError(f"unknown probe {self.probe!r} for `probe`; accepted: {', '.join(PROBES)}")

    def sample(self, key, shape, dtype=jnp.float32):
        """`num_probes` independent probes v of `shape`, stacked on a leading axis: (M, *shape)."""
        full = (self.num_probes, *tuple(shape))
        if self.probe == "rademacher":
            return jax.random.rademacher(key, full, dtype)
        return jax.random.normal(key, full, dtype)


def _check_divergence(divergence):
    if divergence is not None and not isinstance(divergence, Hutchinson):
        raise TypeError(
            "`divergence` must be None (the exact trace of the Jacobian) or a "
            f"jdiff.likelihood.Hutchinson(num_probes, probe) estimator; got {divergence!r}"
        )
    return divergence


def ode_log_likelihood(
    model: Model,
    x,
    *,
    cond=None,
    key=None,
    divergence: Hutchinson | None = None,
    probes=None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t0: float | None = None,
    t1: float | None = None,
    prior_log_prob=None,
    solver=None,
    max_steps: int = 4096,
    adjoint=None,
) -> ODELikelihood:
    """log p_{t0}(x) of ONE example under the probability-flow ODE of `model`.

    Args:
        model: a `jdiff.Model` (network, path, prediction kind); called on a batch of one
            (x[None], a scalar t, cond with a leading axis of one).
        x: one example, any shape (e.g. (D,) or (H, W, C)); the data end of the ODE. Integrated
            in `model.policy.state_dtype(x)` (at least float32: a bfloat16 x is promoted).
        cond: this example's conditioning (any pytree, unbatched) or None.
        key: PRNG key for the Hutchinson probes (with a `Hutchinson` divergence and no `probes`).
        divergence: None for the exact divergence (trace of the Jacobian, D forward passes; low
            dimensions), or `Hutchinson(num_probes, probe)` for the unbiased stochastic estimate.
        probes: explicit Hutchinson probes of shape (num_probes, *x.shape) instead of drawing
            them from `key` (common random numbers across models; the tests use basis probes).
        rtol, atol: the adaptive solver's relative / absolute tolerances (on x and log p).
        t0, t1: integration range, default [model.path.t_min, model.path.t_max].
        prior_log_prob: log-density of x_{t1}, `fn(x_t1) -> scalar`; default the path's
            `prior_log_prob`, N(0, sigma(t_max)^2 I) (approximate where alpha(t_max) != 0; see
            the module docstring). Pass one whenever t1 != t_max.
        solver: an explicit Runge-Kutta diffrax solver (default Tsit5).
        max_steps: step limit of the adaptive solve (diffrax raises beyond it).
        adjoint: diffrax adjoint (default RecursiveCheckpointAdjoint: exact reverse-mode
            gradients through the solve w.r.t. x and anything the model closes over).

    Returns:
        ODELikelihood(log_prob, nfe): log p_{t0}(x) in nats and the number of evaluations of
        the augmented vector field (each is one model call plus D jvps, or `num_probes` jvps),
        counted by `jdiff.samplers.diffrax_evals`. Vmap over examples
        (`ode_log_likelihood_batch`) for a batch; each example keeps its own step sizes and NFE.
    """
    check_model(model)
    divergence = _check_divergence(divergence)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"`x` must be floating point (dequantize integer data first); got {x.dtype}")
    x = model.state(x, "x")  # the augmented ODE state (x, log p): at least float32 whatever the network computes in
    path = model.path
    t0, t1 = check_time_span(path, t0, t1, decreasing=False)
    solver = diffrax.Tsit5() if solver is None else solver
    if isinstance(solver, diffrax.AbstractSRK):
        raise TypeError(f"`solver` {type(solver).__name__} is an SDE solver; pass an explicit Runge-Kutta solver")
    per_step, first = diffrax_evals(solver)  # rejects solvers whose evaluations cannot be counted, before solving
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    prior_log_prob = path.prior_log_prob if prior_log_prob is None else prior_log_prob
    cond_b = jax.tree_util.tree_map(lambda c: jnp.asarray(c)[None], cond)

    def velocity(xi, t):
        return model.velocity(xi[None], jnp.asarray(t, x.dtype), cond_b)[0]

    if divergence is None:
        if probes is not None:
            raise ValueError("`probes` are Hutchinson probes: pass divergence=Hutchinson(num_probes) with them")

        def vector_field(t, state, args):
            xi, _ = state

            def flat(z):  # the velocity as a map R^D -> R^D, returned twice: to differentiate, and as is
                u = velocity(z.reshape(x.shape), t).reshape(-1)
                return u, u

            jac, u = jax.jacfwd(flat, has_aux=True)(xi.reshape(-1))
            return u.reshape(x.shape), jnp.trace(jac)

    else:
        if probes is None:
            if key is None:
                raise ValueError("`key` (or `probes`) is required with a Hutchinson `divergence`")
            probes = divergence.sample(check_key(key), x.shape, x.dtype)
        else:
            probes = jnp.asarray(probes, x.dtype)
            if probes.shape != (divergence.num_probes, *x.shape):
                raise ValueError(
                    f"`probes` must have shape (num_probes, *x.shape) = {(divergence.num_probes, *x.shape)}; "
                    f"got {probes.shape}"
                )

        def vector_field(t, state, probes):
            xi, _ = state
            # diffrax may carry the state in the time's precision (float64 times, float32 x):
            # tangents must match the primal's dtype.
            probes = probes.astype(xi.dtype)
            # Primal is shared across probes: vmap batches only the tangents.
            u, jv = jax.vmap(lambda v: jax.jvp(lambda z: velocity(z, t), (xi,), (v,)))(probes)
            axes = tuple(range(1, probes.ndim))
            return u[0], jnp.mean(jnp.sum(probes * jv, axis=axes))

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0,
        t1,
        None,
        (x, jnp.zeros((), x.dtype)),
        probes,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        adjoint=adjoint,
        max_steps=max_steps,
    )
    x_t1, delta = sol.ys[0][0], sol.ys[1][0]
    log_prob = (prior_log_prob(x_t1) + delta).astype(x.dtype)
    return ODELikelihood(log_prob, first + per_step * sol.stats["num_steps"])


def ode_log_likelihood_batch(model: Model, x, *, cond=None, key=None, **kwargs) -> ODELikelihood:
    """`ode_log_likelihood` vmapped over the leading axis of `x` (and of `cond`).

    Each example gets its own probes (`jax.random.fold_in(key, i)`) and its own step sizes;
    the other keyword options go to `ode_log_likelihood`. Returns ODELikelihood with log_prob
    and nfe of shape (N,).
    """
    check_model(model)
    x = check_batched(jnp.asarray(x), "x")
    n = x.shape[0]
    if cond is not None:
        for leaf in jax.tree_util.tree_leaves(cond):
            if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
                raise ValueError(
                    f"`cond` must have a leading axis of size {n} (one condition per example of `x`); "
                    f"got a leaf of shape {jnp.shape(leaf)}"
                )
    keys = None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))

    def one(xi, ci, ki):
        return ode_log_likelihood(model, xi, cond=ci, key=ki, **kwargs)

    return jax.vmap(one)(x, cond, keys)


# -----------------------------------------------------------------------------------
# Units: dequantization and bits per dimension.
# -----------------------------------------------------------------------------------

BIN_WIDTH_8BIT = 2.0 / 256.0  # 8-bit data scaled to [-1, 1]


def dequantize(key, k, *, bin_width: float = BIN_WIDTH_8BIT, low: float = -1.0, dtype=jnp.float32):
    """Uniform dequantization: integers k -> x = low + (k + u) * bin_width, u ~ U[0, 1)^D.

    The default maps 8-bit pixels {0..255} to x = 2 (k + u) / 256 - 1 in [-1, 1).
    """
    k = jnp.asarray(k)
    u = jax.random.uniform(key, k.shape, dtype)
    return low + (k.astype(dtype) + u) * bin_width


def _dim(x_shape_or_dim):
    if isinstance(x_shape_or_dim, int):
        return x_shape_or_dim
    return math.prod(x_shape_or_dim)


def nats_to_bits_per_dim(nll_nats, dim):
    """A negative log-PROBABILITY of discrete data in nats -> bits/dim: nll / (D ln 2).

    `dim`: D, an int or the shape of one example. Use this for bounds with a discretized
    decoder (DDPM's VLB, VDM's ELBO), which already integrate over each bin.
    """
    return nll_nats / (_dim(dim) * math.log(2.0))


def bits_per_dim(log_prob_nats, dim, *, bin_width: float = BIN_WIDTH_8BIT):
    """Discrete bits/dim from the continuous log-DENSITY (nats) of dequantized, scaled data.

    bpd = -(log q_x(x) + D log h) / (D ln 2) = -log q_x / (D ln 2) - log2 h, where h is the
    bin width in x units (module docstring). For 8-bit data in [-1, 1] (h = 2/256) the
    offset -log2 h is 7 bits; for data in [0, 1] (h = 1/256) it is 8. The result is an upper
    bound on the discrete negative log2-probability per dimension when averaged over the
    dequantization noise u.

    Args:
        log_prob_nats: log q_x(x) of the scaled, dequantized example(s), in nats.
        dim: D, an int or the shape of one example.
        bin_width: h, the width of one integer level in x units.
    """
    if not bin_width > 0:
        raise ValueError(f"`bin_width` must be positive (the width of one level in x units); got {bin_width}")
    return nats_to_bits_per_dim(-log_prob_nats, dim) - math.log2(bin_width)


# -----------------------------------------------------------------------------------
# Variational bounds in bits/dim (the maths lives in jdiff.losses)
# -----------------------------------------------------------------------------------


def _bound_bits(terms, x0, num_bins, bin_width):
    """BoundTerms in nats -> BoundTerms in bits/dim, per example.

    KL terms are invariant under the affine scaling of the data, so they only change unit;
    the reconstruction term is -log p(x0 | x_{t0}): a discrete probability when the decoder
    is discretized (`num_bins`; no offset), a density otherwise, which then takes the
    scaling offset -log2(bin_width) of `bits_per_dim` (x0 must be dequantized data).
    """
    dim = jnp.shape(x0)[1:]
    rec = nats_to_bits_per_dim(terms.reconstruction, dim)
    if num_bins is None:
        rec = bits_per_dim(-terms.reconstruction, dim, bin_width=bin_width)
    return losses.BoundTerms(nats_to_bits_per_dim(terms.prior, dim), nats_to_bits_per_dim(terms.diffusion, dim), rec)


def vlb_bits_per_dim(
    model: Model,
    key,
    x0,
    *,
    cond=None,
    num_steps: int = 1000,
    grid=None,
    num_bins: int | None = 256,
    bin_width: float = BIN_WIDTH_8BIT,
) -> losses.BoundTerms:
    """The discrete-time DDPM bound -ELBO = L_T + sum_{i=1}^T L_{t_{i-1}, t_i} + L_0 in bits/dim.

    All T KL terms are summed (`jdiff.losses.vlb_terms(..., sum_all_terms=True)`: T model
    calls in a scan), each on its own noise draw, so the result is an unbiased one-sample
    estimate of the bound per example. Returns `jdiff.losses.BoundTerms` of (B,) bits/dim
    (`.total` is the bound).

    Args:
        model: the `jdiff.Model` (batched); the chain's grid is
            `linspace(t_min, t_max, num_steps + 1)` on `model.path` unless `grid` is given.
        key: PRNG key for the noise draws.
        x0: data (B, ...). With `num_bins` the data must lie on the decoder's bin centres
            -1 + 2k / (num_bins - 1) (DDPM's x = k / 127.5 - 1) and the bound is on the
            discrete log-probability: bits/dim = nats / (D ln 2), no offset.
            With `num_bins=None` the decoder is a density, x0 should be dequantized data and
            the scaling offset -log2(bin_width) enters through the reconstruction term.
        cond: conditioning passed to the model unchanged (batched like x0), or None.
        num_steps, grid, num_bins: as in `jdiff.losses.vlb_terms`.
        bin_width: h, the width of one integer level in x units (used with `num_bins=None`).
    """
    check_model(model)
    terms = losses.vlb_terms(
        model, key, x0, cond=cond, num_steps=num_steps, grid=grid, num_bins=num_bins, sum_all_terms=True
    )
    return _bound_bits(terms, x0, num_bins, bin_width)


def elbo_bits_per_dim(
    model: Model,
    key,
    x0,
    *,
    cond=None,
    num_time_samples: int = 16,
    num_bins: int | None = 256,
    bin_width: float = BIN_WIDTH_8BIT,
) -> losses.BoundTerms:
    """The continuous-time (VDM; Kingma et al. 2021) bound in bits/dim, per example.

    `jdiff.losses.vdm_terms` is an unbiased one-time-sample estimate of the bound; this
    averages `num_time_samples` independent estimates (keys `fold_in(key, i)`, time samples
    stratified over the batch) to reduce the variance of the diffusion term. Arguments and
    units as in `vlb_bits_per_dim`. Returns `jdiff.losses.BoundTerms` of (B,) bits/dim.
    """
    check_model(model)
    check_key(key)
    if isinstance(num_time_samples, bool) or not isinstance(num_time_samples, int) or num_time_samples < 1:
        raise ValueError(f"`num_time_samples` must be a positive integer; got {num_time_samples!r}")

    def one(i):
        return losses.vdm_terms(model, jax.random.fold_in(key, i), x0, cond=cond, num_bins=num_bins)

    terms = jax.lax.map(one, jnp.arange(num_time_samples))
    terms = jax.tree_util.tree_map(lambda v: jnp.mean(v, axis=0), terms)
    return _bound_bits(losses.BoundTerms(*terms), x0, num_bins, bin_width)
