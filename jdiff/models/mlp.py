"""A residual MLP with time (and class) embedding for low-dimensional data."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from jdiff.models._common import axes, check_model_kind, norm_dtype
from jdiff.models.embeddings import TimeEmbedding, batch_times, check_unconditional, class_embedding_or_none

__all__ = ["MLP"]


class _Block(nnx.Module):
    """h + Linear(Dropout(SiLU(Linear(SiLU(LayerNorm(h))) + emb_proj(emb)))) with a zero-init last layer."""

    def __init__(self, hidden, emb_dim, dropout, dtype, rngs, param_dtype=jnp.float32):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.norm = nnx.LayerNorm(hidden, dtype=norm_dtype(dtype), param_dtype=param_dtype, rngs=rngs)
        self.dense1 = nnx.Linear(hidden, hidden, kernel_metadata=axes("embed", "mlp"), **kw)
        self.emb = nnx.Linear(emb_dim, hidden, kernel_metadata=axes("embed", "mlp"), **kw)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.dense2 = nnx.Linear(
            hidden, hidden, kernel_init=nnx.initializers.zeros, kernel_metadata=axes("mlp", "embed"), **kw
        )

    def __call__(self, h, emb):
        r = self.dense1(nnx.silu(self.norm(h))) + self.emb(emb)
        return h + self.dense2(self.dropout(nnx.silu(r)))


class MLP(nnx.Module):
    """Residual MLP model(x, t, cond) for data x of shape (B, *data_shape), e.g. (B, 2) toy sets.

    Trailing axes are flattened to `in_features = prod(data_shape)` and restored, so the
    output has the shape and dtype of x.

    in_features: the flattened size of one example (2 for the toy sets).
    hidden: width of the residual stream; depth: number of residual blocks.
    num_classes: None (unconditional) or K classes, with a null class K (see embeddings).
    time_embedding: "sinusoidal" (of 1000 t) or "fourier"; the network takes path time t in [0, 1].
    time_scale: the sinusoidal embedding sees time_scale * t (1000 for path time; 1 for EDM c_noise).
    kind: the prediction kind it is trained to output (static, read by training/sampling code).
    dropout: rate inside the residual blocks, active after model.train(), off after model.eval().
    dtype: compute dtype of the matmuls (e.g. jnp.bfloat16; None: the input's); LayerNorm then runs
        in float32, as do the time features.
    param_dtype: dtype of the parameters (float32 master weights).
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: int = 256,
        depth: int = 3,
        num_classes: int | None = None,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1000.0,
        kind: str = "velocity",
        dropout: float = 0.0,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kind = check_model_kind(kind)
        self.in_features = in_features
        self.num_classes = num_classes
        self.dtype = dtype
        self.time = TimeEmbedding(
            hidden, hidden, kind=time_embedding, time_scale=time_scale, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.label = class_embedding_or_none(num_classes, hidden, dtype, rngs, param_dtype)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.inp = nnx.Linear(in_features, hidden, kernel_metadata=axes(None, "embed"), **kw)
        self.blocks = nnx.List([_Block(hidden, hidden, dropout, dtype, rngs, param_dtype) for _ in range(depth)])
        self.out_norm = nnx.LayerNorm(hidden, dtype=norm_dtype(dtype), param_dtype=param_dtype, rngs=rngs)
        self.out = nnx.Linear(hidden, in_features, kernel_metadata=axes("embed", None), **kw)

    def __call__(self, x, t, cond=None):
        """x (B, ...) with prod(x.shape[1:]) = in_features; t scalar or (B,) in [0, 1]; cond (B,) ints or None."""
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"`x` must have shape (B, ...) with {self.in_features} features per example; got {x.shape}"
            )
        b = x.shape[0]
        emb = self.time(batch_times(t, x))
        if self.label is None:
            check_unconditional(cond, "MLP")
        else:
            emb = emb + self.label(cond, b)
        emb = nnx.silu(emb)
        h = self.inp(x.reshape(b, self.in_features))
        for block in self.blocks:
            h = block(h, emb)
        y = self.out(nnx.silu(self.out_norm(h)))
        return y.reshape(x.shape).astype(x.dtype)
