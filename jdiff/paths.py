"""Gaussian probability paths x_t = alpha(t) x0 + sigma(t) eps, t in [0, 1], t = 0 data.

A path is an immutable pytree (an `equinox.Module`): its schedule parameters are
array leaves, so a path passes through `jax.jit`, `jax.vmap` and `jax.grad` like any
other argument (a new `beta_max` does not recompile), while its time range
`[t_min, t_max]` is static.

Every path defines `alpha(t)` and `sigma(t)`; everything else is derived from them
(closed forms where they are short and stable, `jax.jvp` otherwise):

    log_snr(t)          = 2 log(alpha / sigma)                       (decreasing in t)
    t_from_log_snr(lam) = the inverse of log_snr
    drift(t)     f(t)   = d/dt log alpha                              (forward SDE drift coefficient)
    diffusion2(t) g2(t) = d/dt sigma^2 - 2 f sigma^2 = -sigma^2 d/dt log_snr

so that dx = f(t) x dt + g(t) dW has the marginals of the path.

Times are arrays of any shape; every method is elementwise. `t_min`/`t_max` mark the
range on which the path and its log-SNR are finite in float32; samplers integrate from
`t_max` to `t_min` by default. The signatures say so in jaxtyping's notation:
`Float[ArrayLike, "*t"] -> Float[Array, "*t"]`, a method returns the shape of its times
(tests/test_typing.py checks every path against these annotations).

Construction. A path's schedule parameters are its positional arguments, in the order its
class lists them (`VEGeometric(0.002, 80.0)` is sigma_min, sigma_max); the time range is
keyword-only (`VPLinear(0.1, 20.0, t_min=1e-3)`) for every path, built-in or user-defined:
`AbstractPath.__init_subclass__` makes any `t_min`/`t_max` field a subclass declares
keyword-only and static. Every path validates its parameters when they are concrete: the
range 0 <= t_min < t_max <= 1, alpha and sigma finite and positive and the log-SNR finite and
decreasing at both ends (in float32), plus each schedule's own constraints.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import types
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = [
    "EDM",
    "AbstractPath",
    "CustomPath",
    "Linear",
    "LogSNRPath",
    "SubVP",
    "Trigonometric",
    "VEGeometric",
    "VPCosine",
    "VPLinear",
    "expand_to",
]


def _f(t):
    """Times as a floating array (keeps float64 under x64, promotes ints)."""
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.result_type(float))


def _bisect_decreasing(fn, y, lo, hi, iters=60):
    """Solve fn(t) = y for a decreasing fn on [lo, hi] by bisection (elementwise)."""
    y = _f(y)
    lo = jnp.full_like(y, lo)
    hi = jnp.full_like(y, hi)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        go_right = fn(mid) > y  # fn decreasing: value still above target -> move right
        return jnp.where(go_right, mid, lo), jnp.where(go_right, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (lo + hi)


_TIME_RANGE = ("t_min", "t_max")


def _concrete(*values) -> bool:
    """True when no value is a tracer (inside jit/vmap/grad parameters cannot be checked)."""
    return not any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(values))


def _require(ok, message):
    if not bool(ok):
        raise ValueError(message)


class AbstractPath(eqx.Module):
    """A Gaussian path. Subclasses implement `alpha` and `sigma`; the rest is derived.

    Subclasses declare their schedule parameters as fields (positional, in that order) and the
    time range as fields `t_min`, `t_max` with defaults; the range is made keyword-only and
    static here, whatever the subclass writes, so positional arguments can never set it.
    Parameter checks go in `_check_params` (called with concrete values only).
    """

    t_min: eqx.AbstractVar[float]
    t_max: eqx.AbstractVar[float]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        annotations = inspect.get_annotations(cls)
        for name in _TIME_RANGE:
            if name not in annotations:
                continue
            value = cls.__dict__.get(name, dataclasses.MISSING)
            if isinstance(value, dataclasses.Field):
                value.kw_only = True
                value.metadata = types.MappingProxyType({**value.metadata, "static": True})
            elif value is dataclasses.MISSING:
                setattr(cls, name, eqx.field(static=True, kw_only=True))
            else:
                setattr(cls, name, eqx.field(static=True, kw_only=True, default=value))

    def __check_init__(self):
        name = type(self).__name__
        t_min, t_max = self.t_min, self.t_max
        params = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _TIME_RANGE]
        params_concrete = _concrete([p for p in params if not callable(p)])
        if params_concrete:
            self._check_params()
        if not _concrete(t_min, t_max):
            return
        _require(
            0.0 <= float(t_min) < float(t_max) <= 1.0,
            f"{name}: the time range must satisfy 0 <= t_min < t_max <= 1; got t_min={t_min}, t_max={t_max}",
        )
        if not params_concrete:
            return
        # Concrete values: evaluate now, even while a jit trace is building the path.
        with jax.ensure_compile_time_eval():
            ends = jnp.asarray([t_min, t_max], jnp.float32)
            a, s, lam = (np.asarray(v, np.float32) for v in (self.alpha(ends), self.sigma(ends), self.log_snr(ends)))
        for what, v in (("alpha", a), ("sigma", s), ("log_snr", lam)):
            _require(
                np.all(np.isfinite(v)),
                f"{name}: {what} is not finite at the ends of its time range (t_min={t_min}: {float(v[0])}, "
                f"t_max={t_max}: {float(v[1])}); choose t_min/t_max inside the range where it is finite",
            )
        _require(
            np.all(a > 0) and np.all(s > 0),
            f"{name}: alpha and sigma must be positive at t_min and t_max; got alpha={a.tolist()}, "
            f"sigma={s.tolist()} at t=({t_min}, {t_max})",
        )
        _require(
            float(lam[0]) > float(lam[1]),
            f"{name}: the log-SNR must decrease from t_min to t_max (t = 0 is data, t = 1 noise); got "
            f"log_snr(t_min)={float(lam[0])}, log_snr(t_max)={float(lam[1])}",
        )

    def _check_params(self):
        """Raise a ValueError naming a bad schedule parameter (concrete values only)."""

    @abc.abstractmethod
    def alpha(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """Signal coefficient alpha(t)."""

    @abc.abstractmethod
    def sigma(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """Noise coefficient sigma(t)."""

    # -- derivatives ---------------------------------------------------------------
    def d_alpha(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """d alpha / dt (forward-mode autodiff unless a subclass gives a closed form)."""
        t = _f(t)
        return jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))[1]

    def d_sigma(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """d sigma / dt."""
        t = _f(t)
        return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))[1]

    # -- log-SNR -------------------------------------------------------------------
    def log_snr(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """lambda(t) = log(alpha^2 / sigma^2)."""
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def d_log_snr(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """d lambda / dt = 2 (alpha'/alpha - sigma'/sigma) (negative)."""
        t = _f(t)
        return jax.jvp(self.log_snr, (t,), (jnp.ones_like(t),))[1]

    def t_from_log_snr(self, lam: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """Inverse of `log_snr` (bisection on [t_min, t_max] unless a closed form exists)."""
        return _bisect_decreasing(self.log_snr, lam, self.t_min, self.t_max)

    # -- SDE -----------------------------------------------------------------------
    def drift(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """f(t) = d/dt log alpha(t): the forward SDE is dx = f x dt + g dW."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion2(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """g(t)^2 = d/dt sigma^2 - 2 f sigma^2."""
        s = self.sigma(t)
        return 2.0 * s * (self.d_sigma(t) - self.drift(t) * s)

    # -- sampling ------------------------------------------------------------------
    def marginal(
        self, key: PRNGKeyArray, x0: Float[Array, "*x"], t: Float[ArrayLike, "*t"]
    ) -> tuple[Float[Array, "*x"], Float[Array, "*x"]]:
        """Sample x_t ~ p(x_t | x0). Returns (x_t, eps). `t` is a scalar or has shape x0.shape[:k]."""
        eps = jax.random.normal(key, jnp.shape(x0), jnp.result_type(x0))
        a, s = expand_to(self.alpha(t), x0, "t"), expand_to(self.sigma(t), x0, "t")
        return a * x0 + s * eps, eps

    def prior_std(self) -> Float[Array, ""]:
        """Standard deviation of the noise distribution N(0, sigma(t_max)^2 I) at t_max."""
        return self.sigma(jnp.asarray(self.t_max))

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=jnp.float32) -> Float[Array, "*shape"]:
        """Draw x_T ~ N(0, sigma(t_max)^2 I), the sampler's starting point."""
        return self.prior_std().astype(dtype) * jax.random.normal(key, shape, dtype)

    def prior_log_prob(self, x: Float[Array, "*x"]) -> Float[Array, ""]:
        """log N(x; 0, sigma(t_max)^2 I), summed over all axes of a single example."""
        s = self.prior_std()
        d = x.size
        return -0.5 * jnp.sum(x**2) / s**2 - d * jnp.log(s) - 0.5 * d * math.log(2 * math.pi)


def expand_to(c, x, name="t"):
    """Right-pad a coefficient of shape x.shape[:k] with singleton axes to broadcast with x."""
    c = jnp.asarray(c)
    x_shape = jnp.shape(x)
    if c.ndim > len(x_shape) or tuple(c.shape) != tuple(x_shape[: c.ndim]):
        raise ValueError(
            f"`{name}` has shape {tuple(c.shape)}, which is neither a scalar nor a prefix of the "
            f"data shape {tuple(x_shape)}: pass one time per example (shape {tuple(x_shape[:1])}) "
            "or a scalar."
        )
    return c.reshape(c.shape + (1,) * (len(x_shape) - c.ndim))


# -----------------------------------------------------------------------------------
# Variance-preserving paths, parameterized through log-SNR.
# alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) is exact and stable at both ends.
# -----------------------------------------------------------------------------------


def _check_betas(path):
    name = type(path).__name__
    _require(float(path.beta_min) >= 0.0, f"{name}: `beta_min` must be >= 0; got {path.beta_min}")
    _require(
        float(path.beta_max) > float(path.beta_min),
        f"{name}: `beta_max` must exceed `beta_min`; got beta_min={path.beta_min}, beta_max={path.beta_max}",
    )


class _VPFromLogSNR(AbstractPath):
    """Variance-preserving path (alpha^2 + sigma^2 = 1) given by its log-SNR."""

    def alpha(self, t):
        return jnp.sqrt(jax.nn.sigmoid(self.log_snr(t)))

    def sigma(self, t):
        return jnp.sqrt(jax.nn.sigmoid(-self.log_snr(t)))

    @abc.abstractmethod
    def log_snr(self, t): ...

    def drift(self, t):
        # log alpha = 0.5 log sigmoid(lam) => f = 0.5 sigmoid(-lam) lam'
        t = _f(t)
        return 0.5 * jax.nn.sigmoid(-self.log_snr(t)) * self.d_log_snr(t)

    def diffusion2(self, t):
        t = _f(t)
        return -jax.nn.sigmoid(-self.log_snr(t)) * self.d_log_snr(t)

    def d_alpha(self, t):
        return self.drift(t) * self.alpha(t)

    def d_sigma(self, t):
        # sigma^2 = sigmoid(-lam) => sigma' = -0.5 sigmoid(lam) sigma lam'
        t = _f(t)
        return -0.5 * jax.nn.sigmoid(self.log_snr(t)) * self.sigma(t) * self.d_log_snr(t)


class VPLinear(_VPFromLogSNR):
    """DDPM's linear beta schedule in continuous time (Song et al. 2021, VP SDE).

    beta(t) = beta_min + t (beta_max - beta_min); alpha = exp(-B/2), B(t) = int_0^t beta.
    The defaults are DDPM's beta_1 = 1e-4, beta_T = 0.02 at T = 1000 in continuous form.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def _check_params(self):
        _check_betas(self)

    def _B(self, t):
        t = _f(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def beta(self, t):
        return self.beta_min + _f(t) * (self.beta_max - self.beta_min)

    def log_snr(self, t):
        b = self._B(t)
        return -b - jnp.log(-jnp.expm1(-b))  # log(e^-B / (1 - e^-B))

    def alpha(self, t):
        return jnp.exp(-0.5 * self._B(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self._B(t)))

    def d_log_snr(self, t):
        b = self._B(t)
        return -self.beta(t) / (-jnp.expm1(-b))  # -beta / sigma^2

    def drift(self, t):
        return -0.5 * self.beta(t)

    def diffusion2(self, t):
        return self.beta(t)

    def t_from_log_snr(self, lam):
        b = jax.nn.softplus(-_f(lam))  # B = -log sigmoid(lam)
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))


class VPCosine(_VPFromLogSNR):
    """The cosine schedule of improved DDPM (Nichol & Dhariwal 2021), s = 0.008.

    alpha_bar(t) = cos^2(phi(t)) / cos^2(phi(0)), phi(t) = (t + s) / (1 + s) * pi / 2.
    alpha vanishes at t = 1 and sigma at t = 0, so the path is used on [1e-4, 1 - 1e-3]
    (log-SNR from about 12 to about -13).
    """

    s: float = 0.008
    t_min: float = 1e-4
    t_max: float = 1.0 - 1e-3

    def _check_params(self):
        _require(float(self.s) >= 0.0, f"VPCosine: the offset `s` must be >= 0; got {self.s}")

    def _phi(self, t):
        return (_f(t) + self.s) / (1.0 + self.s) * (0.5 * math.pi)

    def log_snr(self, t):
        # alpha_bar = cos^2 phi / cos^2 phi0;  sigma^2 = 1 - alpha_bar.
        # 1 - alpha_bar = (cos^2 phi0 - cos^2 phi) / cos^2 phi0 = sin(phi - phi0) sin(phi + phi0) / cos^2 phi0
        phi, phi0 = self._phi(t), self._phi(0.0)
        log_abar = 2.0 * (jnp.log(jnp.cos(phi)) - jnp.log(jnp.cos(phi0)))
        log_1m = jnp.log(jnp.sin(phi - phi0)) + jnp.log(jnp.sin(phi + phi0)) - 2.0 * jnp.log(jnp.cos(phi0))
        return log_abar - log_1m

    def t_from_log_snr(self, lam):
        # alpha_bar = sigmoid(lam) => cos phi = cos(phi0) sqrt(sigmoid(lam))
        phi0 = self._phi(0.0)
        phi = jnp.arccos(jnp.cos(phi0) * jnp.sqrt(jax.nn.sigmoid(_f(lam))))
        return phi / (0.5 * math.pi) * (1.0 + self.s) - self.s


class SubVP(AbstractPath):
    """The sub-VP SDE of Song et al. (2021): alpha as VP-linear, sigma = 1 - exp(-B(t))."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def _check_params(self):
        _check_betas(self)

    def _B(self, t):
        t = _f(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def beta(self, t):
        return self.beta_min + _f(t) * (self.beta_max - self.beta_min)

    def alpha(self, t):
        return jnp.exp(-0.5 * self._B(t))

    def sigma(self, t):
        return -jnp.expm1(-self._B(t))

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        return self.beta(t) * jnp.exp(-self._B(t))

    def drift(self, t):
        return -0.5 * self.beta(t)

    def diffusion2(self, t):
        return self.beta(t) * (-jnp.expm1(-2.0 * self._B(t)))

    def log_snr(self, t):
        b = self._B(t)
        return -b - 2.0 * jnp.log(-jnp.expm1(-b))


class VEGeometric(AbstractPath):
    """Variance exploding: alpha = 1, sigma(t) = sigma_min^(1-t) sigma_max^t (NCSN; EDM's range).

    EDM noise levels are reached through this path: sigma_edm = sigma(t). Defaults are EDM's
    (sigma_min = 0.002, sigma_max = 80; Karras et al. 2022).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    t_min: float = 0.0
    t_max: float = 1.0

    def _check_params(self):
        _check_sigmas(self)

    def _log_sigma(self, t):
        t = _f(t)
        return (1.0 - t) * jnp.log(self.sigma_min) + t * jnp.log(self.sigma_max)

    def alpha(self, t):
        return jnp.ones_like(_f(t))

    def sigma(self, t):
        return jnp.exp(self._log_sigma(t))

    def d_alpha(self, t):
        return jnp.zeros_like(_f(t))

    def d_sigma(self, t):
        return self.sigma(t) * jnp.log(self.sigma_max / self.sigma_min)

    def log_snr(self, t):
        return -2.0 * self._log_sigma(t)

    def d_log_snr(self, t):
        return jnp.full_like(_f(t), -2.0) * jnp.log(self.sigma_max / self.sigma_min)

    def t_from_log_snr(self, lam):
        lo, hi = jnp.log(self.sigma_min), jnp.log(self.sigma_max)
        return (-0.5 * _f(lam) - lo) / (hi - lo)

    def t_from_sigma(self, sigma):
        """The time at which this path has noise level `sigma` (EDM's sigma)."""
        return self.t_from_log_snr(-2.0 * jnp.log(sigma))

    def drift(self, t):
        return jnp.zeros_like(_f(t))

    def diffusion2(self, t):
        return 2.0 * self.sigma(t) ** 2 * jnp.log(self.sigma_max / self.sigma_min)


def _check_sigmas(path):
    name = type(path).__name__
    _require(float(path.sigma_min) > 0.0, f"{name}: `sigma_min` must be > 0; got {path.sigma_min}")
    _require(
        float(path.sigma_max) > float(path.sigma_min),
        f"{name}: `sigma_max` must exceed `sigma_min`; got sigma_min={path.sigma_min}, sigma_max={path.sigma_max}",
    )


class EDM(AbstractPath):
    """Karras et al. (2022)'s path in its own clock: alpha = 1, sigma(t) = sigma_max t.

    jdiff's clock stays t in [0, 1] (t = sigma / sigma_max, on [sigma_min / sigma_max, 1]);
    an affine map of EDM's clock sigma, so every fixed-step ODE solver takes exactly EDM's
    steps: `Euler()` and `Heun()` on this path with `karras_grid(path, N)` are k-diffusion's
    `sample_euler` and `sample_heun` (EDM Algorithm 1) step for step, and `path.sigma(grid)`
    is EDM's sigma schedule. Defaults are EDM's (sigma_min = 0.002, sigma_max = 80).
    `t_from_sigma(sigma)` = sigma / sigma_max.
    """

    sigma_min: float
    sigma_max: float
    t_min: float
    t_max: float

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        if not _concrete(sigma_min, sigma_max):
            raise ValueError(
                "EDM: `sigma_min` and `sigma_max` fix the static time range t_min = sigma_min / "
                "sigma_max; pass numbers, not traced values"
            )
        self.t_min, self.t_max = float(sigma_min) / float(sigma_max), 1.0

    def _check_params(self):
        _check_sigmas(self)

    def alpha(self, t):
        return jnp.ones_like(_f(t))

    def sigma(self, t):
        return self.sigma_max * _f(t)

    def d_alpha(self, t):
        return jnp.zeros_like(_f(t))

    def d_sigma(self, t):
        return jnp.full_like(_f(t), 1.0) * self.sigma_max

    def log_snr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def d_log_snr(self, t):
        return -2.0 / _f(t)

    def t_from_log_snr(self, lam):
        return jnp.exp(-0.5 * _f(lam)) / self.sigma_max

    def t_from_sigma(self, sigma):
        """The time at which this path has noise level `sigma`: sigma / sigma_max."""
        return _f(sigma) / self.sigma_max

    def drift(self, t):
        return jnp.zeros_like(_f(t))

    def diffusion2(self, t):
        # d sigma^2 / dt = 2 sigma sigma' = 2 sigma_max^2 t
        return 2.0 * self.sigma_max**2 * _f(t)


class Linear(AbstractPath):
    """The linear interpolant of rectified flow / flow matching: alpha = 1 - t, sigma = t.

    alpha and sigma are finite on [0, 1]; the log-SNR (needed by DPM-Solver-type
    samplers) is infinite at both ends, so the default range is [1e-4, 1 - 1e-4].
    """

    t_min: float = 1e-4
    t_max: float = 1.0 - 1e-4

    def alpha(self, t):
        return 1.0 - _f(t)

    def sigma(self, t):
        return _f(t)

    def d_alpha(self, t):
        return -jnp.ones_like(_f(t))

    def d_sigma(self, t):
        return jnp.ones_like(_f(t))

    def log_snr(self, t):
        t = _f(t)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def d_log_snr(self, t):
        t = _f(t)
        return -2.0 / (t * (1.0 - t))

    def t_from_log_snr(self, lam):
        return jax.nn.sigmoid(-0.5 * _f(lam))

    def drift(self, t):
        return -1.0 / (1.0 - _f(t))

    def diffusion2(self, t):
        t = _f(t)
        return 2.0 * t / (1.0 - t)


class Trigonometric(AbstractPath):
    """The trigonometric interpolant alpha = cos(pi t / 2), sigma = sin(pi t / 2) (VP, angle form)."""

    t_min: float = 1e-4
    t_max: float = 1.0 - 1e-4

    def alpha(self, t):
        # sin of the complement: exactly 0 at t = 1 in float32, where cos(pi/2) is not.
        return jnp.sin(0.5 * math.pi * (1.0 - _f(t)))

    def sigma(self, t):
        return jnp.sin(0.5 * math.pi * _f(t))

    def d_alpha(self, t):
        return -0.5 * math.pi * self.sigma(t)

    def d_sigma(self, t):
        return 0.5 * math.pi * self.alpha(t)

    def log_snr(self, t):
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def d_log_snr(self, t):
        return -math.pi / (self.alpha(t) * self.sigma(t))

    def t_from_log_snr(self, lam):
        return jnp.arctan(jnp.exp(-0.5 * _f(lam))) / (0.5 * math.pi)


class LogSNRPath(_VPFromLogSNR):
    """A variance-preserving path defined by any decreasing log-SNR function of t.

    `log_snr_fn(t)` must be decreasing; `t_from_log_snr_fn` is its inverse (bisection if
    omitted). Example, the shifted-cosine schedule of simple diffusion:
    `LogSNRPath(lambda t: -2 * jnp.log(jnp.tan(jnp.pi * t / 2)) + 2 * jnp.log(64 / 32))`.
    """

    log_snr_fn: Callable = eqx.field(static=True)
    t_from_log_snr_fn: Callable | None = eqx.field(static=True)
    t_min: float
    t_max: float

    def __init__(self, log_snr_fn, t_from_log_snr_fn=None, *, t_min=1e-4, t_max=1.0 - 1e-4):
        self.log_snr_fn, self.t_from_log_snr_fn = log_snr_fn, t_from_log_snr_fn
        self.t_min, self.t_max = t_min, t_max

    def log_snr(self, t):
        return self.log_snr_fn(_f(t))

    def t_from_log_snr(self, lam):
        if self.t_from_log_snr_fn is not None:
            return self.t_from_log_snr_fn(_f(lam))
        return super().t_from_log_snr(lam)


class CustomPath(AbstractPath):
    """A path from user functions alpha(t), sigma(t) (alpha/sigma decreasing in t).

    Derivatives come from `jax.jvp`, the log-SNR inverse from bisection.
    """

    alpha_fn: Callable = eqx.field(static=True)
    sigma_fn: Callable = eqx.field(static=True)
    t_min: float
    t_max: float

    def __init__(self, alpha_fn, sigma_fn, *, t_min=1e-4, t_max=1.0 - 1e-4):
        self.alpha_fn, self.sigma_fn, self.t_min, self.t_max = alpha_fn, sigma_fn, t_min, t_max

    def alpha(self, t):
        return self.alpha_fn(_f(t))

    def sigma(self, t):
        return self.sigma_fn(_f(t))
