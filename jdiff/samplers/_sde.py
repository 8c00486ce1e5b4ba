"""Reverse-time SDE solves with diffrax, in a forward clock.

The reverse SDE dx = b(x, t) dt + g(t) dW runs from t0 down to t1 < t0. diffrax 0.7.2's
stochastic Runge-Kutta solvers (SEA, ShARK, SRA1, ...) integrate wrongly when t0 > t1
(patrick-kidger/diffrax issue 598: the drift step h loses its sign; fixed upstream by PR
746 after 0.7.2), so every solve here runs in the forward clock tau = t0 - t, tau in
[0, t0 - t1]:

    dy = -b(y, t0 - tau) dtau + g(t0 - tau) dW_tau,     y(tau) = x(t0 - tau),

which is the same SDE in law (the Brownian increment is symmetric). Any diffrax SDE
solver is then correct; tests/test_samplers_sde.py guards the upstream behaviour.
The noise is additive (g depends on t only), so Euler-Maruyama has strong order 1 and
Heun (Stratonovich = Ito here) weak order 2 on it.
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray

from jdiff._checks import check_batched, check_key
from jdiff._model import Model, check_model
from jdiff.samplers._ode import check_time_span, diffrax_evals

__all__ = ["SDESolution", "solve_reverse_sde"]


class SDESolution(NamedTuple):
    """Result of `solve_reverse_sde`: the sample at t1 and the model evaluations (a Python int)."""

    sample: jax.Array
    nfe: int


def solve_reverse_sde(
    model: Model,
    key: PRNGKeyArray,
    x_T: Float[Array, " batch *_rest"],
    *,
    cond=None,
    num_steps: int | None = None,
    dt=None,
    t0=None,
    t1=None,
    solver: diffrax.AbstractSolver | None = None,
    churn: float = 1.0,
) -> SDESolution:
    """Sample the reverse-time SDE of `model` (`jdiff.Model.reverse_sde`) from x_T at t0 to t1.

    Args:
        model: a `jdiff.Model` (network, path, prediction kind).
        key: PRNG key of the Brownian motion (a diffrax UnsafeBrownianPath).
        x_T: the state at t0, any shape (one Brownian motion per entry).
        cond: conditioning passed to the model unchanged.
        num_steps: number of equal steps; or give `dt` (a positive step in t) instead.
        t0, t1: start and end times (defaults model.path.t_max, model.path.t_min).
        solver: a diffrax SDE solver (default diffrax.Euler(), i.e. Euler-Maruyama; diffrax.Heun,
            SEA, ShARK, SRA1, ...).
        churn: noise scale of the SDE family (1: Anderson's reverse SDE; 0: the PF-ODE).

    Returns:
        An `SDESolution` (sample, nfe).
    """
    check_model(model)
    path = model.path
    solver = diffrax.Euler() if solver is None else solver
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(f"`solver` must be a diffrax solver instance (e.g. diffrax.Heun()); got {solver!r}")
    per_step, _ = diffrax_evals(solver)
    if (num_steps is None) == (dt is None):
        raise ValueError("give exactly one of `num_steps` (an int >= 1) and `dt` (a positive step)")
    check_key(key)
    t0, t1 = (float(t) for t in check_time_span(path, t0, t1))
    span = t0 - t1
    if num_steps is None:
        num_steps = int(round(span / dt))
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be an int >= 1; got {num_steps!r}")
    x_T = check_batched(model.state(x_T, "x_T"), "x_T")  # the SDE state: at least float32 whatever the net computes in
    shape, dtype = x_T.shape, x_T.dtype

    def drift(tau, y, args):
        x, t = y.reshape(shape), jnp.asarray(t0 - tau, dtype)
        b, _ = model.reverse_sde(x, t, cond, churn=churn)
        return -b.reshape(-1)

    def diffusion(tau, y, args):
        t = jnp.asarray(t0 - tau, dtype)
        g = jnp.sqrt(churn * path.diffusion2(t)).astype(dtype)
        return lx.DiagonalLinearOperator(jnp.broadcast_to(g, y.shape))

    y0 = x_T.reshape(-1)
    # Fixed steps query each Brownian increment once, so the cheap UnsafeBrownianPath is exact here.
    levy = diffrax.SpaceTimeLevyArea if isinstance(solver, diffrax.AbstractSRK) else diffrax.BrownianIncrement
    bm = diffrax.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(y0.shape, dtype), key=key, levy_area=levy)
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
    # The forward clock in the state's precision (Python floats are float64 under x64, and diffrax
    # promotes the state to the times' dtype).
    tau1, dtau = jnp.asarray(span, dtype), jnp.asarray(span / num_steps, dtype)
    sol = diffrax.diffeqsolve(
        terms, solver, jnp.zeros((), dtype), tau1, dtau, y0, max_steps=num_steps + 1, adjoint=diffrax.ForwardMode()
    )
    return SDESolution(sol.ys[-1].reshape(shape), per_step * num_steps)
