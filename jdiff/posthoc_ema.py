"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", Sec. 3 and App. C): track two power-function EMA profiles while training, store them
with every checkpoint snapshot, and afterwards rebuild the EMA of any length by least squares.

    state = training.init_train_state(net, tx, key, power_ema=(0.05, 0.10))   # two profiles
    ... training; every checkpoint: save_snapshot(workdir + "/phema", step, state.power_ema)
    params = reconstruct(load_snapshots(workdir + "/phema"), sigma_rel=0.08)   # any length, later

Power-function EMA. With t the number of optimizer steps taken, the average after step t is
theta_hat(t) = beta(t) theta_hat(t - 1) + (1 - beta(t)) theta(t) with beta(t) = (1 - 1/t)^(gamma + 1)
(EDM2's training/phema.py power_function_beta, in steps instead of images). It weighs step k by
(k^(gamma+1) - (k-1)^(gamma+1)) / t^(gamma+1) = the integral over [k - 1, k] of the profile

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)      on [0, t],

so the discrete EMA is exactly this continuous profile applied to the piecewise-constant weight
trajectory. Its length is the relative standard deviation of p_t as a distribution over tau / t,
sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (the paper's Eq. 123; EDM2 stores
sigma_rel 0.05 and 0.10, gamma = 16.97 and 6.94); gamma from sigma_rel is the largest real root of
gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + 12 - sigma_rel^-2 (Eq. 126, Algorithm 2).

Reconstruction. Snapshots i hold profiles p_i (times t_i, exponents gamma_i). The target profile
p* (time t*, gamma*) is approximated by sum_i x_i p_i minimising the L2 distance between the
profiles: the normal equations A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p*> in closed form,

    <p_a, p_b> = (g_a + 1)(g_b + 1) / ((g_a + g_b + 1) t_max) * (t_min / t_max)^(g of the later one)

(the integral of the product over [0, min(t_a, t_b)]; the paper's Eq. 151, Algorithm 3), and
x is normalised to sum 1 as EDM2's solve_posthoc_coefficients does. The reconstructed weights are
sum_i x_i theta_hat_i; `profile_error` gives the relative L2 residual of the profile fit.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "SIGMA_REL_MAX",
    "PowerEMA",
    "Snapshot",
    "gamma_to_sigma_rel",
    "load_snapshots",
    "profile_error",
    "profile_inner_product",
    "reconstruct",
    "save_snapshot",
    "sigma_rel_to_gamma",
    "solve_weights",
]

SIGMA_REL_MAX = 1.0 / np.sqrt(12.0)  # gamma -> 0: the uniform average over the whole run


def gamma_to_sigma_rel(gamma):
    """Relative standard deviation of the power-function profile with exponent gamma (Eq. 123)."""
    g = np.asarray(gamma, np.float64)
    return np.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


def sigma_rel_to_gamma(sigma_rel):
    """The exponent gamma of relative standard deviation `sigma_rel` in (0, 1/sqrt(12)) (Eq. 126)."""
    s = np.asarray(sigma_rel, np.float64)
    if np.any(~(s > 0)) or np.any(s >= SIGMA_REL_MAX):
        raise ValueError(
            f"`sigma_rel` must be in (0, {SIGMA_REL_MAX:.4f}) (0: no averaging, 1/sqrt(12): the "
            f"uniform average); got {sigma_rel}"
        )
    out = [max(np.roots([1.0, 7.0, 16.0 - v**-2, 12.0 - v**-2]).real) for v in s.ravel()]
    return np.asarray(out, np.float64).reshape(s.shape)


def profile_inner_product(t_a, gamma_a, t_b, gamma_b):
    """<p_a, p_b> = integral of p_{t_a, gamma_a}(tau) p_{t_b, gamma_b}(tau) d tau (broadcasts)."""
    t_a, g_a, t_b, g_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    t_max = np.maximum(t_a, t_b)
    later_gamma = np.where(t_a < t_b, g_b, g_a)  # the profile that extends past the other's end
    ratio = np.minimum(t_a, t_b) / t_max
    return (g_a + 1.0) * (g_b + 1.0) / ((g_a + g_b + 1.0) * t_max) * ratio**later_gamma


def solve_weights(times, sigma_rels, target_time, target_sigma_rels) -> np.ndarray:
    """Coefficients (num snapshots, num targets) of the least-squares reconstruction.

    times, sigma_rels: each snapshot profile's time (steps) and relative std (broadcast together).
    target_time: the time of the reconstructed average (usually the last snapshot's).
    target_sigma_rels: one or more relative stds to reconstruct.
    Only snapshots at or before target_time can contribute (later ones average later weights).
    """
    t, s = np.broadcast_arrays(np.asarray(times, np.float64), np.asarray(sigma_rels, np.float64))
    t, g = t.ravel(), sigma_rel_to_gamma(s.ravel())
    if np.any(t <= 0):
        raise ValueError(f"snapshot `times` must be positive step counts; got {t.min()}")
    if np.any(t > target_time):
        raise ValueError(f"every snapshot time must be <= `target_time` {target_time}; drop the later snapshots")
    gt = sigma_rel_to_gamma(np.atleast_1d(np.asarray(target_sigma_rels, np.float64)))
    a = profile_inner_product(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_inner_product(t[:, None], g[:, None], float(target_time), gt[None, :])
    x = np.linalg.solve(a, b)
    return x / np.sum(x, axis=0, keepdims=True)


def profile_error(times, sigma_rels, target_time, target_sigma_rel, weights=None) -> float:
    """Relative L2 error |sum_i x_i p_i - p*| / |p*| of the reconstructed profile (closed form:
    x^T A x - 2 x^T b + <p*, p*>). weights: the column of `solve_weights` (default: solved here)."""
    t, s = np.broadcast_arrays(np.asarray(times, np.float64), np.asarray(sigma_rels, np.float64))
    t, g = t.ravel(), sigma_rel_to_gamma(s.ravel())
    gt = float(sigma_rel_to_gamma(target_sigma_rel))
    x = solve_weights(t, s.ravel(), target_time, target_sigma_rel)[:, 0] if weights is None else np.ravel(weights)
    a = profile_inner_product(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_inner_product(t, g, float(target_time), gt)
    pp = profile_inner_product(target_time, gt, target_time, gt)
    return float(np.sqrt(max(x @ a @ x - 2.0 * x @ b + pp, 0.0) / pp))


# -- tracking during training ---------------------------------------------------------------


class PowerEMA(struct.PyTreeNode):
    """Power-function EMA profiles of a parameter pytree, one per relative std (the train state's
    `power_ema` field). sigma_rels is static; params is a tuple of pytrees like the parameters."""

    params: tuple
    sigma_rels: tuple = struct.field(pytree_node=False)

    @classmethod
    def init(cls, params, sigma_rels: Sequence[float], copy=None) -> PowerEMA:
        """Every profile starts as a copy of `params` (weight 0 once the first step is taken).
        copy: how to copy the pytree (default jnp.copy per leaf; sharded callers pass their own)."""
        sigma_rels = tuple(float(s) for s in sigma_rels)
        sigma_rel_to_gamma(sigma_rels)  # validates the range
        copy = copy or (lambda p: jax.tree.map(jnp.copy, p))
        return cls(params=tuple(copy(params) for _ in sigma_rels), sigma_rels=sigma_rels)

    def update(self, params, t) -> PowerEMA:
        """The profiles after the optimizer step that made `params`; t = steps taken so far
        (>= 1, traced). 1 - beta = -expm1((gamma + 1) log1p(-1/t)) keeps the update accurate in
        float32 for long runs (1 - 1/t itself rounds to 1 at t ~ 1e7)."""
        t = jnp.asarray(t, jnp.result_type(float))  # float32, or float64 under jax_enable_x64
        new = []
        for sigma_rel, ema in zip(self.sigma_rels, self.params, strict=True):
            gamma = float(sigma_rel_to_gamma(sigma_rel))
            w = -jnp.expm1((gamma + 1.0) * jnp.log1p(-1.0 / jnp.maximum(t, 1.0)))
            new.append(jax.tree.map(lambda e, p, w=w: (e + w.astype(e.dtype) * (p - e)).astype(e.dtype), ema, params))
        return self.replace(params=tuple(new))


# -- snapshots --------------------------------------------------------------------------------

_SNAPSHOT = re.compile(r"phema_(\d+)\.npz$")


class Snapshot(NamedTuple):
    """One stored profile: its time (steps), relative std, and {leaf path: array} of its weights."""

    step: int
    sigma_rel: float
    arrays: dict


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _host(tree):
    """Full host copies of (possibly sharded, multi-process) arrays; a collective on pods."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def save_snapshot(directory: str, step: int, power_ema: PowerEMA, *, write: bool | None = None) -> str | None:
    """Write the profiles of `power_ema` at `step` to directory/phema_<step>.npz (float32 arrays
    named by their pytree paths, plus sigma_rels and step); returns the path.

    Every process must call it (on a pod the sharded weights are gathered, a collective); only
    process 0 writes (write=None), atomically (a temporary file renamed into place).
    """
    if not isinstance(power_ema, PowerEMA):
        raise TypeError(f"`power_ema` must be a PowerEMA (the train state's power_ema); got {type(power_ema).__name__}")
    host = _host(power_ema.params)
    write = jax.process_index() == 0 if write is None else write
    if not write:
        return None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"phema_{int(step):09d}.npz")
    arrays = {"step": np.int64(step), "sigma_rels": np.asarray(power_ema.sigma_rels, np.float64)}
    for i, tree in enumerate(host):
        arrays.update({f"profile{i}:{k}": np.asarray(v) for k, v in _flat(tree).items()})
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_snapshots(directory: str, *, max_step: int | None = None) -> list[Snapshot]:
    """Every profile stored by `save_snapshot` in `directory` (steps <= max_step), oldest first,
    read into memory (for large models, reconstruct from a few snapshots at a time)."""
    files = sorted(f for f in glob.glob(os.path.join(directory, "phema_*.npz")) if _SNAPSHOT.search(f))
    if not files:
        raise FileNotFoundError(
            f"no post-hoc EMA snapshots (phema_<step>.npz) in {directory!r}: train with "
            "config.posthoc_ema.sigma_rels set (two profiles, e.g. (0.05, 0.10))"
        )
    out = []
    for f in files:
        with np.load(f) as z:
            step = int(z["step"])
            if max_step is not None and step > max_step:
                continue
            sigma_rels = [float(s) for s in z["sigma_rels"]]
            for i, s in enumerate(sigma_rels):
                prefix = f"profile{i}:"
                arrays = {k[len(prefix) :]: z[k] for k in z.files if k.startswith(prefix)}
                out.append(Snapshot(step, s, arrays))
    return out


def reconstruct(snapshots: Sequence[Snapshot], sigma_rel, *, step: int | None = None, template: Any = None):
    """The EMA of relative std `sigma_rel` (a float, or a sequence: one result each) at `step`
    (default: the last snapshot's), as sum_i x_i theta_hat_i over the snapshots up to `step`.

    template: a parameter pytree (arrays or ShapeDtypeStructs) to return the result in its
    structure and dtypes; None returns {leaf path: float64 array}.
    """
    step = max(s.step for s in snapshots) if step is None else int(step)
    used = [s for s in snapshots if s.step <= step]
    if not used:
        raise ValueError(f"no snapshot at or before `step` {step}")
    single = np.ndim(sigma_rel) == 0
    targets = np.atleast_1d(np.asarray(sigma_rel, np.float64))
    x = solve_weights([s.step for s in used], [s.sigma_rel for s in used], step, targets)
    results = []
    for j in range(targets.shape[0]):
        acc = {}
        for i, snap in enumerate(used):
            for k, v in snap.arrays.items():
                acc[k] = acc.get(k, 0.0) + x[i, j] * np.asarray(v, np.float64)
        results.append(acc if template is None else _unflatten_like(template, acc))
    return results[0] if single else results


def _unflatten_like(template, flat: dict):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    missing = [jax.tree_util.keystr(p) for p, _ in leaves if jax.tree_util.keystr(p) not in flat]
    if missing:
        raise ValueError(f"the snapshots do not hold the template's leaves {', '.join(missing[:5])}")
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(flat[jax.tree_util.keystr(p)], leaf.dtype) for p, leaf in leaves]
    )
