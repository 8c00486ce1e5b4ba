"""The bound flow map: a two-time network, the path it follows and its skip/out parameterization."""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax.numpy as jnp

from jdiff import predictions
from jdiff._model import _as_pytree_net, check_policy
from jdiff.paths import AbstractPath, expand_to
from jdiff.precision import Policy, as_state


def per_example(t, x):
    """Broadcast a scalar or per-example time to shape x.shape[:1] in x's dtype."""
    return jnp.broadcast_to(jnp.asarray(t, jnp.result_type(x)), jnp.shape(x)[:1])


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


_AVERAGE_VELOCITY = AverageVelocity()


class FlowMap(eqx.Module):
    """A flow map f(x, t, s, cond) = x_s: a raw two-time network bound to its path and parameterization.

        f(x, t, s, cond) = c_skip(t, s) x + c_out(t, s) net(c_in(t) x, t, s, cond)

    with the scalings of `param`, so that f(x, t, t) = x exactly. It jumps along the
    probability-flow ODE of `path` from time t to time s <= t (t = 0 data, t = 1 noise).

    Args:
        net: the raw network `net(x_in, t, s, cond) -> F` with x_in of x's shape and t, s of
            shape x.shape[:1] (one time each per example); an nnx Module (e.g.
            `jdiff.models.FlowMapMLP`), an equinox Module or any callable.
        path: the `jdiff.paths.AbstractPath` whose PF-ODE the map follows.
        param: the skip/out scalings, `AverageVelocity()` (the default: net is the average
            velocity over [s, t]) or `DDIMDenoiser(sigma_data)` (consistency models, CTM).
        policy: the precision policy (`jdiff.Policy`), applied around the raw network as in
            `jdiff.Model`: net sees c_in x in the compute dtype and t, s in the state dtype
            (at least float32); the skip c_skip x and the jump stay in the state dtype.

    Like `jdiff.Model` it is an immutable pytree: it passes through `jax.jit` and `jax.grad`,
    and an nnx network inside stays trainable.
    """

    net: Any
    path: AbstractPath
    param: AbstractFlowMapParam
    policy: Policy = eqx.field(static=True)

    def __init__(
        self, net, path: AbstractPath, param: AbstractFlowMapParam = _AVERAGE_VELOCITY, *, policy: Policy | None = None
    ):
        if isinstance(net, FlowMap):
            raise TypeError("`net` is already a FlowMap; pass its raw network `flow.net`")
        if not isinstance(path, AbstractPath):
            raise TypeError(
                f"`path` must be a jdiff path (an AbstractPath, e.g. jdiff.Linear()); got "
                f"{type(path).__name__} {path!r}"
            )
        if not isinstance(param, AbstractFlowMapParam):
            raise TypeError(
                f"`param` must be a flow-map parameterization (AverageVelocity() or "
                f"DDIMDenoiser(sigma_data)); got {type(param).__name__} {param!r}"
            )
        self.net = _as_pytree_net(net)
        self.path = path
        self.param = param
        self.policy = check_policy(policy)

    def state(self, x, name: str = "x"):
        """`x` in this flow map's state dtype (`Policy.state_dtype`), checked to be floating point."""
        return as_state(x, self.policy, name=name)

    def raw(self, x_in, t, s, cond=None):
        """The network's output F(x_in, t, s, cond) with per-example times, in the state dtype of x_in.

        The precision boundary: the network gets x_in (and floating `cond`) in the policy's compute
        dtype and t, s in the state dtype."""
        x_in = self.state(x_in)
        t, s = per_example(t, x_in), per_example(s, x_in)
        cast = self.policy.cast_to_compute
        out = self.net(cast(x_in), t, s, cast(cond))
        if jnp.shape(out) != jnp.shape(x_in):
            raise ValueError(
                f"the flow map's network returned shape {jnp.shape(out)} for `x` of shape "
                f"{jnp.shape(x_in)}; it must return the shape of x"
            )
        return jnp.asarray(out, x_in.dtype)

    def __call__(self, x, t, s, cond=None):
        """x_s = f(x, t, s, cond), with t and s scalars or one time per example (shape x.shape[:1])."""
        x = self.state(x)
        t, s = per_example(t, x), per_example(s, x)
        c_skip, c_out, c_in = (expand_to(c, x, "t") for c in self.param.scalings(self.path, t, s))
        return c_skip * x + c_out * self.raw(c_in * x, t, s, cond)


def check_flow(flow, name: str = "flow"):
    """`flow` must be a `FlowMap`; the error names the argument and how to make one."""
    if not isinstance(flow, FlowMap):
        raise TypeError(
            f"`{name}` must be a jdiff.flowmaps.FlowMap (a two-time network bound to its path and "
            f"parameterization), e.g. FlowMap(net, path); got {type(flow).__name__}"
        )
    return flow


def average_velocity_net(flow, name: str = "flow"):
    """The network u(x, t, s, cond) of an `AverageVelocity` flow map (for MeanFlow and shortcut losses)."""
    check_flow(flow, name)
    if not isinstance(flow.param, AverageVelocity):
        raise TypeError(
            f"`{name}` must have the AverageVelocity() parameterization (its network is the average "
            f"velocity u(x, t, s)); got {type(flow.param).__name__}"
        )
    return flow.raw


def consistency_function(flow: FlowMap, t_end=None):
    """The consistency function g(x, t, cond=None) = flow(x, t, t_end, cond) (t_end defaults to path.t_min)."""
    check_flow(flow)
    t_end = flow.path.t_min if t_end is None else t_end

    def g(x, t, cond=None):
        return flow(x, t, t_end, cond)

    return g
