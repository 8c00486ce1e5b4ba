"""Time and class embeddings shared by the jdiff networks, and the (t, cond) input checks.

Time. Every network takes the *path time* t in [0, 1] (t = 0 data, t = 1 noise), a scalar
or one time per example. The embeddings scale it internally:

    "sinusoidal"  Transformer features (Vaswani et al. 2017) of 1000 t, as DDPM (Ho et al.
                  2020) embeds its integer step in 0..999: frequencies 10000^(-k / (d/2)).
    "fourier"     Gaussian random Fourier features (Tancik et al. 2020; Song et al. 2021,
                  NCSN++), [sin 2 pi w t, cos 2 pi w t] with fixed w ~ N(0, 16^2) (their scale).

Classes. A class-conditional network has `num_classes` real classes and one extra *null*
class with index `num_classes`, the unconditional embedding classifier-free guidance
trains by label dropout (Ho & Salimans 2022). `cond=None` means the null class.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff._checks import check_labels
from jdiff.models._common import axes

__all__ = [
    "TIME_EMBEDDINGS",
    "sinusoidal_embedding",
    "FourierFeatures",
    "FourierFrequencies",
    "TimeEmbedding",
    "ClassEmbedding",
    "batch_times",
    "class_embedding_or_none",
    "check_unconditional",
]

TIME_EMBEDDINGS = ("sinusoidal", "fourier")

# DDPM's 1000 discrete steps: sinusoidal features of 1000 t reproduce its embedding of step 1000 t.
SINUSOIDAL_TIME_SCALE = 1000.0
# Song et al. (2021), NCSN++: Gaussian Fourier projection with scale 16.
FOURIER_SCALE = 16.0


def batch_times(t, x) -> jax.Array:
    """The time of every example as a (B,) array, B = x.shape[0]; t is a scalar or (B,)."""
    t = jnp.asarray(t)
    b = x.shape[0]
    if t.ndim == 0:
        return jnp.broadcast_to(t, (b,))
    if t.shape != (b,):
        raise ValueError(f"`t` must be a scalar or have shape ({b},) (one time per example); got {t.shape}")
    return t


def sinusoidal_embedding(t, dim: int, *, scale: float = SINUSOIDAL_TIME_SCALE, max_period: float = 10_000.0):
    """Sinusoidal features (B, dim) of scale * t for times t (B,): [cos(s t f_k), sin(s t f_k)].

    f_k = max_period^(-k / half), k = 0..half-1 (Vaswani et al. 2017); an odd `dim` gets a
    trailing zero column. Computed in float32 at least (1000 t needs the mantissa).
    """
    half = dim // 2
    dtype = jnp.promote_types(jnp.asarray(t).dtype, jnp.float32)
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=dtype) / half)
    args = scale * t.astype(dtype)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class FourierFrequencies(nnx.Variable):
    """Fixed (not trained) random frequencies: not an nnx.Param, so `wrt=nnx.Param` skips them."""


class FourierFeatures(nnx.Module):
    """Gaussian random Fourier features (B, dim) of times t (B,) (Tancik et al. 2020).

    dim: output size (even); scale: standard deviation of the frequencies w (per unit of t).
    """

    def __init__(self, dim: int, *, scale: float = FOURIER_SCALE, rngs: nnx.Rngs):
        if dim % 2:
            raise ValueError(f"`dim` of FourierFeatures must be even; got {dim}")
        self.w = FourierFrequencies(scale * jax.random.normal(rngs.params(), (dim // 2,), jnp.float32))

    def __call__(self, t):
        dtype = jnp.promote_types(jnp.asarray(t).dtype, jnp.float32)
        args = 2 * jnp.pi * t.astype(dtype)[:, None] * self.w[...].astype(dtype)[None, :]
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeEmbedding(nnx.Module):
    """t (B,) -> features of size `dim` -> Linear(dim, out) -> SiLU -> Linear(out, out).

    kind: "sinusoidal" or "fourier" (see the module docstring for the time scaling).
    time_scale: sinusoidal features are those of time_scale * t (default 1000, for t in
        [0, 1]; use 1 for an input that already spans a wide range, such as EDM's
        c_noise = log(sigma) / 4). Fourier features ignore it (their frequencies have
        standard deviation 16 per unit of input).
    """

    def __init__(
        self,
        dim: int,
        out: int,
        *,
        kind: str = "sinusoidal",
        time_scale: float = SINUSOIDAL_TIME_SCALE,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if kind not in TIME_EMBEDDINGS:
            raise ValueError(
                f"unknown time embedding {kind!r} for `time_embedding`; accepted: {', '.join(TIME_EMBEDDINGS)}"
            )
        self.dim = dim
        self.kind = kind
        self.time_scale = time_scale
        self.fourier = FourierFeatures(dim, rngs=rngs) if kind == "fourier" else None
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.dense1 = nnx.Linear(dim, out, kernel_metadata=axes(None, "embed"), **kw)
        self.dense2 = nnx.Linear(out, out, kernel_metadata=axes("embed", "mlp"), **kw)

    def __call__(self, t):
        feats = self.fourier(t) if self.kind == "fourier" else sinusoidal_embedding(t, self.dim, scale=self.time_scale)
        return self.dense2(nnx.silu(self.dense1(feats)))


class ClassEmbedding(nnx.Module):
    """Class labels (B,) in 0..num_classes (num_classes = null class) -> (B, dim); None -> null."""

    def __init__(self, num_classes: int, dim: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.num_classes = num_classes
        # num_classes + 1 rows: the last is the null class (classifier-free guidance).
        self.embed = nnx.Embed(
            num_classes + 1,
            dim,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            embedding_metadata=axes("vocab", "embed"),
        )

    def __call__(self, cond, batch: int):
        if cond is None:
            cond = jnp.full((batch,), self.num_classes, jnp.int32)
        shape, dtype = jnp.shape(cond), jnp.result_type(cond)  # no jnp.asarray: inside a trace it makes a tracer
        if shape != (batch,) or not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(
                f"`cond` must be None or integer class labels of shape ({batch},) in "
                f"0..{self.num_classes} ({self.num_classes} = null class); got {dtype} {shape}"
            )
        # An out-of-range label would embed as NaN (or, negative, wrap to another class): refuse it,
        # now when concrete (a constant inside a trace too), at run time (equinox.error_if) when traced.
        cond = check_labels(cond, self.num_classes, "cond", null_class=True)
        return self.embed(cond)


def class_embedding_or_none(num_classes, dim, dtype, rngs, param_dtype=jnp.float32):
    """A ClassEmbedding, or None for an unconditional network (num_classes None or 0)."""
    if not num_classes:
        return None
    return ClassEmbedding(num_classes, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def check_unconditional(cond, name):
    """Raise if labels reach an unconditional network (silently ignoring them hides a config error)."""
    if cond is not None:
        raise ValueError(
            f"`cond` was given but this {name} is unconditional (num_classes=None); "
            "build it with num_classes=K for class conditioning"
        )
