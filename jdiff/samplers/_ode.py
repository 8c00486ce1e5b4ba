"""Adaptive probability-flow ODE solves with diffrax.

dx/dt = u(x, t) = a' x0_hat + s' eps_hat (`jdiff.Model.velocity`), integrated
from t0 (default path.t_max) down to t1 (default path.t_min) with an embedded Runge-Kutta
pair and a PID step-size controller. diffrax integrates ODEs backwards in time correctly
(t0 > t1); only its stochastic Runge-Kutta solvers do not (see `_sde.py`).
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jdiff._checks import check_batched, check_times_in_range
from jdiff._model import Model, check_model

__all__ = ["ODESolution", "check_time_span", "diffrax_evals", "pf_ode_term", "solve_pf_ode"]


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


def pf_ode_term(model: Model, *, cond=None) -> diffrax.ODETerm:
    """The PF-ODE of a `jdiff.Model` as a diffrax term, y' = model.velocity(y, t, cond) (t in y's dtype)."""
    check_model(model)

    def vf(t, y, args):
        return model.velocity(y, jnp.asarray(t, y.dtype), cond)

    return diffrax.ODETerm(vf)


def diffrax_evals(solver) -> tuple[int, int]:
    """(vector-field evaluations per step, evaluations before the first step) of a diffrax solver.

    The one counter of model evaluations for every diffrax solve in jdiff (PF-ODE, reverse SDE,
    likelihood). diffrax evaluates every stage of every step, accepted or rejected; a FSAL
    tableau reuses a step's last stage as the next one's first, plus one evaluation at t0.
    Counted, not assumed: tests/test_samplers_diffrax.py counts every model call with an
    io_callback (with dt0=None the count is the same as with dt0 given, diffrax 0.7.2).
    """
    if isinstance(solver, diffrax.Euler):
        return 1, 0
    tab = getattr(solver, "tableau", None)
    if isinstance(solver, diffrax.AbstractRungeKutta) and not tab.implicit:
        return (tab.num_stages - 1, 1) if tab.fsal else (tab.num_stages, 0)
    if isinstance(solver, diffrax.AbstractSRK):
        return len(tab.c) + 1, 0
    raise ValueError(
        f"`solver` {type(solver).__name__} is not supported: pass diffrax.Euler, an explicit Runge-Kutta "
        "solver (Tsit5, Dopri5, Dopri8, Bosh3, Heun, Midpoint, Ralston) or, for SDEs, a stochastic "
        "Runge-Kutta solver (SEA, ShARK, SRA1)"
    )


def check_time_span(path, t0, t1, *, decreasing: bool = True):
    """(t0, t1), defaults (t_max, t_min) of `path` (reversed for `decreasing=False`); concrete values must
    lie in the path's range and run in the solve's direction."""
    lo, hi = (path.t_min, path.t_max)
    t0 = (hi if decreasing else lo) if t0 is None else t0
    t1 = (lo if decreasing else hi) if t1 is None else t1
    check_times_in_range(t0, path, "t0")
    check_times_in_range(t1, path, "t1")
    if not isinstance(t0, jax.core.Tracer) and not isinstance(t1, jax.core.Tracer):
        ok = float(t0) > float(t1) if decreasing else float(t0) < float(t1)
        if not ok:
            want = "t0 > t1 (the solve runs from noise toward data)" if decreasing else "t0 < t1 (data to noise)"
            raise ValueError(f"`t0` and `t1` must satisfy {want}; got t0={float(t0)}, t1={float(t1)}")
    return t0, t1


def solve_pf_ode(
    model: Model,
    x_T: Float[Array, " batch *_rest"],
    *,
    cond=None,
    t0=None,
    t1=None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dt0=None,
    save_ts=None,
    max_steps: int = 16384,
) -> ODESolution:
    """Solve the probability-flow ODE of `model` from x_T at t0 to t1 < t0 with adaptive steps.

    Args:
        model: a `jdiff.Model` (network, path, prediction kind).
        x_T: the state at t0 (any shape, the whole batch is one ODE state: the step size
            is shared and controlled by the worst example, as in diffrax), solved in
            `model.policy.state_dtype(x_T)` (at least float32).
        cond: conditioning passed to the model unchanged.
        t0, t1: start and end times (defaults model.path.t_max, model.path.t_min).
        solver: an explicit Runge-Kutta diffrax solver (default diffrax.Tsit5()).
        rtol, atol: tolerances of the PID controller (error per step, RMS norm).
        dt0: first step size (negative); None lets the controller choose it.
        save_ts: optional increasing-in-index times (from t0 toward t1) to save x at.
        max_steps: diffrax's step budget.

    Returns:
        An `ODESolution` (sample, nfe, num_steps, num_rejected, trajectory).
    """
    check_model(model)
    solver = diffrax.Tsit5() if solver is None else solver
    if isinstance(solver, diffrax.AbstractSRK):
        raise ValueError(f"`solver` {type(solver).__name__} is an SDE solver; use solve_reverse_sde")
    per_step, first = diffrax_evals(solver)
    x_T = check_batched(model.state(x_T, "x_T"), "x_T")  # the ODE state: at least float32 whatever the net computes in
    path = model.path
    t0, t1 = check_time_span(path, t0, t1)
    saveat = diffrax.SaveAt(t1=True) if save_ts is None else diffrax.SaveAt(ts=jnp.asarray(save_ts))
    # The clock in the state's precision: diffrax promotes the state to the times' dtype (float64
    # Python times under x64 would turn a float32 state into float64).
    t0, t1 = jnp.asarray(t0, x_T.dtype), jnp.asarray(t1, x_T.dtype)
    dt0 = None if dt0 is None else jnp.asarray(dt0, x_T.dtype)
    sol = diffrax.diffeqsolve(
        pf_ode_term(model, cond=cond),
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
