"""Flow-map models: consistency models, MeanFlow, shortcut models, progressive distillation.

A flow map jumps along the probability-flow ODE of a path: f(x_t, t, s) = x_s for s < t
(t = 0 data, t = 1 noise). Every model here is a flow map with the boundary condition
f(x, t, t) = x built in through skip/out scalings,

    f(x, t, s) = c_skip(t, s) x + c_out(t, s) F(c_in(t) x, t, s, cond),

with c_skip(t, t) = 1 and c_out(t, t) = 0 exactly (in floating point, not only in the
limit), where F is a raw network `net(x, t, s, cond)` that always receives one time t and
one time s per example (shape x.shape[:1]). Two parameterizations (`AbstractFlowMapParam`):

    AverageVelocity()   f = x + (s - t) F: F is the average velocity u over [s, t]
                        (MeanFlow's u(z, r, t) with r = s; shortcut models' v(x, t, d), d = t - s).
    DDIMDenoiser(sd)    f = DDIM step from t to s with the denoiser D = EDM-preconditioned F
                        (CTM's jump parameterization; on the VE path with s = t_min its c_out is
                        exactly the consistency-model c_out of Song et al. 2023).

Losses are pure functions returning unreduced per-example values. Units: the consistency
losses use the pseudo-Huber distance of the whole example (a norm, as in the papers), MeanFlow
the squared L2 norm summed over the example (its adaptive weight's c = 1e-3 is calibrated for
that), shortcut and progressive distillation the squared error averaged over the example's
values, as jdiff.losses' regression losses (Ho et al.'s `mean_flat`):

    consistency_training_loss      improved consistency training (Song & Dhariwal 2023)
    consistency_distillation_loss  consistency distillation from any teacher step (Song et al. 2023)
    meanflow_loss                  the MeanFlow identity with a jax.jvp time derivative (Geng et al. 2025)
    shortcut_loss                  flow matching + two d-steps = one 2d-step (Frans et al. 2025)
    progressive_distillation_loss  one student DDIM step = two teacher steps (Salimans & Ho 2022)

`sample` runs any flow map on a time grid in one `lax.scan`, deterministically or with
re-noising (gamma = 1 is the multistep consistency sampler; 0 < gamma < 1 is CTM's
gamma-sampling).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx

from jdiff import predictions, samplers
from jdiff.models.embeddings import check_unconditional, class_embedding_or_none, sinusoidal_embedding
from jdiff.paths import AbstractPath, expand_to

__all__ = [
    "AbstractFlowMapParam",
    "AverageVelocity",
    "DDIMDenoiser",
    "FlowMapMLP",
    "consistency_distillation_loss",
    "consistency_function",
    "consistency_training_loss",
    "ddim_target",
    "flow_map",
    "ict_noise_level_probs",
    "ict_num_scales",
    "karras_sigmas",
    "meanflow_loss",
    "meanflow_target",
    "progressive_distillation_loss",
    "pseudo_huber",
    "sample",
    "shortcut_loss",
    "solver_step",
]


# -----------------------------------------------------------------------------------
# Small private helpers
# -----------------------------------------------------------------------------------


def _per_example(t, x):
    """Broadcast a scalar or per-example time to shape x.shape[:1] in x's dtype."""
    return jnp.broadcast_to(jnp.asarray(t, jnp.result_type(x)), jnp.shape(x)[:1])


def _interp(path, x0, eps, t):
    """x_t = alpha(t) x0 + sigma(t) eps with per-example t (the same eps at every t)."""
    return expand_to(path.alpha(t), x0, "t") * x0 + expand_to(path.sigma(t), x0, "t") * eps


def _cond_velocity(path, x0, eps, t):
    """The conditional flow-matching velocity d/dt x_t = alpha'(t) x0 + sigma'(t) eps."""
    return expand_to(path.d_alpha(t), x0, "t") * x0 + expand_to(path.d_sigma(t), x0, "t") * eps


def _sqnorm(x):
    """Squared L2 norm of each example (sum over all but the leading axis)."""
    return jnp.sum(jnp.square(x), axis=tuple(range(1, jnp.ndim(x))))


def _msq(x):
    """Mean square over each example's values (jdiff.losses' `mean_flat` convention)."""
    return jnp.mean(jnp.square(x), axis=tuple(range(1, jnp.ndim(x))))


def _edm_sigma(path, t):
    """EDM's noise level sigma_e = sigma / alpha = exp(-lambda / 2) of a path at t."""
    return jnp.exp(-0.5 * path.log_snr(t))


def _t_from_edm_sigma(path, sigma):
    return path.t_from_log_snr(-2.0 * jnp.log(sigma))


def _where_tree(mask, a, b):
    """Per-example select between two pytrees whose leaves lead with the batch axis."""

    def pick(x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        y = jnp.broadcast_to(y, x.shape)
        return jnp.where(expand_to(mask, x, "cond"), x, y)

    return jax.tree_util.tree_map(pick, a, b)


# -----------------------------------------------------------------------------------
# Parameterizations
# -----------------------------------------------------------------------------------


class AbstractFlowMapParam(eqx.Module):
    """Skip/out/in scalings of a flow map f = c_skip x + c_out F(c_in x, t, s, cond).

    Implementations must return c_skip = 1 and c_out = 0 *exactly* at s = t.
    """

    @abc.abstractmethod
    def scalings(self, path: AbstractPath, t, s):
        """(c_skip, c_out, c_in), each of the shape of `t` (= that of `s`)."""


class AverageVelocity(AbstractFlowMapParam):
    """f(x, t, s) = x + (s - t) u(x, t, s): the network is the average velocity over [s, t].

    u(x_t, t, s) = (x_t - x_s) / (t - s) = (1 / (t - s)) int_s^t v(x_tau, tau) dtau, which tends
    to the PF-ODE velocity v(x_t, t) as s -> t (MeanFlow, Geng et al. 2025; shortcut models,
    Frans et al. 2025, with step size d = t - s). Usable with any path.
    """

    def scalings(self, path, t, s):
        one = jnp.ones_like(t)
        return one, s - t, one


class DDIMDenoiser(AbstractFlowMapParam):
    """f(x, t, s) = (sigma_s / sigma_t) x + (alpha_s - alpha_t sigma_s / sigma_t) D(x, t, s).

    D is an EDM-preconditioned denoiser, D = c_skip^e x + c_out^e F(c_in^e x)
    (`predictions.edm_preconditioning`, data std `sigma_data`), so f is one DDIM step from t
    to s with the denoiser D: the jump parameterization of consistency trajectory models
    (Kim et al. 2023, G = (s/t) x + (1 - s/t) g for the VE path). At s = t the DDIM
    coefficients are exactly (1, 0). On the VE path with s = t_min the resulting
    c_out = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2) is exactly the
    consistency-model c_out of Song et al. (2023), and c_skip agrees with theirs to
    O(sigma_min).
    """

    sigma_data: float = 0.5

    def scalings(self, path, t, s):
        a_t, s_t, a_s, s_s = path.alpha(t), path.sigma(t), path.alpha(s), path.sigma(s)
        # sigma_t > 0 wherever t > 0; guard t = s = 0 (0/0) by the exact value 1 at s = t.
        ratio = jnp.where(s == t, 1.0, s_s / jnp.where(s_t > 0, s_t, 1.0))
        b = a_s - a_t * ratio
        pre = predictions.edm_preconditioning(t, path, self.sigma_data)
        return ratio + b * pre.c_skip, b * pre.c_out, pre.c_in


def flow_map(net: Callable, path: AbstractPath, param: AbstractFlowMapParam | None = None):
    """The flow map f(x, t, s, cond=None) of a raw network under a parameterization.

    Args:
        net: `net(x_in, t, s, cond) -> F` with x_in of x's shape and t, s of shape x.shape[:1];
            an nnx Module or any callable.
        path: the Gaussian path whose PF-ODE the map follows.
        param: the skip/out scalings, `AverageVelocity()` (the default) or `DDIMDenoiser(sigma_data)`.

    Returns:
        f(x, t, s, cond=None) -> x_s, with t and s scalars or one time per example.
    """

    param = AverageVelocity() if param is None else param

    def f(x, t, s, cond=None):
        t, s = _per_example(t, x), _per_example(s, x)
        c_skip, c_out, c_in = (expand_to(c, x, "t") for c in param.scalings(path, t, s))
        return c_skip * x + c_out * net(c_in * x, t, s, cond)

    return f


def consistency_function(flow: Callable, path: AbstractPath, t_end=None):
    """The consistency function x -> f(x, t, t_end) of a flow map (t_end defaults to path.t_min).

    Returns g(x, t, cond=None), the one-time model that consistency losses train.
    """
    t_end = path.t_min if t_end is None else t_end

    def g(x, t, cond=None):
        return flow(x, t, t_end, cond)

    return g


def solver_step(solver, model: Callable, kind: str, path: AbstractPath):
    """A teacher's one-step ODE map (x, t, s, cond) -> x_s from a jdiff.samplers solver.

    Each example takes one step of `solver` (e.g. `DDIM()`, `Euler()`, `Heun()`) from its own
    t to its own s on the PF-ODE of `model(x, t, cond)` (predicting `kind` on `path`), through
    `jdiff.samplers.sample` on the 2-point grid [t, s]. The result is what
    `consistency_distillation_loss` and `progressive_distillation_loss` take as `teacher_step`.
    """
    if solver.stochastic:
        raise ValueError(f"`solver` must be deterministic for distillation; {type(solver).__name__} draws noise")

    def one(x, t, s, cond):
        cond = jax.tree_util.tree_map(lambda c: c[None], cond)
        return samplers.sample(solver, model, kind, path, x[None], jnp.stack([t, s]), cond=cond)[0]

    def step(x, t, s, cond=None):
        t, s = _per_example(t, x), _per_example(s, x)
        return jax.vmap(one)(x, t, s, cond)

    return step


# -----------------------------------------------------------------------------------
# Sampling
# -----------------------------------------------------------------------------------


def sample(flow: Callable, path: AbstractPath, x_T, grid, cond=None, *, key=None, gamma=0.0):
    """Run a flow map along a decreasing time grid t_0 > t_1 > ... > t_n in one `lax.scan`.

    gamma = 0 (default) is the deterministic multistep map x_{i+1} = f(x_i, t_i, t_{i+1}); a
    one-step sampler is the 2-point grid [t_max, t_min]. With 0 < gamma <= 1 each step is
    CTM's gamma-sampling (Kim et al. 2023): jump to the time t' whose EDM noise level is
    sqrt(1 - gamma^2) sigma_e(t_{i+1}), rescale to alpha(t_{i+1}), and add fresh noise
    gamma sigma(t_{i+1}) z, so that x_{i+1} again has the marginal noise level of t_{i+1}.
    gamma = 1 jumps to the data end (path.t_min) and re-noises: the multistep consistency
    sampler of Song et al. (2023), Algorithm 1.

    Args:
        flow: f(x, t, s, cond) from `flow_map` (or any callable with that signature).
        path: the path the flow map follows.
        x_T: starting points at grid[0] (a batch), e.g. `path.prior_sample(key, shape)`.
        grid: (n + 1,) decreasing times; a traced array (a new grid of the same length does
            not recompile).
        cond: conditioning pytree passed to the flow map, or None.
        key: PRNG key, required when gamma > 0 (folded with the step index).
        gamma: re-noising fraction in [0, 1] (scalar, may be traced).

    Returns:
        The samples at grid[-1].
    """
    grid = jnp.asarray(grid, jnp.result_type(x_T))
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"`grid` must be a 1-D array of at least 2 decreasing times; got shape {grid.shape}")
    if key is None:
        if not (isinstance(gamma, (int, float)) and gamma == 0):
            raise ValueError("`key` is required when `gamma` is nonzero (re-noising draws fresh noise)")
        key = jax.random.key(0)  # unused: the noise is multiplied by gamma = 0
    gamma = jnp.asarray(gamma, grid.dtype)

    def step(x, inp):
        i, t, t_next = inp
        # Intermediate time t' with log-SNR lambda(t_next) - log(1 - gamma^2); t' = t_next exactly at gamma = 0.
        lam = path.log_snr(t_next) - jnp.log1p(-(gamma**2))
        t_mid = jnp.clip(path.t_from_log_snr(lam), jnp.minimum(path.t_min, t_next), t_next)
        t_mid = jnp.where(gamma == 0, t_next, t_mid)
        x_mid = flow(x, t, t_mid, cond)
        z = jax.random.normal(jax.random.fold_in(key, i), jnp.shape(x), jnp.result_type(x))
        scale = path.alpha(t_next) / path.alpha(t_mid)
        x_next = scale * x_mid + gamma * path.sigma(t_next) * z
        return x_next.astype(jnp.result_type(x)), None

    n = grid.shape[0] - 1
    x, _ = jax.lax.scan(step, x_T, (jnp.arange(n), grid[:-1], grid[1:]))
    return x


# -----------------------------------------------------------------------------------
# Consistency models
# -----------------------------------------------------------------------------------


def pseudo_huber(x, y, c=None):
    """Per-example pseudo-Huber distance sqrt(||x - y||^2 + c^2) - c (Song & Dhariwal 2023).

    c defaults to 0.00054 sqrt(d), d the number of values in one example (their Section 3.3:
    c = 0.03 for 64x64x3 images).
    """
    if c is None:
        c = 0.00054 * math.sqrt(math.prod(jnp.shape(x)[1:]))
    return jnp.sqrt(_sqnorm(x - y) + c * c) - c


def ict_num_scales(step, total_steps: int, s0: int = 10, s1: int = 1280):
    """Number of discretization steps N(k) of improved consistency training.

    N(k) = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2(s1 / s0) + 1))
    (Song & Dhariwal 2023, Eq. 8: the exponential curriculum, doubling every K' steps).
    `step` may be traced.
    """
    k_prime = max(math.floor(total_steps / (math.log2(s1 / s0) + 1)), 1)
    doublings = jnp.floor_divide(jnp.asarray(step), k_prime)
    n = jnp.minimum(s0 * 2.0 ** jnp.minimum(doublings, 62), s1)
    return n.astype(jnp.int32) + 1


def karras_sigmas(i, n, sigma_min, sigma_max, rho: float = 7.0):
    """The i-th of n EDM noise levels, i = 0 .. n - 1 increasing from sigma_min to sigma_max.

    sigma_i = (sigma_min^(1/rho) + i / (n - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho
    (Karras et al. 2022, Eq. 5, rho = 7). `i` and `n` may be traced.
    """
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + i / (n - 1) * (hi - lo)) ** rho


def ict_noise_level_probs(num_scales, sigma_min, sigma_max, *, rho=7.0, p_mean=-1.1, p_std=2.0, max_scales=1280):
    """Probabilities of the iCT noise-level pairs (sigma_i, sigma_{i+1}), i = 0 .. max_scales - 1.

    p(i) is proportional to erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i -
    P_mean) / (sqrt 2 P_std)) for i < num_scales - 1 and 0 beyond (Song & Dhariwal 2023, Sec. 3.5:
    the discretized lognormal with P_mean = -1.1, P_std = 2). The table has the fixed size
    `max_scales` (the curriculum's s1), so `num_scales` may be traced.
    """
    idx = jnp.arange(max_scales)
    lo = jnp.log(karras_sigmas(idx, num_scales, sigma_min, sigma_max, rho))
    hi = jnp.log(karras_sigmas(idx + 1, num_scales, sigma_min, sigma_max, rho))
    scale = 1.0 / (math.sqrt(2.0) * p_std)
    mass = jax.scipy.special.erf((hi - p_mean) * scale) - jax.scipy.special.erf((lo - p_mean) * scale)
    mass = jnp.where(idx < num_scales - 1, mass, 0.0)
    return mass / jnp.sum(mass)


def _edm_range(path, sigma_min, sigma_max):
    sigma_min = _edm_sigma(path, jnp.asarray(path.t_min)) if sigma_min is None else sigma_min
    sigma_max = _edm_sigma(path, jnp.asarray(path.t_max)) if sigma_max is None else sigma_max
    return sigma_min, sigma_max


def _consistency_pair(path, key, x0, n, sigma_min, sigma_max, rho, index_logits=None):
    """Draw a discretization index per example (from `index_logits`, or uniform in 0 .. n - 2);
    return (t_i, t_{i+1}, eps, weight 1 / (sigma_{i+1} - sigma_i))."""
    k_idx, k_eps = jax.random.split(key)
    if index_logits is None:
        i = jax.random.randint(k_idx, jnp.shape(x0)[:1], 0, n - 1)
    else:
        i = jax.random.categorical(k_idx, index_logits, shape=jnp.shape(x0)[:1])
    s_lo = karras_sigmas(i, n, sigma_min, sigma_max, rho)
    s_hi = karras_sigmas(i + 1, n, sigma_min, sigma_max, rho)
    dtype = jnp.result_type(x0)
    t_lo = _t_from_edm_sigma(path, s_lo).astype(dtype)
    t_hi = _t_from_edm_sigma(path, s_hi).astype(dtype)
    eps = jax.random.normal(k_eps, jnp.shape(x0), dtype)
    return t_lo, t_hi, eps, (1.0 / (s_hi - s_lo)).astype(dtype)


def consistency_training_loss(
    flow: Callable,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    step,
    total_steps: int,
    target_flow: Callable | None = None,
    s0: int = 10,
    s1: int = 1280,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    rho: float = 7.0,
    sigma_min=None,
    sigma_max=None,
    huber_c=None,
):
    """Improved consistency training (iCT; Song & Dhariwal 2023), per example.

    lambda(sigma_i) d(f(x0 + sigma_{i+1} z, sigma_{i+1}), sg f(x0 + sigma_i z, sigma_i)) with
    the same z at both levels, written on any path: x_t = alpha(t) x0 + sigma(t) z at the times
    t_i whose EDM noise level sigma_e = sigma/alpha is the Karras level sigma_i (rho = 7) of
    N(step) = `ict_num_scales(step, total_steps, s0, s1)` levels; i is drawn with probability
    proportional to erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i - P_mean)
    / (sqrt 2 P_std)) (lognormal, P_mean = -1.1, P_std = 2); lambda = 1 / (sigma_{i+1} - sigma_i);
    d = `pseudo_huber` with c = 0.00054 sqrt(dim). The consistency function maps to the time
    t_end of sigma_min (path.t_min by default; VE defaults are EDM's 0.002 and 80).

    Args:
        flow: the online flow map f(x, t, s, cond) (see `flow_map`).
        path: the Gaussian path.
        key: PRNG key for the noise level and the noise.
        x0: a batch of data (N, ...).
        step, total_steps: the training step k (may be traced) and the total K, for N(k).
        cond: conditioning pytree or None.
        target_flow: the target ("teacher") flow map; None uses the online one under
            stop_gradient, as iCT does (EMA decay 0 for the target).
        sigma_min, sigma_max: EDM noise range; defaults are the path's at t_min and t_max.
        huber_c: pseudo-Huber c; default 0.00054 sqrt(dim).
    """
    sigma_min, sigma_max = _edm_range(path, sigma_min, sigma_max)
    n = ict_num_scales(step, total_steps, s0, s1)
    probs = ict_noise_level_probs(n, sigma_min, sigma_max, rho=rho, p_mean=p_mean, p_std=p_std, max_scales=s1)
    logits = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
    t_lo, t_hi, eps, weight = _consistency_pair(path, key, x0, n, sigma_min, sigma_max, rho, logits)
    t_end = _t_from_edm_sigma(path, jnp.asarray(sigma_min)).astype(jnp.result_type(x0))
    target_flow = flow if target_flow is None else target_flow
    target = jax.lax.stop_gradient(target_flow(_interp(path, x0, eps, t_lo), t_lo, t_end, cond))
    pred = flow(_interp(path, x0, eps, t_hi), t_hi, t_end, cond)
    return weight * pseudo_huber(pred, target, huber_c)


def consistency_distillation_loss(
    flow: Callable,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    teacher_step: Callable,
    target_flow: Callable | None = None,
    num_scales=18,
    rho: float = 7.0,
    sigma_min=None,
    sigma_max=None,
    huber_c=None,
):
    """Consistency distillation (Song et al. 2023, Algorithm 2), per example.

    d(f(x_{t_{n+1}}, t_{n+1}), sg f^-(x_hat_{t_n}, t_n)), x_{t_{n+1}} = alpha x0 + sigma z and
    x_hat_{t_n} = teacher_step(x_{t_{n+1}}, t_{n+1}, t_n, cond): one step of an ODE solver on the
    teacher's PF-ODE (`solver_step` builds it from any jdiff model and jdiff.samplers solver).
    The N = `num_scales` levels (may be traced; their CD uses 18) are Karras's (rho = 7) on the
    EDM range, n uniform; d is the
    pseudo-Huber distance (c = 0.00054 sqrt(dim); pass huber_c=0 for the L2 distance).

    Args:
        flow: the online flow map f(x, t, s, cond).
        teacher_step: (x, t, s, cond) -> x_s with per-example t, s (shape x.shape[:1]).
        target_flow: the EMA target flow map f^- (Song et al. use EMA decay 0.95 for CD);
            None uses the online one under stop_gradient.
    """
    sigma_min, sigma_max = _edm_range(path, sigma_min, sigma_max)
    t_lo, t_hi, eps, _ = _consistency_pair(path, key, x0, num_scales, sigma_min, sigma_max, rho)
    t_end = _t_from_edm_sigma(path, jnp.asarray(sigma_min)).astype(jnp.result_type(x0))
    x_hi = _interp(path, x0, eps, t_hi)
    x_lo = jax.lax.stop_gradient(teacher_step(x_hi, t_hi, t_lo, cond))
    target_flow = flow if target_flow is None else target_flow
    target = jax.lax.stop_gradient(target_flow(x_lo, t_lo, t_end, cond))
    return pseudo_huber(flow(x_hi, t_hi, t_end, cond), target, huber_c)


# -----------------------------------------------------------------------------------
# MeanFlow
# -----------------------------------------------------------------------------------


def meanflow_target(u: Callable, z, r, t, v, cond=None):
    """The MeanFlow identity's target u_tgt = v - (t - r) d/dt u(z_t, r, t) (Geng et al. 2025, Eq. 10).

    d/dt u = v . grad_z u + partial_t u is the total derivative along the trajectory, computed
    as one forward-mode product `jax.jvp` of (z, r, t) -> u with tangents (v, 0, 1).

    Args:
        u: the average-velocity network u(z, t, r, cond) over [r, t] (jdiff's argument order:
            from t to s = r).
        z: points z_t (N, ...); r, t: (N,) times with r <= t; v: the velocity at (z, t) that
            drives the trajectory (the conditional velocity in training).

    Returns:
        (u(z, t, r), u_tgt), neither under stop_gradient.
    """
    u_val, dudt = jax.jvp(lambda z_, r_, t_: u(z_, t_, r_, cond), (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    return u_val, v - expand_to(t - r, z, "t") * dudt


def _logit_normal(key, shape, mean, std, dtype):
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, shape, dtype))


def meanflow_loss(
    net: Callable,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    fraction_r_neq_t: float = 0.25,
    time_mean: float = -0.4,
    time_std: float = 1.0,
    adaptive_p: float = 1.0,
    adaptive_c: float = 1e-3,
    guidance_scale=None,
    guidance_kappa: float = 0.0,
    null_cond=None,
    cond_drop_prob: float = 0.1,
):
    """The MeanFlow loss (Geng et al. 2025), per example, on any path.

    z_t = alpha x0 + sigma eps, v = alpha' x0 + sigma' eps, Delta = u(z_t, t, r) - sg(u_tgt)
    with u_tgt from `meanflow_target`, and the adaptive weight w = sg(1 / (||Delta||^2 + c)^p)
    (their Eq. 20: p = 1, c = 1e-3); returns w ||Delta||^2. Times: t, r each logit-normal
    (mean -0.4, std 1, their best), sorted so r <= t, mapped affinely to [t_min, t_max], and
    r = t for a fraction 1 - `fraction_r_neq_t` of examples (their best: 25% r != t).

    Guidance folded into the target (their Eq. 19 and its kappa variant, Appendix B.1): with
    `guidance_scale` omega the velocity becomes
    v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null), both u under
    stop_gradient; the class is dropped (cond -> null_cond, v~ -> v) with probability
    `cond_drop_prob`. One-step sampling of the resulting net is then guided at no extra cost.

    Args:
        net: u(z, t, r, cond), the average velocity over [r, t] (jdiff's (x, t, s) order).
        guidance_scale: None (no guidance; no dropping) or omega >= 1.
        null_cond: the "no class" conditioning, same structure as `cond` (leaves broadcastable
            to cond's); required with guidance_scale.
    """
    dtype = jnp.result_type(x0)
    n = jnp.shape(x0)[0]
    k_t, k_r, k_keep, k_eps, k_drop = jax.random.split(key, 5)
    a = _logit_normal(k_t, (n,), time_mean, time_std, dtype)
    b = _logit_normal(k_r, (n,), time_mean, time_std, dtype)
    span = path.t_max - path.t_min
    t = path.t_min + span * jnp.maximum(a, b)
    r = path.t_min + span * jnp.minimum(a, b)
    r = jnp.where(jax.random.uniform(k_keep, (n,), dtype) < fraction_r_neq_t, r, t)
    eps = jax.random.normal(k_eps, jnp.shape(x0), dtype)
    z = _interp(path, x0, eps, t)
    v = _cond_velocity(path, x0, eps, t)
    if guidance_scale is not None:
        if null_cond is None or cond is None:
            raise ValueError("`guidance_scale` needs both `cond` and `null_cond` (the unconditional token)")
        null = jax.tree_util.tree_map(lambda c, nc: jnp.broadcast_to(jnp.asarray(nc, jnp.result_type(c)), jnp.shape(c)), cond, null_cond)
        u_unc = net(z, t, t, null)
        u_cond = net(z, t, t, cond) if guidance_kappa else jnp.zeros_like(z)
        v_g = guidance_scale * v + guidance_kappa * u_cond + (1.0 - guidance_scale - guidance_kappa) * u_unc
        keep = jax.random.uniform(k_drop, (n,), dtype) >= cond_drop_prob
        v = jnp.where(expand_to(keep, z, "cond"), jax.lax.stop_gradient(v_g), v)
        cond = _where_tree(keep, cond, null)
    u_val, u_tgt = meanflow_target(net, z, r, t, v, cond)
    err = _sqnorm(u_val - jax.lax.stop_gradient(u_tgt))
    w = jax.lax.stop_gradient(1.0 / (err + adaptive_c) ** adaptive_p)
    return w * err


# -----------------------------------------------------------------------------------
# Shortcut models
# -----------------------------------------------------------------------------------


def shortcut_loss(
    net: Callable,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    max_steps: int = 128,
    consistency_fraction: float = 0.25,
):
    """The shortcut-model loss (Frans et al. 2025), per example, on any path.

    The network is the average velocity u(x_t, t, s) over [s, t] (step size d = t - s; the
    flow map is `flow_map(net, path, AverageVelocity())`). The first round(fraction * N)
    examples of the batch are self-consistency examples (their 1/4): d = 2^j delta with
    j uniform in {0, .., log2(max_steps) - 1}, delta = (t_max - t_min) / max_steps, t uniform on
    the grid t_min + 2d {1, 2, ..}, and target sg((u(x_t, t, t - d) + u(x', t - d, t - 2d)) / 2)
    with x' = x_t - d u(x_t, t, t - d) for u(x_t, t, t - 2d): two d-steps equal one 2d-step.
    The others are flow-matching examples (d = 0: s = t, target the conditional velocity
    alpha' x0 + sigma' eps), with t uniform on [t_min, t_max]. Returns the squared error
    ||u - target||^2 averaged over the example's values.
    """
    levels = int(round(math.log2(max_steps)))
    if 2**levels != max_steps or levels < 1:
        raise ValueError(f"`max_steps` must be a power of two >= 2; got {max_steps}")
    dtype = jnp.result_type(x0)
    n = jnp.shape(x0)[0]
    n_sc = int(round(consistency_fraction * n))
    k_t, k_j, k_m, k_eps = jax.random.split(key, 4)
    eps = jax.random.normal(k_eps, jnp.shape(x0), dtype)
    span = path.t_max - path.t_min
    delta = span / max_steps
    losses = []
    if n_sc < n:  # flow-matching part
        t_fm = path.t_min + span * jax.random.uniform(k_t, (n - n_sc,), dtype)
        x_fm, e_fm = x0[n_sc:], eps[n_sc:]
        c_fm = None if cond is None else jax.tree_util.tree_map(lambda c: c[n_sc:], cond)
        z_fm = _interp(path, x_fm, e_fm, t_fm)
        losses.append(_msq(net(z_fm, t_fm, t_fm, c_fm) - _cond_velocity(path, x_fm, e_fm, t_fm)))
    if n_sc == 0:
        return losses[0]
    # Self-consistency part: 2d-steps on a grid that fits into [t_min, t_max].
    j = jax.random.randint(k_j, (n_sc,), 0, levels)
    d = (delta * 2.0**j).astype(dtype)
    m = jnp.floor(jax.random.uniform(k_m, (n_sc,), dtype) * (max_steps // 2) / 2.0**j) + 1.0  # 1 .. M / 2^(j+1)
    t = path.t_min + 2.0 * d * m
    x_sc, e_sc = x0[:n_sc], eps[:n_sc]
    c_sc = None if cond is None else jax.tree_util.tree_map(lambda c: c[:n_sc], cond)
    z = _interp(path, x_sc, e_sc, t)
    u1 = net(z, t, t - d, c_sc)
    u2 = net(z - expand_to(d, z, "t") * u1, t - d, t - 2.0 * d, c_sc)
    target = jax.lax.stop_gradient(0.5 * (u1 + u2))
    loss_sc = _msq(net(z, t, t - 2.0 * d, c_sc) - target)
    return jnp.concatenate([loss_sc] + losses)


# -----------------------------------------------------------------------------------
# Progressive distillation
# -----------------------------------------------------------------------------------


def ddim_target(path: AbstractPath, z_t, t, z_s, s):
    """The denoiser x~ whose DDIM step from (z_t, t) lands on z_s at s (Salimans & Ho 2022, Alg. 2).

    Solves z_s = alpha_s x~ + sigma_s (z_t - alpha_t x~) / sigma_t for x~:
    x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t).
    The denominator is (alpha_s sigma_t - sigma_s alpha_t) / sigma_t > 0 for s < t.
    """
    ratio = expand_to(path.sigma(s) / path.sigma(t), z_t, "t")
    return (z_s - ratio * z_t) / (expand_to(path.alpha(s), z_t, "t") - ratio * expand_to(path.alpha(t), z_t, "t"))


def progressive_distillation_loss(
    student: Callable,
    path: AbstractPath,
    key,
    x0,
    cond=None,
    *,
    kind: str,
    teacher_step: Callable,
    num_student_steps,
):
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2), per example.

    The student, a `model(x, t, cond)` predicting `student_kind` and sampled with DDIM on the
    uniform grid of `num_student_steps` steps over [t_min, t_max], learns to match two teacher
    steps (each a DDIM step of the teacher, which runs 2 N steps) with one: at t = t_i,
    z'' = teacher_step(teacher_step(z_t, t, t - h/2), t - h/2, t - h), h = span / N, target
    x~ = `ddim_target`(z_t, t, z'', t - h), loss max(SNR(t), 1) ||x0_hat - x~||^2 (the
    "truncated SNR" weighting of their Eq. 10), averaged over the example's values. Repeat with N halved and the student as the
    new teacher.

    Args:
        student: the student model(x, t, cond) (initialised from the teacher).
        kind: its prediction kind ("x0", "v", "eps", ...).
        teacher_step: (x, t, s, cond) -> x_s, per-example times (see `solver_step`).
        num_student_steps: N (may be traced).
    """
    dtype = jnp.result_type(x0)
    n = jnp.shape(x0)[0]
    k_i, k_eps = jax.random.split(key)
    h = (path.t_max - path.t_min) / num_student_steps
    i = jax.random.randint(k_i, (n,), 1, num_student_steps + 1)
    t = (path.t_min + i * h).astype(dtype)
    t_mid, t_next = t - 0.5 * h, t - h
    eps = jax.random.normal(k_eps, jnp.shape(x0), dtype)
    z = _interp(path, x0, eps, t)
    z_next = teacher_step(teacher_step(z, t, t_mid, cond), t_mid, t_next, cond)
    target = jax.lax.stop_gradient(ddim_target(path, z, t, z_next, t_next))
    x0_hat, _ = predictions.to_x0_eps(student(z, t, cond), kind, z, t, path)
    weight = jnp.maximum(jnp.exp(path.log_snr(t)), 1.0)
    return weight * _msq(x0_hat - target)


# -----------------------------------------------------------------------------------
# A two-time network for low-dimensional data
# -----------------------------------------------------------------------------------


class _TimeMLP(nnx.Module):
    """t (B,) -> sinusoidal features of scale * t -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden, scale, dtype, rngs):
        self.scale = scale
        self.dense1 = nnx.Linear(hidden, hidden, dtype=dtype, rngs=rngs)
        self.dense2 = nnx.Linear(hidden, hidden, dtype=dtype, rngs=rngs)

    def __call__(self, t):
        return self.dense2(nnx.silu(self.dense1(sinusoidal_embedding(t, self.dense1.in_features, scale=self.scale))))


class FlowMapMLP(nnx.Module):
    """Residual MLP net(x, t, s, cond) of two times, the raw network of a flow map (see `flow_map`).

    The times enter as two embeddings (sinusoidal features of `time_scale` * time, then
    Linear-SiLU-Linear), of t and of the jump t - s (MeanFlow's best input pair (t, t - r), Geng
    et al. 2025, Table 1c), added to the class embedding (a `jdiff.models.ClassEmbedding` with a
    null class when `num_classes` is set) and fed to every residual block, whose last layer is
    zero-initialised.

    in_features: prod of an example's shape (2 for the toy sets); hidden: width; depth: blocks.
    time_scale: the sinusoidal features are those of time_scale * t. jdiff.models uses 1000
        (DDPM's step index); MeanFlow differentiates the network in t (jax.jvp), and features of
        frequency up to 1000 make that derivative, hence the target, large and noisy, so the
        default here is 10 (the highest frequency then has period ~0.6 in t).
    """

    def __init__(self, in_features: int, *, hidden: int = 128, depth: int = 3, num_classes: int | None = None,
                 time_scale: float = 10.0, dtype=None, rngs):
        self.in_features = in_features
        self.time_t = _TimeMLP(hidden, time_scale, dtype, rngs)
        self.time_d = _TimeMLP(hidden, time_scale, dtype, rngs)
        self.label = class_embedding_or_none(num_classes, hidden, dtype, rngs)
        self.inp = nnx.Linear(in_features, hidden, dtype=dtype, rngs=rngs)
        self.norms = nnx.List([nnx.LayerNorm(hidden, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.dense1 = nnx.List([nnx.Linear(hidden, hidden, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.emb = nnx.List([nnx.Linear(hidden, hidden, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.dense2 = nnx.List([nnx.Linear(hidden, hidden, kernel_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)
                                for _ in range(depth)])
        self.out_norm = nnx.LayerNorm(hidden, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(hidden, in_features, dtype=dtype, rngs=rngs)

    def __call__(self, x, t, s, cond=None):
        """x (B, ...) with in_features values per example; t, s scalars or (B,); cond (B,) ints or None."""
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(f"`x` must have shape (B, ...) with {self.in_features} values per example; got {x.shape}")
        b = x.shape[0]
        t, s = _per_example(t, x), _per_example(s, x)
        emb = self.time_t(t) + self.time_d(t - s)
        if self.label is None:
            check_unconditional(cond, "FlowMapMLP")
        else:
            emb = emb + self.label(cond, b)
        emb = nnx.silu(emb)
        h = self.inp(x.reshape(b, self.in_features))
        for norm, d1, e, d2 in zip(self.norms, self.dense1, self.emb, self.dense2):
            h = h + d2(nnx.silu(d1(nnx.silu(norm(h))) + e(emb)))
        y = self.out(nnx.silu(self.out_norm(h)))
        return y.reshape(x.shape).astype(x.dtype)
