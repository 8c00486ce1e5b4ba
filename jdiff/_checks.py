"""Input checks shared by the numerical core; every error names the argument and what it accepts.

Shapes and dtypes are static, so they are checked at trace time, inside `jax.jit` too. Values
(the order of a grid, a time's range, a label's range) are checked when they are concrete; a
traced class label is checked at run time with `equinox.error_if` (EQX_ON_ERROR=nan turns
that into NaN instead), since an out-of-range label otherwise silently gives NaN or, for a
negative one, wraps around to another class.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jdiff.paths import AbstractPath


def is_concrete(*values) -> bool:
    """True when no leaf is a tracer (values known while tracing)."""
    return not any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(values))


def check_path(path, name: str = "path"):
    """A jdiff path object (a name such as "vp_cosine" is looked up by experiments._names, not here)."""
    if not isinstance(path, AbstractPath):
        raise TypeError(
            f"`{name}` must be a jdiff path (an AbstractPath, e.g. jdiff.VPCosine()); got "
            f"{type(path).__name__} {path!r}"
        )
    return path


def check_key(key, name: str = "key"):
    """A PRNG key: a typed key (`jax.random.key`) or a raw uint32 key (`jax.random.PRNGKey`)."""
    if key is None:
        raise ValueError(f"`{name}` is required: pass a PRNG key, e.g. jax.random.key(0)")
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    shape = getattr(key, "shape", None)
    if dtype is not None and dtype == jnp.uint32 and shape is not None and len(shape) >= 1 and shape[-1] in (2, 4):
        return key
    got = type(key).__name__ + (f" of dtype {dtype} and shape {jnp.shape(key)}" if dtype is not None else f" {key!r}")
    raise TypeError(f"`{name}` must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)); got {got}")


def check_batched(x, name: str, *, min_ndim: int = 1):
    """`x` must have a leading batch axis (at least `min_ndim` axes)."""
    if jnp.ndim(x) < min_ndim:
        want = "(batch,)" if min_ndim == 1 else "(batch, ...)" if min_ndim == 2 else f"at least {min_ndim} axes"
        raise ValueError(
            f"`{name}` must be a batch of shape {want} with a leading batch axis; got shape {jnp.shape(x)}"
        )
    return x


def _tol(dtype) -> float:
    dtype = jnp.dtype(dtype)
    return 8.0 * float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else 0.0


def check_times_in_range(t, path, name: str = "t"):
    """Concrete times must be finite and lie in the path's range [t_min, t_max] (up to rounding).

    Outside it a path may be singular (alpha = 0 at t = 1 on the rectified-flow path, an
    infinite log-SNR): `path.t_min` / `path.t_max` say where it is finite in float32.
    """
    check_path(path)
    if t is None or not is_concrete(t):
        return t
    arr = np.asarray(t).astype(np.float64)  # not jnp.asarray: inside a jit trace that makes a tracer
    tol = _tol(t.dtype) if hasattr(t, "dtype") else 1e-12
    lo, hi = float(path.t_min), float(path.t_max)
    bad = ~np.isfinite(arr) | (arr < lo - tol) | (arr > hi + tol)
    if np.any(bad):
        v = float(arr.reshape(-1)[int(np.argmax(bad.reshape(-1)))])
        raise ValueError(
            f"`{name}` must lie in the time range of the path, [t_min, t_max] = [{lo}, {hi}] of "
            f"{type(path).__name__} (t = 0 data, t = 1 noise); got {name} = {v}"
        )
    return t


def check_time_shape(t, batch: int, name: str = "t"):
    """`t` must be a scalar or one time per example, shape (batch,)."""
    if t is not None and jnp.shape(t) not in ((), (batch,)):
        raise ValueError(
            f"`{name}` must be a scalar or have shape ({batch},) (one time per example); got shape {jnp.shape(t)}"
        )
    return t


def check_labels(labels, num_classes: int, name: str = "cond", *, null_class: bool = False, what: str = ""):
    """Integer class labels in 0 .. num_classes - 1 (0 .. num_classes with the null class).

    Concrete labels raise a ValueError now; traced labels raise at run time (`equinox.error_if`).
    Returns the labels as an array.
    """
    hi = num_classes if null_class else num_classes - 1
    accepted = f"0..{hi}" + (f" ({num_classes} = the null class)" if null_class else "")
    dtype = jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"`{name}` must be integer class labels in {accepted}{what}; got dtype {dtype}")
    message = f"`{name}` has a class label outside {accepted}{what}"
    if is_concrete(labels):  # checked before any jnp call, which would make a tracer inside jit
        arr = np.asarray(labels)
        bad = (arr < 0) | (arr > hi)
        if np.any(bad):
            raise ValueError(f"{message}: got {int(arr.reshape(-1)[int(np.argmax(bad.reshape(-1)))])}")
        return jnp.asarray(labels)
    labels = jnp.asarray(labels)
    return eqx.error_if(labels, (labels < 0) | (labels > hi), message)
