"""Time grids optimised for one model, one solver and one number of steps.

    result = optimize_grid(S.DPMSolverPP2M(), model, key, x_T, 10)   # objective=GlobalError()
    x0 = S.sample(S.DPMSolverPP2M(), model, x_T, result.grid)

A fixed-step sampler is one differentiable XLA program of its grid, so the grid can be
fitted by gradient descent on the error it leaves. The grid is parameterised so that every
iterate is valid: N logits theta give the steps in log-SNR as softmax(theta) times the whole
log-SNR range, so the times decrease strictly and the end points t_start and t_end are kept
exactly. The optimisation (optax, `iterations` updates) is one `lax.scan` inside one jitted
program; the objective is chosen by an object:

- `GlobalError()`: mean squared distance of the N-step sample to an adaptive diffrax solve of
  the same PF-ODE from the same x_T (computed once, before the optimisation).
- `LocalError()`: no reference solve. The sum over steps of the defect of the sampler's own
  trajectory: |x_{i+1} - Phi(x_i; t_i -> t_{i+1})| with Phi a few DPM-Solver-3 substeps,
  the per-step (local truncation) error that Align Your Steps-style objectives bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdiff._model import Model, check_model
from jdiff.samplers._base import AbstractSolver, sample
from jdiff.samplers._fixed import DPMSolver
from jdiff.samplers._grids import karras_grid
from jdiff.samplers._ode import solve_pf_ode

__all__ = ["GlobalError", "LocalError", "OptimizedGrid", "grid_from_logits", "logits_from_grid", "optimize_grid"]


# ---------------------------------------------------------------------------------
# The parameterisation: softmax increments in log-SNR
# ---------------------------------------------------------------------------------


def _t_from_log_snr(path, lam):
    """path.t_from_log_snr with the implicit-function derivative dt / dlambda = 1 / lambda'(t).

    Exact in value, right in first derivative even where the inverse is a bisection.
    """
    t = jax.lax.stop_gradient(path.t_from_log_snr(jax.lax.stop_gradient(lam)))
    slope = jax.lax.stop_gradient(path.d_log_snr(t))
    return t + (lam - jax.lax.stop_gradient(lam)) / slope


def grid_from_logits(path, logits, t_start, t_end):
    """The N + 1 decreasing times whose log-SNR steps are softmax(logits) of the whole range.

    lambda_i = lambda(t_start) + c_i (lambda(t_end) - lambda(t_start)), c = (0, cumsum(softmax));
    the first and last times are t_start and t_end exactly.
    """
    lam0, lam1 = path.log_snr(t_start), path.log_snr(t_end)
    c = jnp.concatenate([jnp.zeros((1,), logits.dtype), jnp.cumsum(jax.nn.softmax(logits))])
    t = _t_from_log_snr(path, lam0 + c * (lam1 - lam0))
    return t.at[0].set(t_start).at[-1].set(t_end)


def logits_from_grid(path, grid):
    """Logits whose `grid_from_logits` is `grid` (log of its log-SNR steps, centred)."""
    lam = path.log_snr(jnp.asarray(grid))
    w = jnp.log(jnp.diff(lam))
    return w - jnp.mean(w)


# ---------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------


def _sq_norm(v):
    """Per-example squared norm over every axis but the leading one (mean over elements)."""
    return jnp.mean(jnp.reshape(v * v, (v.shape[0], -1)), axis=1)


class GlobalError(eqx.Module):
    """Mean squared error of the N-step sample against an adaptive solve of the PF-ODE.

    The reference x(t_end) of every prior sample is solved once, before the optimisation,
    with `solver` (default diffrax.Tsit5()) at tolerances rtol, atol (`solve_pf_ode`), unless
    `reference` gives it (the endpoints of x_T, same shape). The value is
    mean_b mean_d (x_N - x_ref)^2, the square of the RMS error the benchmarks report.
    """

    rtol: float = 1e-6
    atol: float = 1e-6
    solver: Any = None
    max_steps: int = 16384
    reference: Any = None

    def init(self, solver, model, x_T, t_start, t_end, cond):
        """The reference endpoints, one per prior sample."""
        if self.reference is not None:
            ref = jnp.asarray(self.reference, x_T.dtype)
            if ref.shape != x_T.shape:
                raise ValueError(f"`reference` must have the shape of x_T {x_T.shape}; got {ref.shape}")
            return ref
        ode = diffrax.Tsit5() if self.solver is None else self.solver
        return solve_pf_ode(
            model,
            x_T,
            cond=cond,
            t0=t_start,
            t1=t_end,
            solver=ode,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
        ).sample

    def __call__(self, solver, model, x_T, ref, grid, cond):
        return jnp.mean(_sq_norm(sample(solver, model, x_T, grid, cond=cond) - ref))


class LocalError(eqx.Module):
    """Sum of the local errors of the sampler's own steps, squared: no reference solve.

    The sampler runs on the grid (its multistep history included) and returns its trajectory
    x_0 .. x_N; each state x_i is also carried to t_{i+1} by `substeps` DPM-Solver-3 steps
    equally spaced in log-SNR (Phi). The value is mean_b (sum_i |x_{i+1} - Phi(x_i)|_rms)^2,
    the triangle-inequality bound on the global error when the flow does not amplify errors.
    Cost per iteration: N + 3 N substeps model evaluations, all in one program.
    """

    substeps: int = 2

    def __check_init__(self):
        if not isinstance(self.substeps, int) or self.substeps < 1:
            raise ValueError(f"`substeps` must be an int >= 1; got {self.substeps!r}")

    def init(self, solver, model, x_T, t_start, t_end, cond):
        return jnp.zeros((x_T.shape[0],), x_T.dtype)  # nothing to precompute

    def __call__(self, solver, model, x_T, aux, grid, cond):
        _, traj = sample(solver, model, x_T, grid, cond=cond, return_trajectory=True)
        path, fine = model.path, DPMSolver(order=3)
        lam = path.log_snr(grid)
        u = jnp.arange(self.substeps + 1, dtype=lam.dtype) / self.substeps

        def one(_, inputs):
            x, l0, l1, t0, t1 = inputs
            sub = _t_from_log_snr(path, l0 + u * (l1 - l0)).at[0].set(t0).at[-1].set(t1)
            return None, sample(fine, model, x, sub, cond=cond)

        _, phi = jax.lax.scan(one, None, (traj[:-1], lam[:-1], lam[1:], grid[:-1], grid[1:]))
        defects = jax.vmap(lambda a, b: jnp.sqrt(_sq_norm(a - b)))(traj[1:], phi)  # (N, B)
        return jnp.mean(jnp.sum(defects, axis=0) ** 2)


# ---------------------------------------------------------------------------------
# The optimiser
# ---------------------------------------------------------------------------------


class OptimizedGrid(NamedTuple):
    """Result of `optimize_grid`.

    grid: the N + 1 decreasing times (the best iterate on the objective).  loss: the objective
    there.  initial_loss: the objective of the initial grid.  history: the objective before
    each update, shape (iterations,).
    """

    grid: jax.Array
    loss: jax.Array
    initial_loss: jax.Array
    history: jax.Array


def optimize_grid(
    solver: AbstractSolver,
    model: Model,
    key,
    x_T,
    num_steps: int | None = None,
    *,
    objective=None,
    init=None,
    t_start=None,
    t_end=None,
    cond=None,
    iterations: int = 200,
    learning_rate: float = 0.05,
    optimizer: optax.GradientTransformation | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> OptimizedGrid:
    """Fit the N-step time grid of `solver` on `model` to minimise `objective` over a batch of x_T.

    Args:
        solver: any deterministic fixed-step solver (`jdiff.samplers`).
        model: a `jdiff.Model`; its network must be differentiable in x and t.
        key: PRNG key of the minibatches (used only with `batch_size`): the result is a
            deterministic function of the key.
        x_T: a batch of prior samples at t_start (leading axis: the batch).
        num_steps: N (default: from `init`).
        objective: `GlobalError()` (default) or `LocalError()`, or any object with
            `init(solver, model, x_T, t_start, t_end, cond) -> aux` (per example, leading axis
            the batch) and `__call__(solver, model, x, aux, grid, cond) -> scalar`.
        init: the initial grid (default `karras_grid(path, N)` between t_start and t_end).
        t_start, t_end: the fixed first and last times (defaults path.t_max, path.t_min; from
            `init` when given).
        cond: conditioning passed to the model (sliced with x_T along its leading axis when
            `batch_size` is set).
        iterations: optimiser updates, one `lax.scan` in one jitted program.
        learning_rate: of the default optimiser, optax.adam.
        optimizer: any optax transformation of the logits (overrides learning_rate).
        batch_size: examples per update, drawn without replacement with fold_in(key, i)
            (default: the whole batch every update).
        progress: called as progress(i, rms) from inside the program at every update, with
            rms = sqrt(objective) before update i; e.g. `lambda i, v: print(i, v)`.

    Returns:
        An `OptimizedGrid` (grid, loss, initial_loss, history): `grid` is the iterate with the
        lowest objective seen (the initial grid included), so the result never does worse than
        `init` on the batch it was fitted on.
    """
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"`solver` must be a jdiff.samplers solver (an AbstractSolver); got {type(solver).__name__}")
    if solver.stochastic:
        raise ValueError(
            f"`solver` {type(solver).__name__} is stochastic with these settings; optimize_grid "
            "fits grids of deterministic solvers"
        )
    check_model(model)
    path = model.path
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 1 or not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise ValueError(
            f"`x_T` must be a floating-point batch (leading axis: examples); got shape {x_T.shape}, dtype {x_T.dtype}"
        )
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations` must be an int >= 1; got {iterations!r}")
    objective = GlobalError() if objective is None else objective
    if init is None:
        if num_steps is None:
            raise ValueError("`num_steps` is required when no `init` grid is given")
        init = karras_grid(path, num_steps, t_start=t_start, t_end=t_end)
    init = jnp.asarray(init, jnp.result_type(float))  # the clock's dtype, not x_T's (float32 would round t_min)
    if init.ndim != 1 or init.shape[0] < 2 or (num_steps is not None and init.shape[0] != num_steps + 1):
        raise ValueError(
            f"`init` must be a 1-D grid of num_steps + 1 = {num_steps and num_steps + 1} times; got shape {init.shape}"
        )
    if not np.all(np.diff(np.asarray(init)) < 0):
        raise ValueError("`init` must be strictly decreasing")
    t0, t1 = init[0], init[-1]
    n = x_T.shape[0]
    if batch_size is not None and not (isinstance(batch_size, int) and 1 <= batch_size <= n):
        raise ValueError(f"`batch_size` must be an int in [1, {n}] (the size of x_T) or None; got {batch_size!r}")
    aux = objective.init(solver, model, x_T, t0, t1, cond)
    theta0 = logits_from_grid(path, init)
    # adam is built inside the program from a float (a static argument that compares equal
    # across calls, so a second call does not recompile); a given optimizer is static as is.
    tx = float(learning_rate) if optimizer is None else optimizer
    return _optimize(
        solver, objective, tx, iterations, batch_size, progress, model, theta0, x_T, aux, cond, t0, t1, key
    )


@eqx.filter_jit
def _optimize(solver, objective, tx, iterations, batch_size, progress, model, theta0, x_T, aux, cond, t0, t1, key):
    path = model.path
    tx = optax.adam(tx) if isinstance(tx, float) else tx

    def loss_fn(theta, x, a, c):
        return objective(solver, model, x, a, grid_from_logits(path, theta, t0, t1), c)

    def batch(i):
        if batch_size is None:
            return x_T, aux, cond
        idx = jax.random.permutation(jax.random.fold_in(key, i), x_T.shape[0])[:batch_size]
        take = lambda v: None if v is None else jnp.take(v, idx, axis=0)
        return take(x_T), take(aux), jax.tree_util.tree_map(take, cond)

    full = loss_fn(theta0, x_T, aux, cond)

    def body(carry, i):
        theta, opt_state, best, best_loss = carry
        value, grad = jax.value_and_grad(loss_fn)(theta, *batch(i))
        if progress is not None:
            jax.debug.callback(lambda i, v: progress(int(i), float(np.sqrt(v))), i, value, ordered=True)
        if batch_size is None:  # the value is the full objective of theta: keep the best iterate
            better = value < best_loss
            best = jnp.where(better, theta, best)
            best_loss = jnp.where(better, value, best_loss)
        updates, opt_state = tx.update(grad, opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state, best, best_loss), value

    carry = (theta0, tx.init(theta0), theta0, full)
    (theta, _, best, best_loss), history = jax.lax.scan(body, carry, jnp.arange(iterations))
    last = loss_fn(theta, x_T, aux, cond)
    if batch_size is None:
        best, best_loss = jax.tree_util.tree_map(
            lambda a, b: jnp.where(last < best_loss, a, b), (theta, last), (best, best_loss)
        )
    else:  # minibatches: compare the final iterate with the start on the whole batch
        best, best_loss = jax.tree_util.tree_map(
            lambda a, b: jnp.where(last < full, a, b), (theta, last), (theta0, full)
        )
    return OptimizedGrid(grid_from_logits(path, best, t0, t1), best_loss, full, history)
