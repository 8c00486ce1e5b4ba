"""The bound model: a network, the path it was trained on and what it predicts, as one object.

    model = jdiff.Model(net, path, "eps")     # net(x, t, cond) -> an eps prediction on `path`
    model(x, t, cond)                         # the network's own prediction ("eps")
    model.x0(x, t, cond)                      # the denoiser E[x0 | x_t]: jdiff's currency
    model.velocity(x, t, cond)                # the probability-flow ODE velocity dx/dt
    model.as_kind("v")                        # the same field as a "v" model
    model.predict(x, t, cond, kind="score")   # any view by name

Every view of the field (denoiser, noise, v, score, PF-ODE velocity, the reverse SDE) comes
from the one network call through `jdiff.predictions`, so samplers, losses, likelihoods and
guidance take a `Model` and never a loose (network, kind, path) triple.

A `Model` is an immutable pytree (an `equinox.Module`): it passes through `jax.jit`,
`jax.vmap` and `jax.grad` as an argument, and an nnx network inside it (flax nnx Modules are
pytrees) stays trainable. A plain Python function as `net` is held as static data, so a
`Model` of a function is also a valid `jax.jit` argument (it recompiles for a new function).

Precision is decided here, at the model boundary, by the model's `jdiff.Policy`: the network
is called with x (and any floating-point `cond`) cast to the policy's compute dtype and the
clock t in the state's precision (never below float32), and its prediction comes back in the
state dtype, x's dtype promoted to at least float32 (`Policy.state_dtype`). So a network
computing in bfloat16 (or a float64 oracle) never changes the precision of the sampler, loss or
kind conversion that calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from jdiff import predictions
from jdiff.paths import AbstractPath, expand_to
from jdiff.precision import Policy, as_state

__all__ = ["Model", "call_at_boundary", "check_model", "check_policy", "edm_denoiser"]


def check_model(model, name: str = "model"):
    """`model` must be a bound `jdiff.Model`; the error names the argument and how to make one."""
    if not isinstance(model, Model):
        raise TypeError(
            f"`{name}` must be a jdiff.Model (network, path and prediction kind bound together), e.g. "
            f"jdiff.Model(net, path, 'eps'); got {type(model).__name__}"
        )
    return model


class _StaticFn(eqx.Module):
    """A plain callable held as static pytree data (no array leaves to trace or differentiate)."""

    fn: Callable = eqx.field(static=True)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def check_policy(policy, name: str = "policy") -> Policy:
    """None (the default `jdiff.Policy()`) or a `jdiff.Policy`."""
    if policy is None:
        return Policy()
    if not isinstance(policy, Policy):
        raise TypeError(
            f"`{name}` must be None or a jdiff.Policy (e.g. jdiff.Policy(compute_dtype='bfloat16')); "
            f"got {type(policy).__name__} {policy!r}"
        )
    return policy


def _clock(t, dtype):
    """The time as the network receives it: integer or sub-float32 times promoted to the state dtype."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating) or jnp.finfo(t.dtype).bits < 32:
        return t.astype(dtype)
    return t


def call_at_boundary(net, policy: Policy, x, t, cond, what: str = "network"):
    """net(x, t, cond) under `policy`: inputs cast to the compute dtype, the prediction back to the
    state dtype of x (checked to have x's shape). The one place where precision changes."""
    x = jnp.asarray(x)
    out_dtype = policy.state_dtype(x)
    x_in = policy.cast_to_compute(x.astype(out_dtype))
    pred = net(x_in, _clock(t, out_dtype), policy.cast_to_compute(cond))
    if jnp.shape(pred) != jnp.shape(x):
        raise ValueError(
            f"the {what} returned shape {jnp.shape(pred)} for `x` of shape {jnp.shape(x)}; a prediction must "
            "have the shape of x"
        )
    return jnp.asarray(pred, out_dtype)


def _as_pytree_net(net):
    """Keep pytrees (nnx / equinox modules, jax.tree_util.Partial) as children; wrap the rest."""
    if not callable(net):
        raise TypeError(f"`net` must be a callable net(x, t, cond) -> prediction; got {type(net).__name__}")
    leaves = jax.tree_util.tree_leaves(net)
    if len(leaves) == 1 and leaves[0] is net:  # not a container: a function, a bound method, a partial
        return _StaticFn(net)
    return net


class Model(eqx.Module):
    """A network bound to its Gaussian path and its prediction kind.

    Args:
        net: `net(x, t, cond) -> prediction`, batched: x of shape (B, ...), t a scalar or (B,),
            cond any pytree or None. An nnx Module, an equinox Module or any callable.
        path: the `jdiff.paths.AbstractPath` the network was trained on.
        kind: what `net` predicts: "eps", "x0", "v", "score" or "velocity"
            (see `jdiff.predictions`).
        policy: the precision policy (`jdiff.Policy`; default: the network sees x in the state
            dtype). With `Policy(compute_dtype="bfloat16")` the network gets x in bfloat16 and
            the clock t in float32, and its prediction comes back in float32.

    Calling the model returns the network's own prediction (of `kind`) in the state dtype (x's
    dtype, promoted to at least float32); the methods return every other view of the same field.
    """

    net: Any
    path: AbstractPath
    kind: str = eqx.field(static=True)
    policy: Policy = eqx.field(static=True)

    def __init__(self, net, path: AbstractPath, kind: str, *, policy: Policy | None = None):
        if isinstance(net, Model):
            raise TypeError("`net` is already a jdiff.Model; use model.as_kind(kind) to change its kind")
        if not isinstance(path, AbstractPath):
            raise TypeError(
                f"`path` must be a jdiff path (an AbstractPath, e.g. jdiff.VPLinear()); got "
                f"{type(path).__name__} {path!r}"
            )
        self.net = _as_pytree_net(net)
        self.path = path
        self.kind = predictions.check_kind(kind)
        self.policy = check_policy(policy)

    # -- the network's own prediction -----------------------------------------------
    def __call__(self, x, t, cond=None):
        """The network's prediction of `self.kind` at (x, t), in the state dtype of x."""
        return call_at_boundary(self.net, self.policy, x, t, cond, f"network of this {self.kind!r} model")

    def state(self, x, name: str = "x"):
        """`x` in this model's state dtype (`Policy.state_dtype`), checked to be floating point."""
        return as_state(x, self.policy, name=name)

    # -- every view of the same field -------------------------------------------------
    def x0_eps(self, x, t, cond=None):
        """(x0_hat, eps_hat): the denoiser E[x0 | x_t] and the matching noise prediction."""
        x = self.state(x)
        return predictions.to_x0_eps(self(x, t, cond), self.kind, x, t, self.path)

    def predict(self, x, t, cond=None, *, kind: str):
        """The prediction of any `kind` ("x0", "eps", "v", "score", "velocity") at (x, t)."""
        x = self.state(x)
        return predictions.convert(self(x, t, cond), self.kind, kind, x, t, self.path)

    def x0(self, x, t, cond=None):
        """The denoiser E[x0 | x_t]."""
        return self.predict(x, t, cond, kind="x0")

    def eps(self, x, t, cond=None):
        """The noise prediction E[eps | x_t]."""
        return self.predict(x, t, cond, kind="eps")

    def v(self, x, t, cond=None):
        """The v-prediction alpha eps - sigma x0."""
        return self.predict(x, t, cond, kind="v")

    def score(self, x, t, cond=None):
        """The score grad log p_t(x) = -eps / sigma."""
        return self.predict(x, t, cond, kind="score")

    def velocity(self, x, t, cond=None):
        """The probability-flow ODE velocity dx/dt = alpha' x0 + sigma' eps."""
        return self.predict(x, t, cond, kind="velocity")

    def reverse_sde(self, x, t, cond=None, *, churn=1.0):
        """(drift, diffusion) of the reverse-time SDE family sharing the path's marginals.

        dx = [u - churn/2 g^2 score] dt + sqrt(churn) g dW (integrated from t = 1 to 0), u the
        PF-ODE velocity: churn = 0 is the probability-flow ODE, churn = 1 the reverse SDE of
        Anderson (1982) / Song et al. (2021). `diffusion` is the scalar (per example)
        coefficient of dW.
        """
        path = self.path
        x = self.state(x)
        x0, eps = self.x0_eps(x, t, cond)
        u = predictions.from_x0_eps(x0, eps, "velocity", x, t, path)
        g2 = path.diffusion2(t)
        s = expand_to(path.sigma(t), x, "t")
        # score = -eps / s, so -churn/2 g^2 score = churn/2 g^2 eps / s
        drift = u + 0.5 * churn * expand_to(g2, x, "t") * eps / s
        return drift, jnp.sqrt(churn * g2)

    def as_kind(self, kind: str) -> Model:
        """The same model predicting `kind` (the network's output converted at every call)."""
        predictions.check_kind(kind, "kind")
        if kind == self.kind:
            return self
        return Model(_ConvertedTo(self, kind), self.path, kind, policy=self.policy.boundary_free)


class _ConvertedTo(eqx.Module):
    """The net of `Model.as_kind`: the inner model's prediction converted to `kind`."""

    inner: Model
    kind: str = eqx.field(static=True)

    def __call__(self, x, t, cond=None):
        return self.inner.predict(x, t, cond, kind=self.kind)


class _EDMNet(eqx.Module):
    """x0_hat = c_skip x + c_out F(c_in x, c_noise, cond), Karras et al.'s preconditioning on any path."""

    net: Any
    path: AbstractPath
    sigma_data: float = eqx.field(static=True)
    policy: Policy = eqx.field(static=True)

    def __call__(self, x, t, cond=None):
        c = predictions.edm_preconditioning(t, self.path, self.sigma_data)
        c_skip, c_out, c_in = (expand_to(v, x, "t") for v in c[:3])
        f = call_at_boundary(self.net, self.policy, c_in * x, c.c_noise, cond, "EDM network")
        return c_skip * x + c_out * f


def edm_denoiser(net, path: AbstractPath, sigma_data: float = 0.5, *, policy: Policy | None = None) -> Model:
    """The "x0" model of a raw network `net(x_in, c_noise, cond)` under EDM preconditioning.

    x0_hat = c_skip x + c_out net(c_in x, c_noise, cond) with the scalings of
    `jdiff.predictions.edm_preconditioning(t, path, sigma_data)` (Karras et al. 2022, written
    for any path); train it with `jdiff.losses.edm_loss`. With a `policy`, the precision boundary
    is around the raw network: c_skip x, the skip connection, stays in the state dtype.
    """
    policy = check_policy(policy)
    return Model(_EDMNet(_as_pytree_net(net), path, float(sigma_data), policy), path, "x0", policy=policy.boundary_free)
