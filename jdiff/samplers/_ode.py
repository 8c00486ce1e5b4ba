"""Adaptive probability-flow ODE solves with diffrax.

dx/dt = u(x, t) = a' x0_hat + s' eps_hat (`jdiff.predictions.pf_ode_velocity`), integrated
from t0 (default path.t_max) down to t1 (default path.t_min) with an embedded Runge-Kutta
pair and a PID step-size controller. diffrax integrates ODEs backwards in time correctly
(t0 > t1); only its stochastic Runge-Kutta solvers do not (see `_sde.py`).
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from jdiff import predictions
from jdiff.paths import AbstractPath

__all__ = ["ODESolution", "solve_pf_ode", "pf_ode_term"]


class ODESolution(NamedTuple):
    """Result of `solve_pf_ode`.

    sample: x at t1.  nfe: model evaluations (traced int).  num_steps: steps tried,
    num_rejected: of which rejected.  trajectory: x at `save_ts` (None without it).
    """

    sample: jax.Array
    nfe: jax.Array
    num_steps: jax.Array
    num_rejected: jax.Array
    trajectory: jax.Array | None


def pf_ode_term(model, kind: str, path: AbstractPath, cond=None, dtype=None) -> diffrax.ODETerm:
    """The PF-ODE as a diffrax term, y' = pf_ode_velocity(model(y, t, cond)) (t cast to y's dtype)."""
    predictions.check_kind(kind)

    def vf(t, y, args):
        t = jnp.asarray(t, y.dtype if dtype is None else dtype)
        return predictions.pf_ode_velocity(model(y, t, cond), kind, y, t, path)

    return diffrax.ODETerm(vf)


def _evals(solver):
    """(evaluations per step, evaluations before the first step) of a diffrax ODE solver."""
    if isinstance(solver, diffrax.AbstractRungeKutta):
        tab = solver.tableau
        if tab.implicit:
            raise ValueError("`solver` must be an explicit Runge-Kutta solver (Tsit5, Dopri5, Dopri8, Bosh3, Heun, ...)")
        per_step = tab.num_stages - 1 if tab.fsal else tab.num_stages
        first = 1 if tab.fsal else 0
    elif isinstance(solver, diffrax.Euler):
        per_step, first = 1, 0
    else:
        raise ValueError(
            f"`solver` {type(solver).__name__} is not supported: pass an explicit Runge-Kutta solver "
            "(diffrax.Tsit5, Dopri5, Dopri8, Bosh3, Heun, Midpoint, Ralston) or diffrax.Euler"
        )
    # Counted, not assumed: tests/test_samplers_diffrax.py counts every model call with an
    # io_callback. With dt0=None the count is the same as with dt0 given (diffrax 0.7.2).
    return per_step, first


def solve_pf_ode(
    model,
    kind: str,
    path: AbstractPath,
    x_T,
    *,
    t0=None,
    t1=None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dt0=None,
    cond=None,
    save_ts=None,
    max_steps: int = 16384,
) -> ODESolution:
    """Solve the probability-flow ODE from x_T at t0 to t1 < t0 with adaptive steps.

    Args:
        model, kind, path, cond: as in `jdiff.samplers.sample`.
        x_T: the state at t0 (any shape, the whole batch is one ODE state: the step size
            is shared and controlled by the worst example, as in diffrax).
        t0, t1: start and end times (defaults path.t_max, path.t_min).
        solver: an explicit Runge-Kutta diffrax solver (default diffrax.Tsit5()).
        rtol, atol: tolerances of the PID controller (error per step, RMS norm).
        dt0: first step size (negative); None lets the controller choose it.
        save_ts: optional increasing-in-index times (from t0 toward t1) to save x at.
        max_steps: diffrax's step budget.

    Returns:
        An `ODESolution` (sample, nfe, num_steps, num_rejected, trajectory).
    """
    solver = diffrax.Tsit5() if solver is None else solver
    per_step, first = _evals(solver)
    x_T = jnp.asarray(x_T)
    t0 = path.t_max if t0 is None else t0
    t1 = path.t_min if t1 is None else t1
    saveat = diffrax.SaveAt(t1=True) if save_ts is None else diffrax.SaveAt(ts=jnp.asarray(save_ts))
    sol = diffrax.diffeqsolve(
        pf_ode_term(model, kind, path, cond),
        solver,
        t0,
        t1,
        dt0,
        x_T,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=saveat,
        max_steps=max_steps,
    )
    n = sol.stats["num_steps"]
    traj = None if save_ts is None else sol.ys
    x = sol.ys[-1]
    return ODESolution(x, first + per_step * n, n, sol.stats["num_rejected_steps"], traj)
