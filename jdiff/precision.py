"""Mixed precision as one policy: parameter, compute and output dtypes, converted at the model boundary.

    policy = jdiff.Policy(compute_dtype="bfloat16")        # f32 master weights, bf16 network
    net = jdiff.models.UNet(32, 3, **policy.network_kwargs(), rngs=nnx.Rngs(0))
    model = jdiff.Model(net, path, "eps", policy=policy)
    x = samplers.sample(solver, model, x_T, grid)          # x_T, the grid and the state: float32

The rules (jmp's three dtypes, as MaxDiffusion and Haiku use them):

* **param_dtype**: the dtype of the trained parameters (the "master weights") and hence of the
  optimizer state, EMA and checkpoints. float32 by default.
* **compute_dtype**: the dtype the network computes in. At the model boundary the network's
  inputs (x and any floating-point `cond`) are cast to it; jdiff's networks run their matmuls and
  convolutions in it and keep normalisation, softmax and the time embedding in float32. None
  (the default) passes x in the state's dtype.
* **output_dtype**: the least precision of the *state*: the network's prediction comes back at
  the boundary in `state_dtype(x) = promote(x.dtype, output_dtype)`, float32 by default (float64
  data, as in the tests, stays float64). It must be float32 or float64.

Whatever the network computes in, the clock (time grids, the times of a loss), the path
coefficients alpha, sigma and log-SNR, the sampler and ODE/SDE state, the kind conversions of
`jdiff.predictions`, the losses and their reduction stay in the state dtype: bfloat16 has an
8-bit mantissa, so it rounds t = 0.999 to 1.0 (where alpha = 0 and the log-SNR is -inf) and
resolves a loss value only to 0.4 %. Every entry point of jdiff (samplers, diffrax solves,
losses, likelihoods, flow maps) therefore promotes its data to the state dtype first
(`as_state`): a bfloat16 `x_T` or batch is computed on in float32, and a bfloat16 time grid is
refused rather than silently rounded.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Policy", "as_state", "state_dtype"]

_STATE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _float_dtype(value, name: str, *, allow_none: bool = False):
    if value is None and allow_none:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        accepted = "a floating-point dtype (float32, bfloat16, float16, float64)" + (" or None" if allow_none else "")
        raise ValueError(f"`{name}` must be {accepted}; got {value!r}")
    return dtype


@dataclasses.dataclass(frozen=True)
class Policy:
    """The precision policy of a bound model (`jdiff.Model(..., policy=)`, `flowmaps.FlowMap`).

    Args:
        param_dtype: dtype of the parameters (master weights) and optimizer state (float32).
        compute_dtype: dtype the network computes in; its inputs are cast to it at the model
            boundary (e.g. "bfloat16"). None: the network sees x in the state's dtype.
        output_dtype: the least precision of the state the prediction is returned into:
            "float32" (default) or "float64".

    Immutable and hashable: a `Model` holds it as static data (a new policy recompiles).
    """

    param_dtype: np.dtype | str = "float32"  # stored as an np.dtype
    compute_dtype: np.dtype | str | None = None
    output_dtype: np.dtype | str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "param_dtype", _float_dtype(self.param_dtype, "param_dtype"))
        object.__setattr__(self, "compute_dtype", _float_dtype(self.compute_dtype, "compute_dtype", allow_none=True))
        out = _float_dtype(self.output_dtype, "output_dtype")
        if out not in _STATE_DTYPES:
            raise ValueError(
                f"`output_dtype` must be float32 or float64 (the clock and the sampler/loss state never go below "
                f"float32: bfloat16 rounds t = 0.999 to 1.0); got {out.name}"
            )
        object.__setattr__(self, "output_dtype", out)

    def state_dtype(self, x_or_dtype) -> np.dtype:
        """The dtype of the state for data `x` (an array or a dtype): promote(x, output_dtype)."""
        dtype = x_or_dtype if isinstance(x_or_dtype, (np.dtype, type, str)) else jnp.result_type(x_or_dtype)
        return np.dtype(jnp.promote_types(dtype, self.output_dtype))

    def cast_to_compute(self, tree):
        """Floating-point leaves of `tree` cast to `compute_dtype` (unchanged when it is None)."""
        if self.compute_dtype is None:
            return tree
        return jax.tree.map(lambda v: _cast_floating(v, self.compute_dtype), tree)

    def network_kwargs(self) -> dict:
        """{"dtype": compute_dtype, "param_dtype": param_dtype} for the `jdiff.models` constructors."""
        return {"dtype": self.compute_dtype, "param_dtype": self.param_dtype}

    @property
    def boundary_free(self) -> Policy:
        """This policy without its compute cast: for a combinator whose inner model casts already."""
        return dataclasses.replace(self, compute_dtype=None)


def _cast_floating(v, dtype):
    if v is None:
        return v
    v = jnp.asarray(v)
    return v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v


DEFAULT = Policy()


def state_dtype(x, policy: Policy | None = None) -> np.dtype:
    """The state dtype for data `x` under `policy` (default: at least float32)."""
    return (DEFAULT if policy is None else policy).state_dtype(x)


def as_state(x, policy: Policy | None = None, *, name: str = "x"):
    """`x` as a floating-point array in its state dtype (bfloat16 / float16 data -> float32).

    Raises a ValueError naming the argument for non-numeric or integer data (dequantize or scale
    integer images first).
    """
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"`{name}` must be a floating-point array; got {type(x).__name__}") from e
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must be a floating-point array (float32, float64, or bfloat16, which is computed on in "
            f"float32); got dtype {x.dtype}"
        )
    return x.astype(state_dtype(x, policy))


def clock_dtype_ok(dtype) -> bool:
    """True when `dtype` can carry the clock: float32 or wider (or an exact integer)."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
        return True
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits >= 32
