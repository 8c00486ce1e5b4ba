"""jdiff.samplers diffrax solves: adaptive PF-ODE with an exact NFE, and the forward-clock
reverse SDE that works around diffrax issue 598."""

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jdiff
from jdiff import samplers as S

from helpers import callback_oracle as _oracle
from helpers import mixture_2d

GM = mixture_2d()


def test_pf_ode_solve_is_accurate_and_counts_its_evaluations():
    solver = diffrax.Tsit5()
    path = jdiff.VPLinear()
    counter = [0]
    model = _oracle(path, "score", counter=counter)
    x = path.prior_sample(jax.random.PRNGKey(0), (16, 2), jnp.float64)
    ref = S.solve_pf_ode(model, x, solver=diffrax.Dopri8(), rtol=1e-11, atol=1e-11).sample
    counter[0] = 0
    loose = S.solve_pf_ode(model, x, solver=solver, rtol=1e-4, atol=1e-4)
    assert counter[0] == int(loose.nfe)
    counter[0] = 0
    tight = S.solve_pf_ode(model, x, solver=solver, rtol=1e-8, atol=1e-8, save_ts=jnp.array([0.5, 1e-5]))
    assert counter[0] == int(tight.nfe)
    err_loose = float(jnp.max(jnp.abs(loose.sample - ref)))
    err_tight = float(jnp.max(jnp.abs(tight.sample - ref)))
    # The error follows the tolerance (an order-5 pair: ~ tol^(5/6) per unit time).
    assert err_tight < 1e-5 < err_loose < 1e-1, (err_tight, err_loose)
    assert int(tight.nfe) > int(loose.nfe)
    assert tight.trajectory.shape == (2, 16, 2)
    np.testing.assert_allclose(tight.trajectory[-1], tight.sample)


def _ou_terms(solver_cls, reverse):
    # dy = -a y dt + 0 dW from y0 = 1: the exact value after unit time is e^-a forwards and,
    # integrated backwards from t = 1 to t = 0, e^{+a}. A zero diffusion isolates the drift.
    a = 1.0
    levy = diffrax.SpaceTimeLevyArea if solver_cls in (diffrax.SEA, diffrax.ShARK, diffrax.SRA1) else None
    kw = {} if levy is None else {"levy_area": levy}
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-6, shape=(1,), key=jax.random.PRNGKey(0), **kw)
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: -a * y),
        diffrax.ControlTerm(lambda t, y, args: lx.DiagonalLinearOperator(jnp.zeros_like(y)), bm),
    )
    t0, t1, dt = (1.0, 0.0, -0.01) if reverse else (0.0, 1.0, 0.01)
    return float(diffrax.diffeqsolve(terms, solver_cls(), t0, t1, dt, jnp.ones(1)).ys[-1, 0])


def test_diffrax_srk_solvers_integrate_reversed_time_wrongly():
    # Regression guard for patrick-kidger/diffrax#598 (fixed upstream by PR 746, not in
    # diffrax 0.7.2): with t0 > t1 the SRK solvers step the drift forward in time. If this
    # test fails, upstream is fixed: the forward clock in jdiff/samplers/_sde.py is then no
    # longer needed (it stays correct).
    e = float(np.exp(1.0))
    assert _ou_terms(diffrax.Heun, reverse=True) == pytest.approx(e, rel=1e-4)
    assert _ou_terms(diffrax.SEA, reverse=True) == pytest.approx(1 / e, rel=1e-2)  # wrong: should be e


def test_forward_clock_reverse_sde_is_right_with_srk_solvers():
    # The reverse SDE with churn = 0 is the PF-ODE: jdiff's forward-clock solve with SEA and
    # ShARK (which would go wrong in reversed time) must match the exact ODE endpoint.
    path = jdiff.VEGeometric()
    model = _oracle(path, "x0")
    t0 = 0.6  # sigma = 1.15: the part of the flow where the mixture matters
    x, _ = path.marginal(jax.random.PRNGKey(0), GM.sample(jax.random.PRNGKey(1), 8), jnp.asarray(t0))
    ref = S.solve_pf_ode(model, x, t0=t0, solver=diffrax.Dopri8(), rtol=1e-10, atol=1e-10).sample
    errs = {}
    for name, solver in (("sea", diffrax.SEA()), ("shark", diffrax.ShARK())):
        sol = S.solve_reverse_sde(model, jax.random.PRNGKey(1), x, num_steps=100, t0=t0, solver=solver, churn=0.0)
        errs[name] = float(jnp.max(jnp.abs(sol.sample - ref)))
    # SEA is first order on an ODE, ShARK second order (Euler and Heun: test_samplers_stochastic);
    # a solve in the wrong direction would be off by O(1).
    assert errs["shark"] < 1e-3 and errs["sea"] < 5e-2 and errs["shark"] < errs["sea"] / 10, errs


def test_reverse_sde_arguments_are_checked():
    path = jdiff.VPLinear()
    model = GM.as_model(path, "eps")
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="num_steps"):
        S.solve_reverse_sde(model, jax.random.PRNGKey(0), x)
    with pytest.raises(TypeError, match="diffrax solver"):
        S.solve_reverse_sde(model, jax.random.PRNGKey(0), x, num_steps=2, solver="milstein")
    with pytest.raises(ValueError, match="Tsit5"):
        S.solve_pf_ode(model, x, solver=diffrax.Kvaerno5())
    with pytest.raises(ValueError, match="solve_reverse_sde"):
        S.solve_pf_ode(model, x, solver=diffrax.SEA())
    with pytest.raises(TypeError, match="jdiff.Model"):
        S.solve_pf_ode(model.net, x)


@pytest.mark.parametrize("solver", [diffrax.Bosh3(), diffrax.Heun()], ids=["bosh3_fsal", "heun"])
def test_one_evaluation_counter_for_every_diffrax_solver(solver):
    # diffrax_evals is the one counter of the PF-ODE, reverse-SDE and likelihood solves: the
    # callback count of an FSAL pair (Bosh3) and of a plain RK pair (Heun) must equal it
    # (Tsit5: test above; Euler/Heun SDE solves: test_samplers_stochastic).
    counter = [0]
    path = jdiff.VPLinear()
    model = _oracle(path, "eps", counter=counter)
    x = path.prior_sample(jax.random.PRNGKey(0), (4, 2), jnp.float64)
    sol = S.solve_pf_ode(model, x, solver=solver, rtol=1e-3, atol=1e-3)
    assert counter[0] == int(sol.nfe) > 0
    per_step, first = S.diffrax_evals(solver)
    assert int(sol.nfe) == first + per_step * int(sol.num_steps)
