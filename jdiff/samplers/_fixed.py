"""Fixed-step solvers, each one step of a `lax.scan` (see `_base.sample`).

Notation: a = alpha, s = sigma of the path; lambda = log(a / s) is HALF of the path's
`log_snr` (= log(a^2 / s^2)): the exponential-integrator formulas of DPM-Solver,
DPM-Solver++ and UniPC are written in this half log-SNR, h = lambda_s - lambda_t > 0
for a step from t to s < t. The data prediction x0_hat and noise prediction eps_hat come
from `jdiff.predictions` whatever the model's kind.

Multistep methods warm up with lower orders: the order used at step i is
min(order, i + 1), chosen by `jnp.where` on scalar coefficients (no `lax.cond`). With
`lower_order_final=True` it is min(order, i + 1, N - i): the last steps drop to lower
orders too (diffusers' option of the same name), which helps at small N, where the last
steps are the longest in log-SNR.

Clocks. Euler, Heun and LMS integrate the PF-ODE in a clock: `clock="t"` is the path's own time
(x' = u(x, t)); `clock="sigma"` is the EDM / k-diffusion convention on any path, the scaled
state y = x / alpha in the noise level sigma_e = sigma / alpha, where the ODE reads
dy / d sigma_e = eps_hat (Karras et al. 2022, eq. 4 with s = alpha). On a variance-exploding
path (alpha = 1) that is the sigma clock of k-diffusion's sample_euler / sample_heun;
Euler in it is DDIM on every path. `clock="auto"` (the default) picks "sigma" where alpha is
constant (VEGeometric, EDM: the path's t is log-sigma or an affine map of sigma) and "t"
elsewhere, where the measured errors favour the path's clock (docs/samplers.md).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jdiff.samplers._base import AbstractSolver

__all__ = [
    "DDPM",
    "DDIM",
    "Euler",
    "Heun",
    "DPMSolver",
    "DPMSolver2M",
    "DPMSolverPP2M",
    "DPMSolverPP3M",
    "DPMSolverPP2MSDE",
    "UniPC",
    "LMS",
    "EulerMaruyama",
    "PredictorCorrector",
]


def _lam(path, t):
    """Half log-SNR lambda = log(alpha / sigma)."""
    return 0.5 * path.log_snr(t)


def _normal(key, x):
    return jax.random.normal(key, jnp.shape(x), jnp.result_type(x))


def _combine(weights, arrays):
    """sum_k weights[k] * arrays[k], for scalar weights and a stacked (K, ...) array."""
    return jnp.tensordot(weights.astype(arrays.dtype), arrays, axes=1)


def _push(hist, new):
    """Shift a (K, ...) history down by one and put `new` in front (K = 0: nothing to keep)."""
    if hist.shape[0] == 0:
        return hist
    return jnp.concatenate([new[None], hist[:-1]], axis=0)


def _check_order(order, allowed, name="order"):
    if order not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}; got {order!r}")


def _check_nonneg(value, name):
    if not value >= 0:
        raise ValueError(f"`{name}` must be a number >= 0; got {value!r}")


CLOCKS = ("auto", "t", "sigma")


def _check_clock(clock):
    if clock not in CLOCKS:
        raise ValueError(f"`clock` must be one of {CLOCKS}; got {clock!r}")


def _resolve_clock(clock, path):
    """ "auto" -> "sigma" on a path whose alpha is constant (variance exploding), else "t".

    Decided once while tracing, from alpha and its derivative at three times (evaluated at
    trace time; a schedule whose alpha depends on traced parameters gets "t").
    """
    if clock != "auto":
        return clock
    with jax.ensure_compile_time_eval():
        ts = np.linspace(path.t_min, path.t_max, 3)
        a, da = path.alpha(ts), path.d_alpha(ts)
    if isinstance(a, jax.core.Tracer) or isinstance(da, jax.core.Tracer):
        return "t"
    a, da = np.asarray(a), np.asarray(da)
    return "sigma" if np.all(da == 0.0) and np.all(a == a[0]) else "t"


def _sigma_clock_euler(path, x, t, s):
    """One Euler step of dy / d sigma_e = eps_hat with y = x / alpha, sigma_e = sigma / alpha.

    x_s = (a_s / a_t) x + a_s (sigma_e(s) - sigma_e(t)) eps, and a_s (sigma_e(s) - sigma_e(t))
    = -s_s expm1((lambda_s - lambda_t) / 2) (full log-SNR): finite where alpha_t -> 0.
    Returns (x_s without the eps term, the eps coefficient).
    """
    ratio = path.alpha(s) / path.alpha(t)
    c = -path.sigma(s) * jnp.expm1(0.5 * (path.log_snr(s) - path.log_snr(t)))
    return ratio * x, c


def _lower_order(order, i, num_steps, lower_order_final):
    """The order of multistep step i: min(order, i + 1), and min(., N - i) with lower_order_final."""
    q = jnp.minimum(i + 1, order)
    return jnp.minimum(q, num_steps - i) if lower_order_final else q


# ---------------------------------------------------------------------------------
# One-step methods
# ---------------------------------------------------------------------------------


class DDPM(AbstractSolver):
    """Ancestral sampling (Ho et al. 2020) on a continuous path.

    Each step draws x_s from the exact Gaussian posterior q(x_s | x_t, x0 = x0_hat):
    with a_{t|s} = a_t / a_s and s_{t|s}^2 = s_t^2 - a_{t|s}^2 s_s^2,
        mean = a_{t|s} s_s^2 / s_t^2 x_t + a_s s_{t|s}^2 / s_t^2 x0_hat,  var = s_{t|s}^2 s_s^2 / s_t^2.
    Written with the log-SNR, s_{t|s}^2 / s_t^2 = -expm1(lambda_t - lambda_s) (full log-SNR),
    which stays accurate for short steps.
    """

    @property
    def order(self):
        return 1

    @property
    def stochastic(self):
        return True

    def step(self, f, x, state, i, t, s, key):
        path = f.path
        x0, _ = f(x, t)
        d = path.log_snr(t) - path.log_snr(s)  # < 0
        frac = -jnp.expm1(d)  # s_{t|s}^2 / s_t^2
        ss = path.sigma(s)
        mean = (ss / path.sigma(t)) * jnp.exp(0.5 * d) * x + path.alpha(s) * frac * x0
        return mean + ss * jnp.sqrt(frac) * _normal(key, x), state


class DDIM(AbstractSolver):
    """DDIM (Song et al. 2021a): x_s = a_s x0_hat + sqrt(s_s^2 - c^2) eps_hat + c z.

    c = eta * s_s sqrt(-expm1(lambda_t - lambda_s)) is eta times the posterior std of DDPM;
    eta = 0 is the deterministic DDIM (first-order exponential integrator of the PF-ODE,
    = DPM-Solver-1), eta = 1 samples the DDPM posterior.
    """

    eta: float = 0.0

    def __check_init__(self):
        _check_nonneg(self.eta, "eta")

    @property
    def order(self):
        return 1

    @property
    def stochastic(self):
        return self.eta > 0

    def step(self, f, x, state, i, t, s, key):
        path = f.path
        x0, eps = f(x, t)
        a_s, s_s = path.alpha(s), path.sigma(s)
        if self.eta == 0:
            return a_s * x0 + s_s * eps, state
        c2 = self.eta**2 * s_s**2 * -jnp.expm1(path.log_snr(t) - path.log_snr(s))
        x_s = a_s * x0 + jnp.sqrt(jnp.maximum(s_s**2 - c2, 0.0)) * eps + jnp.sqrt(c2) * _normal(key, x)
        return x_s, state


class Euler(AbstractSolver):
    """Explicit Euler on the probability-flow ODE in a clock (see the module docstring).

    clock="t": x_s = x_t + (s - t) u(x_t, t). clock="sigma": y_s = y_t + (sigma_e(s) -
    sigma_e(t)) eps_hat with y = x / alpha (k-diffusion's sample_euler; equals DDIM on every
    path). clock="auto" (default): "sigma" on a path with constant alpha, else "t".
    """

    clock: str = "auto"

    def __check_init__(self):
        _check_clock(self.clock)

    @property
    def order(self):
        return 1

    def step(self, f, x, state, i, t, s, key):
        if _resolve_clock(self.clock, f.path) == "sigma":
            x_r, c = _sigma_clock_euler(f.path, x, t, s)
            return x_r + c * f(x, t)[1], state
        return x + (s - t) * f.velocity(x, t), state


class Heun(AbstractSolver):
    """EDM's second-order sampler (Karras et al. 2022, Algorithms 1 and 2) in a clock.

    Heun's method (trapezoidal predictor-corrector) on the PF-ODE velocity, two model
    evaluations per step. With s_churn > 0, each step from t with s_tmin <= t <= s_tmax
    first raises the EDM noise level sigma_e = sigma / alpha to sigma_e (1 + gamma),
    gamma = min(s_churn / N, sqrt(2) - 1), by adding fresh noise of std
    alpha_hat sqrt(sigma_hat^2 - sigma_e^2) * s_noise, and integrates from that time.

    Args:
        s_churn: total stochasticity (EDM's S_churn); 0 is the deterministic Heun sampler.
        s_tmin, s_tmax: times (in this path's clock, not EDM sigmas: convert with
            `path.t_from_log_snr(-2 log sigma)`) between which churn is applied.
        s_noise: scale of the added noise (EDM's S_noise, slightly > 1 in their tuned runs).
        clock: "t" (the path's time), "sigma" (y = x / alpha in sigma_e = sigma / alpha:
            k-diffusion's sample_heun on any path) or "auto" (default: "sigma" on a path with
            constant alpha such as VEGeometric, else "t"); see the module docstring.
    """

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    clock: str = "auto"

    def __check_init__(self):
        _check_nonneg(self.s_churn, "s_churn")
        _check_nonneg(self.s_noise, "s_noise")
        _check_clock(self.clock)

    @property
    def order(self):
        return 2

    @property
    def stochastic(self):
        return self.s_churn > 0

    @property
    def evals_per_step(self):
        return 2

    def step(self, f, x, state, i, t, s, key):
        path = f.path
        if self.stochastic:
            gamma = min(self.s_churn / f.num_steps, math.sqrt(2.0) - 1.0)
            gamma = jnp.where((t >= self.s_tmin) & (t <= self.s_tmax), gamma, 0.0).astype(t.dtype)
            # sigma_e -> sigma_e (1 + gamma) is lambda -> lambda - 2 log(1 + gamma); stay in range.
            t_hat = path.t_from_log_snr(path.log_snr(t) - 2.0 * jnp.log1p(gamma))
            t_hat = jnp.where(gamma > 0, jnp.minimum(t_hat, path.t_max), t).astype(t.dtype)
            a, a_hat, s_hat = path.alpha(t), path.alpha(t_hat), path.sigma(t_hat)
            ratio = a_hat / a
            # alpha_hat^2 (sigma_hat_e^2 - sigma_e^2) = s_hat^2 - (a_hat / a)^2 s^2
            std = jnp.sqrt(jnp.maximum(s_hat**2 - (ratio * path.sigma(t)) ** 2, 0.0))
            x = ratio * x + (std * self.s_noise) * _normal(key, x)
            t = t_hat
        if _resolve_clock(self.clock, path) == "sigma":
            x_r, c = _sigma_clock_euler(path, x, t, s)
            eps_t = f(x, t)[1]
            return x_r + (0.5 * c) * (eps_t + f(x_r + c * eps_t, s)[1]), state
        d = f.velocity(x, t)
        x_e = x + (s - t) * d
        return x + (0.5 * (s - t)) * (d + f.velocity(x_e, s)), state


class DPMSolver(AbstractSolver):
    """Singlestep DPM-Solver-1, -2, -3 (Lu et al. 2022, Algorithms 1 and 2), noise prediction.

    Exponential integrators of the PF-ODE in lambda: order k uses k model evaluations per
    step, at intermediate log-SNRs lambda_t + r h (r = 1/2 for order 2; r = 1/3, 2/3 for
    order 3, the paper's choices), mapped to times by `path.t_from_log_snr`.
    """

    order_k: int

    def __init__(self, order: int = 2):
        _check_order(order, (1, 2, 3))
        self.order_k = order

    @property
    def order(self):
        return self.order_k

    @property
    def evals_per_step(self):
        return self.order_k

    def step(self, f, x, state, i, t, s, key):
        path = f.path
        lt, ls = _lam(path, t), _lam(path, s)
        h = ls - lt
        a_t = path.alpha(t)
        eps_t = f(x, t)[1]

        def at(r):
            # the time with lambda = lambda_t + r h, its alpha, sigma, and the order-1 step to it
            u = path.t_from_log_snr(2.0 * (lt + r * h)).astype(t.dtype)
            a_u, s_u = path.alpha(u), path.sigma(u)
            return u, a_u, s_u, (a_u / a_t) * x - s_u * jnp.expm1(r * h) * eps_t

        a_s, s_s = path.alpha(s), path.sigma(s)
        x_1 = (a_s / a_t) * x - s_s * jnp.expm1(h) * eps_t
        if self.order_k == 1:
            return x_1, state
        if self.order_k == 2:
            r1 = 0.5
            u, _, _, x_u = at(r1)
            return x_1 - (s_s / (2.0 * r1)) * jnp.expm1(h) * (f(x_u, u)[1] - eps_t), state
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        u1, _, _, x_u1 = at(r1)
        d1_1 = f(x_u1, u1)[1] - eps_t
        u2, _, s_u2, x_u2 = at(r2)
        x_u2 = x_u2 - (s_u2 * r2 / r1) * (jnp.expm1(r2 * h) / (r2 * h) - 1.0) * d1_1
        d1_2 = f(x_u2, u2)[1] - eps_t
        return x_1 - (s_s / r2) * (jnp.expm1(h) / h - 1.0) * d1_2, state


# ---------------------------------------------------------------------------------
# Multistep methods (one model evaluation per step, history in the carried state)
# ---------------------------------------------------------------------------------


def _history_init(f, x, grid, k):
    """k past data predictions (zeros) at distinct dummy half log-SNRs below the first one.

    The dummies keep every coefficient finite during warm-up; they are never selected.
    """
    lam0 = _lam(f.path, grid[0])
    return jnp.zeros((k,) + jnp.shape(x), jnp.result_type(x)), lam0 - jnp.arange(1, k + 1, dtype=grid.dtype)


class DPMSolverPP2M(AbstractSolver):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): multistep, data prediction.

    x_s = (s_s / s_t) x_t - a_s expm1(-h) D,  D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1},
    r = h_{i-1} / h; the first step uses D = x0_0 (DDIM), and so does the last one with
    `lower_order_final=True`.
    """

    lower_order_final: bool = False

    @property
    def order(self):
        return 2

    def init(self, f, x, grid):
        return _history_init(f, x, grid, 1)

    def step(self, f, x, state, i, t, s, key):
        path = f.path
        m_hist, l_hist = state
        x0 = f(x, t)[0]
        lt, ls = _lam(path, t), _lam(path, s)
        h = ls - lt
        r = (lt - l_hist[0]) / h
        c = jnp.where(_lower_order(2, i, f.num_steps, self.lower_order_final) == 2, 0.5 / r, 0.0)
        d = (1.0 + c) * x0 - c * m_hist[0]
        x_s = (path.sigma(s) / path.sigma(t)) * x - path.alpha(s) * jnp.expm1(-h) * d
        return x_s, (_push(m_hist, x0), _push(l_hist, lt))


class DPMSolver2M(AbstractSolver):
    """Multistep DPM-Solver-2 in noise prediction (Lu et al. 2022b, Appendix; diffusers'
    `algorithm_type="dpmsolver"`, `solver_order=2`).

    With h = lambda_s - lambda_t, r = h_{i-1} / h, D1 = (eps_i - eps_{i-1}) / r:
        x_s = (a_s / a_t) x_t - s_s expm1(h) eps_i - c(h) s_s D1,
    c = expm1(h) / 2 ("midpoint", diffusers' default) or expm1(h) / h - 1 ("taylor").
    The first step is DPM-Solver-1 (DDIM), and so is the last one with `lower_order_final`.
    """

    variant: str = "midpoint"
    lower_order_final: bool = False

    def __check_init__(self):
        if self.variant not in ("midpoint", "taylor"):
            raise ValueError(f"`variant` must be 'midpoint' or 'taylor'; got {self.variant!r}")

    @property
    def order(self):
        return 2

    def init(self, f, x, grid):
        return _history_init(f, x, grid, 1)

    def step(self, f, x, state, i, t, s, key):
        path = f.path
        e_hist, l_hist = state
        eps = f(x, t)[1]
        lt, ls = _lam(path, t), _lam(path, s)
        h = ls - lt
        r = (lt - l_hist[0]) / h
        phi = jnp.expm1(h)
        c = 0.5 * phi if self.variant == "midpoint" else phi / h - 1.0
        c = jnp.where(_lower_order(2, i, f.num_steps, self.lower_order_final) == 2, c / r, 0.0)
        s_s = path.sigma(s)
        x_s = (path.alpha(s) / path.alpha(t)) * x - (s_s * (phi + c)) * eps + (s_s * c) * e_hist[0]
        return x_s, (_push(e_hist, eps), _push(l_hist, lt))


class DPMSolverPP3M(AbstractSolver):
    """DPM-Solver++(3M): third-order multistep data prediction (Lu et al. 2022b).

    With r0 = h_{i-1}/h, r1 = h_{i-2}/h, D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1:
        D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1) = h x0' + O(h^3),
        D2 = (D1_0 - D1_1)/(r0 + r1)        = h^2 x0''/2 + O(h^3)   (x0' = d x0_hat / d lambda),
        x_s = (s_s/s_t) x - a_s phi1 m0 + a_s phi2 D1 - 2 a_s phi3 D2,
    phi1 = expm1(-h), phi2 = phi1/h + 1, phi3 = (phi1 + h)/h^2 - 1/2. The exact integral
    a_s int_0^h e^-u (h - u)^2/2 du x0'' equals -2 a_s phi3 D2: the dpm-solver / diffusers /
    k-diffusion code weights D2 by phi3 alone, which leaves a local O(h^3) error (global
    order 2; measured 2.3 on the mixture test vs 3.0 with the factor 2).

    Warm-up: step 0 is one DPM-Solver++(2S) step (Lu et al. 2022b, Algorithm 1, midpoint in
    lambda; one extra model evaluation), step 1 is second order (D1 = D1_0, D2 = 0). Both have
    local error O(h^3), so the global order is 3; the usual first-order start (diffusers,
    k-diffusion) has local error O(h^2) at step 0 and is globally only second order.
    NFE = N + 1. With `lower_order_final=True` the last step is first order (DDIM) and the one
    before second order (a one-step solve, N = 1, is then DDIM too).
    """

    lower_order_final: bool = False

    @property
    def order(self):
        return 3

    def nfe(self, num_steps):
        return num_steps + 1

    def init(self, f, x, grid):
        return _history_init(f, x, grid, 2)

    @property
    def has_start_step(self):
        return True

    def start_step(self, f, x, state, t, s, key):
        path = f.path
        m_hist, l_hist = state
        x0 = f(x, t)[0]
        lt, ls = _lam(path, t), _lam(path, s)
        h = ls - lt
        s_t = path.sigma(t)
        if self.lower_order_final and f.num_steps == 1:
            x_s = (path.sigma(s) / s_t) * x - path.alpha(s) * jnp.expm1(-h) * x0
            return x_s, (_push(m_hist, x0), _push(l_hist, lt))
        u = path.t_from_log_snr(2.0 * (lt + 0.5 * h)).astype(t.dtype)
        x_u = (path.sigma(u) / s_t) * x - path.alpha(u) * jnp.expm1(-0.5 * h) * x0
        x_s = (path.sigma(s) / s_t) * x - path.alpha(s) * jnp.expm1(-h) * f(x_u, u)[0]
        return x_s, (_push(m_hist, x0), _push(l_hist, lt))

    def step(self, f, x, state, i, t, s, key):
        path = f.path
        m_hist, l_hist = state
        x0 = f(x, t)[0]
        lt, ls = _lam(path, t), _lam(path, s)
        h = ls - lt
        r0, r1 = (lt - l_hist[0]) / h, (l_hist[0] - l_hist[1]) / h
        phi1 = jnp.expm1(-h)
        phi2 = phi1 / h + 1.0
        phi3 = (phi1 + h) / (h * h) - 0.5
        # weights of D1_0, D1_1 and D2 in (m0, m1, m2)
        d10 = jnp.stack([1.0 / r0, -1.0 / r0, 0.0 * r0])
        d11 = jnp.stack([0.0 * r1, 1.0 / r1, -1.0 / r1])
        d2 = (d10 - d11) / (r0 + r1)
        q = _lower_order(3, i, f.num_steps, self.lower_order_final)
        d1 = jnp.where(q == 3, d10 + r0 * d2, jnp.where(q == 2, d10, 0.0))
        d2 = jnp.where(q == 3, d2, 0.0)
        w = jnp.stack([-phi1, 0.0 * h, 0.0 * h]) + phi2 * d1 - 2.0 * phi3 * d2
        ms = jnp.concatenate([x0[None], m_hist], axis=0)
        x_s = (path.sigma(s) / path.sigma(t)) * x + path.alpha(s) * _combine(w, ms)
        return x_s, (_push(m_hist, x0), _push(l_hist, lt))


class DPMSolverPP2MSDE(AbstractSolver):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Section 5; the midpoint form of diffusers).

    x_s = (s_s/s_t) e^{-h} x + a_s (1 - e^{-2h}) (m0 + D1 / 2) + s_s sqrt(1 - e^{-2h}) z,
    D1 = (m0 - m1) / r0 (zero at the first step): the exact solution of the reverse SDE
    (churn 1) for a data prediction linear in lambda. Weak order 1.
    """

    @property
    def order(self):
        return 1

    @property
    def stochastic(self):
        return True

    def init(self, f, x, grid):
        return _history_init(f, x, grid, 1)

    def step(self, f, x, state, i, t, s, key):
        path = f.path
        m_hist, l_hist = state
        x0 = f(x, t)[0]
        lt, ls = _lam(path, t), _lam(path, s)
        h = ls - lt
        r0 = (lt - l_hist[0]) / h
        c = jnp.where(i > 0, 0.5 / r0, 0.0)
        one_m = -jnp.expm1(-2.0 * h)  # 1 - e^{-2h}
        s_s = path.sigma(s)
        x_s = (
            (s_s / path.sigma(t) * jnp.exp(-h)) * x
            + path.alpha(s) * one_m * ((1.0 + c) * x0 - c * m_hist[0])
            + s_s * jnp.sqrt(one_m) * _normal(key, x)
        )
        return x_s, (_push(m_hist, x0), _push(l_hist, lt))


def _unipc_b(hh, bh, q):
    """UniPC's right-hand side b_1..b_q and h*phi_1 (Zhao et al. 2023, Algorithms 2 and 3)."""
    h_phi_1 = jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if bh == "bh1" else h_phi_1
    b, fact = [], 1
    for j in range(1, q + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return jnp.stack(b), h_phi_1, b_h


def _solve_small(rks, b):
    """Solve the Vandermonde system sum_k rks[k]^j rho_k = b_j, j = 0..q-1, in closed form.

    rho_k = sum_j c_kj b_j with c_kj the monomial coefficients of the Lagrange basis
    polynomial l_k of the nodes rks (since sum_j c_kj r_m^j = l_k(r_m) = delta_km). Cheaper
    to compile than an LU solve inside the scan, and exact for these q <= 3 systems.
    """
    q = b.shape[0]
    rho = []
    for k in range(q):
        poly, denom = [1.0], 1.0
        for m in range(q):
            if m != k:
                # poly * (x - r_m)
                poly = [
                    (poly[j - 1] if j > 0 else 0.0) - rks[m] * (poly[j] if j < len(poly) else 0.0)
                    for j in range(len(poly) + 1)
                ]
                denom = denom * (rks[k] - rks[m])
        rho.append(sum(poly[j] * b[j] for j in range(q)) / denom)
    return jnp.stack(rho)


class UniPC(AbstractSolver):
    """UniPC (Zhao et al. 2023): UniP-p multistep predictor + UniC corrector, data prediction.

    Each step evaluates the model once at the predicted point x_i, uses that evaluation to
    correct x_i (UniC adds no evaluation), and predicts x_{i+1} from the corrected x_i with
    the same evaluation (the paper's and diffusers' scheme; the last step is not corrected).
    UniC-p raises the order of UniP-p to p + 1 (their Theorem 3.2) given accurate starting
    values. Warm-up uses order min(p, i + 1) at step i; its first step (UniP-1 + UniC-1) has
    local error O(h^3), which caps the global order at 3: `order` = min(p + 1, 3), and
    min(p, 2) without the corrector (the first step is then DDIM). `predictor_order=2` is
    the third-order solver; `predictor_order=3` has a smaller error constant and measures
    as fourth order until very fine grids (local slopes 4.7, 4.4, 3.8 from N = 64 to 512 on
    the mixture test, drifting toward 3).

    Args:
        predictor_order: p in {1, 2, 3} (diffusers' `solver_order`).
        variant: "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1); the paper recommends bh1 for
            unconditional sampling at very few steps and bh2 otherwise.
        corrector: apply UniC (True); False leaves the plain UniP-p multistep predictor.
        lower_order_final: step i predicts with order min(p, i + 1, N - i) (diffusers'
            `lower_order_final`, which UniPC applies at every N), and UniC corrects each
            step with the order its predictor used.
    """

    order_p: int
    variant: str
    corrector: bool
    lower_order_final: bool

    def __init__(self, predictor_order=2, variant="bh2", corrector=True, lower_order_final=False):
        _check_order(predictor_order, (1, 2, 3), "predictor_order")
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"`variant` must be 'bh1' or 'bh2'; got {variant!r}")
        self.order_p, self.variant, self.corrector = predictor_order, variant, bool(corrector)
        self.lower_order_final = bool(lower_order_final)

    @property
    def order(self):
        return min(self.order_p + 1, 3) if self.corrector else min(self.order_p, 2)

    def init(self, f, x, grid):
        m_hist, l_hist = _history_init(f, x, grid, self.order_p)
        lam0 = _lam(f.path, grid[0])
        # (x_{i-1} after correction, its lambda and sigma), dummies at step 0
        return m_hist, l_hist, x, lam0 - 1.0, f.path.sigma(grid[0])

    def _weights(self, lam_0, lam_new, lams_old, q, corrector):
        """Weights of (m0, m_old...) [and m_new for the corrector] in x_new's data term.

        x_new = (s_new / s_0) x_0 + a_new * (weights . (m0, m_1, ..., [m_new])).
        """
        h = lam_new - lam_0
        hh = -h  # data prediction
        rks_old = (lams_old[: q - 1] - lam_0) / h  # (q - 1,), negative
        b, h_phi_1, b_h = _unipc_b(hh, self.variant, q)
        if corrector:
            rhos = jnp.full((1,), 0.5, b.dtype) if q == 1 else _solve_small(jnp.append(rks_old, 1.0), b)
            rho_old, rho_new = rhos[:-1], rhos[-1]
        else:
            if q == 1:
                rho_old = jnp.zeros((0,), b.dtype)
            elif q == 2:
                rho_old = jnp.full((1,), 0.5, b.dtype)
            else:
                rho_old = _solve_small(rks_old, b[:-1])
        # -a h_phi_1 m0 - a B_h (sum_k rho_k (m_k - m0)/r_k + rho_new (m_new - m0))
        c_old = -b_h * rho_old / rks_old
        w0 = -h_phi_1 - jnp.sum(c_old)
        pad = self.order_p - q
        w = [w0[None], c_old, jnp.zeros((pad,), b.dtype)]
        if corrector:
            w[0] = w[0] + b_h * rho_new
            w.append((-b_h * rho_new)[None])
        return jnp.concatenate(w)

    def _selected(self, q_traced, *args, corrector):
        ws = [self._weights(*args, q, corrector) for q in range(1, self.order_p + 1)]
        w = ws[0]
        for q in range(2, self.order_p + 1):
            w = jnp.where(q_traced == q, ws[q - 1], w)
        return w

    def step(self, f, x, state, i, t, s, key):
        path = f.path
        m_hist, l_hist, x_prev, lam_prev, sig_prev = state
        lt, ls = _lam(path, t), _lam(path, s)
        a_t, s_t = path.alpha(t), path.sigma(t)
        m_t = f(x, t)[0]
        if self.corrector:
            # UniC on the step t_{i-1} -> t_i just taken, with the order that step used
            q_c = _lower_order(self.order_p, i - 1, f.num_steps, self.lower_order_final)  # step i - 1's order
            w = self._selected(q_c, lam_prev, lt, l_hist[1:], corrector=True)
            ms = jnp.concatenate([m_hist, m_t[None]], axis=0)
            x_c = (s_t / sig_prev) * x_prev + a_t * _combine(w, ms)
            x = jnp.where(i > 0, x_c, x)
        q_p = _lower_order(self.order_p, i, f.num_steps, self.lower_order_final)
        w = self._selected(q_p, lt, ls, l_hist, corrector=False)
        ms = jnp.concatenate([m_t[None], m_hist[: self.order_p - 1]], axis=0) if self.order_p > 1 else m_t[None]
        x_s = (path.sigma(s) / s_t) * x + path.alpha(s) * _combine(w, ms)
        return x_s, (_push(m_hist, m_t), _push(l_hist, lt), x, lt, s_t)


class LMS(AbstractSolver):
    """Linear multistep (Adams-Bashforth) on the PF-ODE in a clock (see the module docstring).

    clock="t": x_s = x_t + sum_j c_j u(x_{i-j}, t_{i-j}), c_j the integral over [t, s] of the
    Lagrange basis polynomial through the last `order` grid times (variable steps; k-diffusion's
    `sample_lms` integrates these polynomials with scipy on the host, here Gauss-Legendre
    quadrature with `order` nodes is exact for them and runs inside the scan). clock="sigma":
    the same in y = x / alpha over sigma_e = sigma / alpha, where the ODE reads dy / d sigma_e =
    eps_hat (k-diffusion's sample_lms on a VE path, where y = x); order 1 there is DDIM.
    clock="auto" (default): "sigma" on a path with constant alpha (VEGeometric, EDM), else "t".

    Warm-up with lower orders at steps 1 .. order - 2. For order >= 3 step 0 is a Heun step in
    the same clock (one extra model evaluation): a first-order start (k-diffusion's) has local
    error O(h^2) and caps the global order at 2. With the Heun start every warm-up step has
    local error O(h^3), so the global order is `order`; order 4 would need a third-order start
    and is not offered. NFE = N (+ 1 for order 3). `lower_order_final`: order
    min(order, i + 1, N - i).
    """

    order_p: int
    lower_order_final: bool
    clock: str

    def __init__(self, order=3, lower_order_final=False, clock="auto"):
        _check_order(order, (1, 2, 3))
        _check_clock(clock)
        self.order_p = order
        self.lower_order_final = bool(lower_order_final)
        self.clock = clock

    @property
    def order(self):
        return self.order_p

    def nfe(self, num_steps):
        return num_steps + (1 if self.order_p >= 3 else 0)

    @property
    def has_start_step(self):
        return self.order_p >= 3

    @staticmethod
    def _sigma(path, t):
        """EDM's noise level sigma_e = sigma / alpha = exp(-lambda / 2) (lambda: full log-SNR)."""
        return jnp.exp(-0.5 * path.log_snr(t))

    def start_step(self, f, x, state, t, s, key):
        u_hist, t_hist = state
        if _resolve_clock(self.clock, f.path) == "sigma":  # Heun in sigma_e (as Heun(clock="sigma"))
            x_r, c = _sigma_clock_euler(f.path, x, t, s)
            eps_t = f(x, t)[1]
            x_s = x_r + (0.5 * c) * (eps_t + f(x_r + c * eps_t, s)[1])
            return x_s, (_push(u_hist, eps_t), _push(t_hist, self._sigma(f.path, t)))
        u = f.velocity(x, t)
        x_e = x + (s - t) * u
        x_s = x + (0.5 * (s - t)) * (u + f.velocity(x_e, s))
        return x_s, (_push(u_hist, u), _push(t_hist, t))

    def init(self, f, x, grid):
        k = self.order_p - 1
        start = self._sigma(f.path, grid[0]) if _resolve_clock(self.clock, f.path) == "sigma" else grid[0]
        # dummy past clock values above the start: distinct, so every Lagrange basis is finite
        t_hist = start + jnp.arange(1, k + 1, dtype=grid.dtype)
        return jnp.zeros((k,) + jnp.shape(x), jnp.result_type(x)), t_hist

    def step(self, f, x, state, i, t, s, key):
        u_hist, t_hist = state
        path = f.path
        sigma_clock = _resolve_clock(self.clock, path) == "sigma"
        if sigma_clock:
            # x_s = (a_s / a_t) x + a_s sum_j c_j eps_j, the c_j integrals over [sigma_e(t), sigma_e(s)]
            u, ratio, a_s = f(x, t)[1], path.alpha(s) / path.alpha(t), path.alpha(s)
            t, s = self._sigma(path, t), self._sigma(path, s)
        else:
            u = f.velocity(x, t)
        nodes, weights = np.polynomial.legendre.leggauss(self.order_p)
        half, mid = 0.5 * (s - t), 0.5 * (s + t)
        tau = mid + half * jnp.asarray(nodes, t.dtype)  # quadrature points in [s, t]
        ts = jnp.concatenate([t[None], t_hist])  # (K,) newest first
        ws = []
        for q in range(1, self.order_p + 1):
            c = []
            for j in range(q):
                ell = jnp.ones_like(tau)
                for m in range(q):
                    if m != j:
                        ell = ell * (tau - ts[m]) / (ts[j] - ts[m])
                c.append(half * jnp.sum(jnp.asarray(weights, t.dtype) * ell))
            ws.append(jnp.stack(c + [0.0 * t] * (self.order_p - q)))
        q_i = _lower_order(self.order_p, i, f.num_steps, self.lower_order_final)
        w = ws[0]
        for q in range(2, self.order_p + 1):
            w = jnp.where(q_i == q, ws[q - 1], w)
        us = jnp.concatenate([u[None], u_hist], axis=0)
        new_state = (_push(u_hist, u), _push(t_hist, t))
        if sigma_clock:
            return ratio * x + a_s * _combine(w, us), new_state
        return x + _combine(w, us), new_state


# ---------------------------------------------------------------------------------
# Reverse SDE and predictor-corrector
# ---------------------------------------------------------------------------------


class EulerMaruyama(AbstractSolver):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, "reverse diffusion" predictor):

    x_s = x_t + (s - t) b(x_t, t) + sqrt(t - s) g z,   (b, g) = `jdiff.Model.reverse_sde`,
    with `churn` in [0, inf) scaling the noise (1: the reverse SDE; 0: Euler on the PF-ODE).
    """

    churn: float = 1.0

    def __check_init__(self):
        _check_nonneg(self.churn, "churn")

    @property
    def order(self):
        return 1

    @property
    def stochastic(self):
        return self.churn > 0

    def step(self, f, x, state, i, t, s, key):
        drift, g = f.reverse_sde(x, t, self.churn)
        x_s = x + (s - t) * drift
        if self.stochastic:
            x_s = x_s + (jnp.sqrt(t - s) * g) * _normal(key, x)
        return x_s, state


def _batch_mean_norm(v):
    """Mean over the batch (leading axis) of the per-example Euclidean norms."""
    return jnp.mean(jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, jnp.ndim(v))))))


class PredictorCorrector(AbstractSolver):
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1 / "PC sampling").

    At each grid time t: `n_corrector` Langevin steps at t, then one `predictor` step t -> s.
    Langevin step: x <- x + e score + sqrt(2 e) z, with e = 2 (snr ||z|| / ||score||)^2
    (their Algorithm 5 with alpha = 1); as in their code, ||.|| is the per-example norm
    averaged over the batch (the leading axis), so e is one number per step. (Per-example
    ratios are unstable in low dimension: an example near a mode has ||score|| ~ 0 and a
    huge step.) snr = 0.16 is their CIFAR-10 VE value.

    Args:
        predictor: any fixed-step solver (EulerMaruyama(), DDPM(), DDIM(), Heun(), ...).
        n_corrector: Langevin steps per grid time (each one model evaluation).
        snr: the signal-to-noise ratio r that sets the Langevin step size.
    """

    predictor: AbstractSolver = eqx.field(default_factory=lambda: EulerMaruyama())
    n_corrector: int = 1
    snr: float = 0.16

    def __check_init__(self):
        if not isinstance(self.predictor, AbstractSolver):
            raise TypeError(f"`predictor` must be a jdiff.samplers solver; got {type(self.predictor).__name__}")
        if not isinstance(self.n_corrector, int) or self.n_corrector < 0:
            raise ValueError(f"`n_corrector` must be an int >= 0; got {self.n_corrector!r}")
        if not self.snr > 0:
            raise ValueError(f"`snr` must be > 0; got {self.snr!r}")

    @property
    def order(self):
        return self.predictor.order

    @property
    def stochastic(self):
        return self.n_corrector > 0 or self.predictor.stochastic

    def nfe(self, num_steps):
        return self.predictor.nfe(num_steps) + self.n_corrector * num_steps

    def init(self, f, x, grid):
        return self.predictor.init(f, x, grid)

    @property
    def has_start_step(self):
        return self.predictor.has_start_step

    def _correct(self, f, x, t, key):
        """`n_corrector` Langevin steps at t; returns x and the predictor's key."""
        sig = f.path.sigma(t)
        for j in range(self.n_corrector):
            score = -f(x, t)[1] / sig
            z = _normal(jax.random.fold_in(key, j + 1), x)
            e = 2.0 * (self.snr * _batch_mean_norm(z) / _batch_mean_norm(score)) ** 2
            x = x + e * score + jnp.sqrt(2.0 * e) * z
        return x, (None if key is None else jax.random.fold_in(key, 0))

    def start_step(self, f, x, state, t, s, key):
        x, k = self._correct(f, x, t, key)
        return self.predictor.start_step(f, x, state, t, s, k)

    def step(self, f, x, state, i, t, s, key):
        x, k = self._correct(f, x, t, key)
        return self.predictor.step(f, x, state, i, t, s, k)
