"""Private pieces shared by the networks: kind/dtype checks, GroupNorm sizing, attention."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff.predictions import check_kind


def check_model_kind(kind: str) -> str:
    return check_kind(kind, "kind")


def check_input(x, ndim: int, shape, name: str):
    """x must be a batch (B, *shape) (shape entries None = any size)."""
    if x.ndim != ndim or any(s is not None and s != d for s, d in zip(shape, x.shape[1:])):
        want = "(B, " + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"`x` for this {name} must have shape {want}; got {x.shape}")


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """GroupNorm groups as DDPM++ (Song et al. 2021): min(32, C // 4), reduced to divide C."""
    g = max(1, min(max_groups, channels // min_group_size))
    while channels % g:
        g -= 1
    return g


def axes(*names) -> dict:
    """Metadata naming a parameter's logical axes, e.g. `nnx.Linear(..., kernel_metadata=axes("embed", "mlp"))`.

    jdiff.parallel's logical-axis rules map the names to mesh axes ("embed": the model width, split
    by FSDP; "mlp", "heads": expanded and attention widths, split by tensor parallelism; "vocab":
    embedding rows; None: never split). No mesh is needed to build the network (eager_sharding off).
    """
    return {"out_sharding": names, "eager_sharding": False}


def norm_dtype(dtype):
    """The dtype normalisation layers compute and return in: float32 at least under a low-precision
    compute dtype (bfloat16 statistics and rescaling lose the small differences a norm divides),
    None (the input's) when the network computes in its input's dtype."""
    return None if dtype is None else jnp.promote_types(dtype, jnp.float32)


def zeros_linear(din, dout, *, dtype, rngs, names=("embed", "mlp"), param_dtype=jnp.float32):
    """A Linear layer initialized to output exactly zero (residual branches, adaLN-Zero)."""
    return nnx.Linear(
        din,
        dout,
        kernel_init=nnx.initializers.zeros,
        bias_init=nnx.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        kernel_metadata=axes(*names),
    )


class Attention(nnx.Module):
    """Multi-head self-attention over tokens (B, L, D) -> (B, L, D).

    zero_out: initialize the output projection to zero, so the block starts as identity in
    a residual stream (DDPM++'s init_scale=0 on the attention output).
    kernel_init: initializer of the projections (default nnx.Linear's LeCun normal).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        zero_out: bool = False,
        kernel_init=None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"`num_heads`={num_heads} must divide the width {dim}")
        self.num_heads = num_heads
        kw = {} if kernel_init is None else dict(kernel_init=kernel_init)
        kw["param_dtype"] = param_dtype
        self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs, kernel_metadata=axes("embed", "heads"), **kw)
        self.out = (
            zeros_linear(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs, names=("heads", "embed"))
            if zero_out
            else nnx.Linear(dim, dim, dtype=dtype, rngs=rngs, kernel_metadata=axes("heads", "embed"), **kw)
        )

    def __call__(self, h):
        b, n, d = h.shape
        q, k, v = jnp.split(self.qkv(h).reshape(b, n, 3 * self.num_heads, d // self.num_heads), 3, axis=2)
        # Softmax in float32 even under bf16 compute (jax.nn.dot_product_attention upcasts logits).
        o = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(d // self.num_heads))
        return self.out(o.reshape(b, n, d))
