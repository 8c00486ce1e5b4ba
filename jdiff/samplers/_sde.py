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

from jdiff import predictions
from jdiff.paths import AbstractPath

__all__ = ["SDESolution", "solve_reverse_sde"]

_SOLVERS = {"euler": diffrax.Euler, "heun": diffrax.Heun, "sea": diffrax.SEA, "shark": diffrax.ShARK}
_EVALS = {diffrax.Euler: 1, diffrax.Heun: 2, diffrax.SEA: 1, diffrax.ShARK: 2}
_LEVY = {diffrax.SEA: diffrax.SpaceTimeLevyArea, diffrax.ShARK: diffrax.SpaceTimeLevyArea}


class SDESolution(NamedTuple):
    """Result of `solve_reverse_sde`: the sample at t1 and the model evaluations (a Python int)."""

    sample: jax.Array
    nfe: int


def solve_reverse_sde(
    model,
    kind: str,
    path: AbstractPath,
    x_T,
    key,
    *,
    num_steps: int | None = None,
    dt=None,
    t0=None,
    t1=None,
    solver="euler",
    churn: float = 1.0,
    cond=None,
) -> SDESolution:
    """Sample the reverse-time SDE of `path` (`jdiff.predictions.reverse_sde`) from x_T at t0 to t1.

    Args:
        model, kind, path, cond: as in `jdiff.samplers.sample`.
        x_T: the state at t0, any shape (one Brownian motion per entry).
        key: PRNG key of the Brownian motion (a diffrax UnsafeBrownianPath).
        num_steps: number of equal steps; or give `dt` (a positive step in t) instead.
        t0, t1: start and end times (defaults path.t_max, path.t_min).
        solver: "euler" (Euler-Maruyama), "heun", "sea", "shark", or a diffrax SDE solver
            instance (evaluations per step as for those four).
        churn: noise scale of the SDE family (1: Anderson's reverse SDE; 0: the PF-ODE).

    Returns:
        An `SDESolution` (sample, nfe).
    """
    predictions.check_kind(kind)
    if isinstance(solver, str):
        if solver not in _SOLVERS:
            raise ValueError(f"unknown `solver` {solver!r}; accepted: {', '.join(_SOLVERS)} or a diffrax solver")
        solver = _SOLVERS[solver]()
    if type(solver) not in _EVALS:
        raise ValueError(f"`solver` must be one of {', '.join(c.__name__ for c in _EVALS)}; got {type(solver).__name__}")
    if (num_steps is None) == (dt is None):
        raise ValueError("give exactly one of `num_steps` (an int >= 1) and `dt` (a positive step)")
    t0 = float(path.t_max if t0 is None else t0)
    t1 = float(path.t_min if t1 is None else t1)
    if not t0 > t1:
        raise ValueError(f"`t0` must exceed `t1` (the reverse SDE runs toward the data); got t0={t0}, t1={t1}")
    span = t0 - t1
    if num_steps is None:
        num_steps = int(round(span / dt))
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be an int >= 1; got {num_steps!r}")
    x_T = jnp.asarray(x_T)
    shape, dtype = x_T.shape, x_T.dtype

    def unflat(y, tau):
        return y.reshape(shape), jnp.asarray(t0 - tau, dtype)

    def drift(tau, y, args):
        x, t = unflat(y, tau)
        b, _ = predictions.reverse_sde(model(x, t, cond), kind, x, t, path, churn)
        return -b.reshape(-1)

    def diffusion(tau, y, args):
        t = jnp.asarray(t0 - tau, dtype)
        g = jnp.sqrt(churn * path.diffusion2(t)).astype(dtype)
        return lx.DiagonalLinearOperator(jnp.broadcast_to(g, y.shape))

    y0 = x_T.reshape(-1)
    # Fixed steps query each Brownian increment once, so the cheap UnsafeBrownianPath is exact here.
    bm = diffrax.UnsafeBrownianPath(
        shape=jax.ShapeDtypeStruct(y0.shape, dtype), key=key, levy_area=_LEVY.get(type(solver), diffrax.BrownianIncrement)
    )
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
    sol = diffrax.diffeqsolve(
        terms, solver, 0.0, span, span / num_steps, y0, max_steps=num_steps + 1, adjoint=diffrax.ForwardMode()
    )
    return SDESolution(sol.ys[-1].reshape(shape), _EVALS[type(solver)] * num_steps)
