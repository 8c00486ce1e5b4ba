"""A residual MLP of two times, net(x, t, s, cond): the raw network of a `jdiff.flowmaps.FlowMap`."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from jdiff.models._common import norm_dtype
from jdiff.models.embeddings import (
    TimeEmbedding,
    batch_times,
    check_unconditional,
    class_embedding_or_none,
)

__all__ = ["FlowMapMLP"]


class FlowMapMLP(nnx.Module):
    """Residual MLP net(x, t, s, cond) of two times, the raw network of a flow map.

    Use it as `jdiff.flowmaps.FlowMap(FlowMapMLP(...), path, param)`. The times enter as two
    embeddings (sinusoidal features of `time_scale` * time, then Linear-SiLU-Linear), of t and
    of the jump t - s (MeanFlow's best input pair (t, t - r), Geng et al. 2025, Table 1c),
    added to the class embedding (a `jdiff.models.ClassEmbedding` with a null class when
    `num_classes` is set) and fed to every residual block, whose last layer is zero-initialised.

    in_features: prod of an example's shape (2 for the toy sets); hidden: width; depth: blocks.
    num_classes: None (unconditional) or K classes, with a null class K.
    time_scale: the sinusoidal features are those of time_scale * t. jdiff.models uses 1000
        (DDPM's step index); MeanFlow differentiates the network in t (jax.jvp), and features of
        frequency up to 1000 make that derivative, hence the target, large and noisy, so the
        default here is 10 (the highest frequency then has period ~0.6 in t).
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: int = 128,
        depth: int = 3,
        num_classes: int | None = None,
        time_scale: float = 10.0,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        norm = {"dtype": norm_dtype(dtype), "param_dtype": param_dtype, "rngs": rngs}  # LayerNorm in float32 under bf16
        self.time_t = TimeEmbedding(hidden, hidden, time_scale=time_scale, **kw)
        self.time_d = TimeEmbedding(hidden, hidden, time_scale=time_scale, **kw)
        self.label = class_embedding_or_none(num_classes, hidden, dtype, rngs, param_dtype)
        self.inp = nnx.Linear(in_features, hidden, **kw)
        self.norms = nnx.List([nnx.LayerNorm(hidden, **norm) for _ in range(depth)])
        self.dense1 = nnx.List([nnx.Linear(hidden, hidden, **kw) for _ in range(depth)])
        self.emb = nnx.List([nnx.Linear(hidden, hidden, **kw) for _ in range(depth)])
        self.dense2 = nnx.List(
            [nnx.Linear(hidden, hidden, kernel_init=nnx.initializers.zeros, **kw) for _ in range(depth)]
        )
        self.out_norm = nnx.LayerNorm(hidden, **norm)
        self.out = nnx.Linear(hidden, in_features, **kw)

    def __call__(self, x, t, s, cond=None):
        """x (B, ...) with in_features values per example; t, s scalars or (B,); cond (B,) ints or None."""
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(f"`x` must have shape (B, ...) with {self.in_features} values per example; got {x.shape}")
        b = x.shape[0]
        clock = jnp.promote_types(x.dtype, jnp.float32)  # times stay float32 under a bfloat16 x
        t = batch_times(jnp.asarray(t, clock), x)
        s = batch_times(jnp.asarray(s, clock), x)
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
