"""The fixed-step sampler interface and its one entry point, `sample`.

A solver is a small immutable object (an `equinox.Module` holding its hyperparameters as
Python numbers) with

    order               its convergence order (weak order for a stochastic solver)
    stochastic          whether it draws noise (then `sample` needs a key)
    nfe(num_steps)      the number of model evaluations of an N-step solve (a Python int)
    init(f, x, grid)    -> state, the solver's carried state (history of multistep methods)
    step(f, x, state, i, t, s, key) -> (x_s, state), one step from t = grid[i] to s = grid[i+1]
    has_start_step      whether step 0 is `start_step(f, x, state, t, s, key)`, run once before
                        the scan (multistep methods that start with a singlestep method)

`sample` runs `step` over the grid in a single `lax.scan`: one XLA program whose size
does not depend on the number of steps, and whose grid is a traced array.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from jdiff._checks import check_batched, check_key, check_times_in_range
from jdiff._model import Model, check_model
from jdiff.precision import clock_dtype_ok
from jdiff.samplers import _pytree

__all__ = ["AbstractSolver", "Prediction", "check_grid", "sample"]


class Prediction:
    """What a solver sees of the model while `sample` is traced: a `jdiff.Model` with `cond` fixed.

    Not a pytree: it only lives while `sample` is traced. `t` is always a scalar.
    """

    def __init__(self, model: Model, cond, num_steps):
        self.model, self.path, self.cond = model, model.path, cond
        self.num_steps = num_steps  # static: the N of the grid (Heun's churn uses it)

    def __call__(self, x, t):
        """(x0_hat, eps_hat) at (x, t): the denoiser and the matching noise prediction."""
        return self.model.x0_eps(x, t, self.cond)

    def velocity(self, x, t):
        """The probability-flow ODE velocity dx/dt at (x, t)."""
        return self.model.velocity(x, t, self.cond)

    def reverse_sde(self, x, t, churn):
        """(drift, diffusion) of the reverse SDE with noise scale `churn` (`Model.reverse_sde`)."""
        return self.model.reverse_sde(x, t, self.cond, churn=churn)


class AbstractSolver(eqx.Module):
    """A fixed-step sampler. Subclasses define `order` and `step`; `init`, `nfe` and the start
    step when they need them.

    A solver whose step 0 differs (a multistep method started by a singlestep one, so that
    its warm-up keeps the global order) sets `has_start_step` and defines `start_step`;
    `sample` runs it once, outside the scan, so the scanned step stays free of branches.
    Combinators (`PredictorCorrector`) pass their inner solver's start on.
    """

    @property
    @abc.abstractmethod
    def order(self) -> int:
        """Convergence order in the step size (weak order for stochastic solvers)."""

    @property
    def stochastic(self) -> bool:
        """True when the solver draws noise: `sample` then needs a `key`."""
        return False

    @property
    def evals_per_step(self) -> int:
        return 1

    def nfe(self, num_steps: int) -> int:
        """Model evaluations of a `num_steps`-step solve (without `denoise_to_zero`)."""
        return self.evals_per_step * num_steps

    def init(self, f: Prediction, x, grid):
        """The initial carried state (nothing for one-step methods)."""
        return ()

    @abc.abstractmethod
    def step(self, f: Prediction, x, state, i, t, s, key):
        """One step from time t to time s < t; `i` is the step index, `key` None unless stochastic."""

    @property
    def has_start_step(self) -> bool:
        """True when step 0 is `start_step` rather than `step`."""
        return False

    def start_step(self, f: Prediction, x, state, t, s, key):
        """Step 0 from grid[0] to grid[1] (only called when `has_start_step`)."""
        return self.step(f, x, state, 0, t, s, key)


def check_grid(grid, name: str = "grid", *, path=None) -> jax.Array:
    """A 1-D array of at least 2 strictly decreasing times; checked on the host when concrete.

    The clock never runs below float32: a bfloat16 or float16 grid (which rounds t = 0.999 to
    1.0) is refused. With `path`, concrete times must also lie in [path.t_min, path.t_max].
    A traced grid (the usual case inside `jax.jit`) can only be checked for its shape and dtype.
    """
    concrete = not isinstance(grid, jax.core.Tracer)
    if concrete:  # a host copy first: jnp.asarray inside a jit trace would make a tracer of it
        host = np.asarray(grid)
    grid = jnp.asarray(grid)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"`{name}` must be a 1-D array of at least 2 decreasing times; got shape {grid.shape}")
    if not clock_dtype_ok(grid.dtype):
        raise ValueError(
            f"`{name}` must be float32 or float64 (the clock stays at least float32 whatever the network computes "
            f"in: {grid.dtype} rounds t = 0.999 to 1.0, where alpha = 0); got dtype {grid.dtype}"
        )
    if path is not None and concrete:
        check_times_in_range(host, path, name)
    if concrete:
        diffs = np.diff(host.astype(np.float64))
        if not np.all(diffs < 0):
            i = int(np.argmax(diffs >= 0))
            raise ValueError(
                f"`{name}` must be strictly decreasing (t = 1 is noise, t = 0 data: sampling runs from "
                f"grid[0] down to grid[-1]); got {name}[{i}] = {float(host[i])} <= {name}[{i + 1}] = "
                f"{float(host[i + 1])}"
            )
    return grid


def sample(
    solver: AbstractSolver,
    model: Model,
    x_T: PyTree[Float[Array, " batch *_rest"]],
    grid: Float[ArrayLike, " n"],
    *,
    cond=None,
    key=None,
    return_trajectory: bool = False,
    denoise_to_zero: bool = False,
):
    """Integrate from x_T at grid[0] down to grid[-1] with a fixed-step solver.

    Args:
        solver: an `AbstractSolver` (DDPM(), DDIM(eta), Euler(), Heun(...), DPMSolver(order),
            DPMSolverPP2M(), DPMSolverPP3M(), DPMSolverPP2MSDE(), UniPC(...), LMS(order),
            EulerMaruyama(), PredictorCorrector(...)).
        model: a `jdiff.Model` (network, path, prediction kind); called with the whole batch
            `x` and a scalar t.
        x_T: the starting point at time grid[0] (e.g. `model.path.prior_sample`), shape
            (batch, ...): the leading axis is the batch axis where a solver needs per-example
            norms (Langevin). The state runs in `model.policy.state_dtype(x_T)`, at least
            float32: a bfloat16 x_T is sampled in float32 (the network computes in the model's
            policy's compute dtype). A pytree of such arrays (the levels of `jdiff.nested`) is
            sampled as one state, raveled per example: the network then takes and returns that
            pytree.
        grid: strictly decreasing 1-D array of N + 1 times in [path.t_min, path.t_max] (see
            `jdiff.samplers.*_grid`), float32 or float64; traced, so a new grid of the same
            length does not recompile a jitted caller.
        cond: conditioning passed to the model unchanged (any pytree, or None).
        key: PRNG key, required by stochastic solvers; step i uses `fold_in(key, i)`.
        return_trajectory: also return the states at every grid time, shape (N + 1, *x_T.shape)
            (N + 2 with `denoise_to_zero`).
        denoise_to_zero: finish with the denoiser x0_hat(x, grid[-1]) (one more model evaluation),
            the "denoise to zero" last step of Song et al. (2021) and Karras et al. (2022).

    Returns:
        The final sample (in the state dtype), or (sample, trajectory) if `return_trajectory`.
        The NFE is `solver.nfe(N) + denoise_to_zero`.
    """
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"`solver` must be a jdiff.samplers solver (an AbstractSolver); got {type(solver).__name__}")
    check_model(model)
    if not _pytree.is_array(x_T):  # a pytree of levels (jdiff.nested): one raveled state
        flat, spec = _pytree.ravel(x_T)
        out = sample(
            solver,
            _pytree.raveled_model(model, spec),
            flat,
            grid,
            cond=cond,
            key=key,
            return_trajectory=return_trajectory,
            denoise_to_zero=denoise_to_zero,
        )
        return _pytree.unravel_output(out, spec, return_trajectory)
    x_T = check_batched(model.state(x_T, "x_T"), "x_T")
    times = check_grid(grid, path=model.path)
    if solver.stochastic and key is None:
        raise ValueError(f"`key` is required: {type(solver).__name__} with these settings is stochastic")
    if key is not None:
        check_key(key)
    # The clock runs in the state's precision (at least float32), so path coefficients do not promote x.
    times = times.astype(x_T.dtype)
    num_steps = times.shape[0] - 1
    f = Prediction(model, cond, num_steps)
    state = solver.init(f, x_T, times)

    def body(carry, inputs):
        x, state = carry
        i, t, s = inputs
        k = None if key is None else jax.random.fold_in(key, i)
        x, state = solver.step(f, x, state, i, t, s, k)
        return (x, state), (x if return_trajectory else None)

    x, first = x_T, []
    start = 0
    if solver.has_start_step:
        k = None if key is None else jax.random.fold_in(key, 0)
        x, state = solver.start_step(f, x, state, times[0], times[1], k)
        first, start = [x[None]], 1
    steps = (jnp.arange(start, num_steps), times[start:-1], times[start + 1 :])
    (x, _), traj = jax.lax.scan(body, (x, state), steps)
    if denoise_to_zero:
        x = f(x, times[-1])[0]
    if not return_trajectory:
        return x
    parts = [x_T[None], *first, traj] + ([x[None]] if denoise_to_zero else [])
    return x, jnp.concatenate(parts, axis=0)
