"""A pytree state for the fixed-step solvers: raveled per example, sampled, unraveled.

A state that is a pytree of arrays sharing the batch axis (the levels of a multi-resolution
diffusion, `jdiff.nested`) is one point of a product space: every solver step is the same
affine combination, with the path's scalar coefficients, for every leaf. `sample` therefore
ravels it to one (B, D) array (the leaves' trailing axes flattened and concatenated in tree
order), runs the solver on the model whose network sees the pytree again, and unravels the
result. Per-example norms (Langevin correctors) then cover the whole state, as they should.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jdiff._model import Model

__all__ = ["LevelSpec", "is_array", "ravel", "raveled_model", "unravel", "unravel_output"]


def is_array(x) -> bool:
    """True for a single array (or number): the solvers' usual state; False for a pytree of arrays."""
    leaves = jax.tree_util.tree_leaves(x)
    return len(leaves) == 1 and leaves[0] is x


class LevelSpec(eqx.Module):
    """How a pytree of (B, ...) arrays ravels to (B, D): its structure and per-example shapes."""

    treedef: Any = eqx.field(static=True)
    shapes: tuple = eqx.field(static=True)

    @property
    def sizes(self) -> tuple:
        return tuple(math.prod(s) for s in self.shapes)


def ravel(tree):
    """(flat, spec): the leaves of `tree`, each (B, ...), flattened per example and concatenated
    into one (B, D) array; `spec` undoes it (`unravel`)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not leaves:
        raise ValueError("`x_T` is an empty pytree; give an array or a pytree of (batch, ...) arrays")
    leaves = [jnp.asarray(x) for x in leaves]
    b = leaves[0].shape[0] if leaves[0].ndim else None
    dtypes = {x.dtype for x in leaves}
    if b is None or any(x.ndim == 0 or x.shape[0] != b for x in leaves):
        raise ValueError(
            f"every leaf of a pytree `x_T` must share the leading batch axis; got shapes {[x.shape for x in leaves]}"
        )
    if len(dtypes) != 1 or not jnp.issubdtype(leaves[0].dtype, jnp.floating):
        raise ValueError(
            f"the leaves of a pytree `x_T` must share one floating-point dtype; got {sorted(map(str, dtypes))}"
        )
    spec = LevelSpec(treedef, tuple(tuple(x.shape[1:]) for x in leaves))
    return jnp.concatenate([x.reshape(b, -1) for x in leaves], axis=1), spec


def unravel(flat, spec: LevelSpec):
    """The pytree of `spec` from a (B, D) array (the inverse of `ravel`)."""
    b = flat.shape[0]
    cuts = np.cumsum(spec.sizes)[:-1].tolist()
    parts = jnp.split(flat, cuts, axis=1)
    return jax.tree_util.tree_unflatten(spec.treedef, [p.reshape(b, *s) for p, s in zip(parts, spec.shapes)])


class _RaveledNet(eqx.Module):
    """net(x_flat, t, cond) = ravel(net(unravel(x_flat), t, cond)): a pytree network on raveled states."""

    net: Any
    spec: LevelSpec

    def __call__(self, x, t, cond=None):
        out = self.net(unravel(x, self.spec), t, cond)
        if jax.tree_util.tree_structure(out) != self.spec.treedef:
            raise ValueError(
                f"the network returned a {jax.tree_util.tree_structure(out)} for a state of structure "
                f"{self.spec.treedef}; a prediction must have the structure of x"
            )
        flat, spec = ravel(out)
        if spec.shapes != self.spec.shapes:
            raise ValueError(
                f"the network returned levels of shapes {spec.shapes} for a state of shapes "
                f"{self.spec.shapes}; a prediction must have the shapes of x"
            )
        return flat


def raveled_model(model: Model, spec: LevelSpec) -> Model:
    """`model` (whose network takes and returns a pytree of `spec`) as a model on raveled states;
    path, kind and every other field are kept."""
    return eqx.tree_at(lambda m: m.net, model, _RaveledNet(model.net, spec))


def unravel_output(out, spec: LevelSpec, return_trajectory: bool):
    """`sample`'s output on raveled states back to pytrees (trajectories keep their leading time axis)."""
    if not return_trajectory:
        return unravel(out, spec)
    x, traj = out
    return unravel(x, spec), jax.vmap(lambda f: unravel(f, spec))(traj)
