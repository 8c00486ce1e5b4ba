"""Guidance as model combinators: functions from `jdiff.Model`s to a `jdiff.Model`.

    guided = guidance.classifier_free(model, 2.0, null_cond=num_classes)
    x = samplers.sample(samplers.Heun(), guided, x_T, grid, cond=labels)

Every combinator here takes one or more bound models (`jdiff.Model`: network, path and
prediction kind) and returns a new `jdiff.Model` on the same path and of the same kind, so a
guided model goes through every sampler in `jdiff.samplers` (fixed-step and diffrax), every
likelihood and every further combinator unchanged. The guided network is a small immutable
pytree (an `equinox.Module`) holding the inner model(s) and the guidance parameters, so a
guided model is itself a valid `jax.jit` argument: a new weight, interval or rescale of the
same structure does not recompile. Nothing here branches on traced values: the guidance
interval is a `jnp.where` on t, and the guidance weight may be a traced scalar or one weight
per example.

Convention (one for all combinators). With a "positive" prediction D_pos (the conditional
model, or the main model) and a "negative" one D_neg (the unconditional model, or the weak
model), guidance with weight w is

    D_w = D_neg + w (D_pos - D_neg),

so w = 1 is the positive model alone, w = 0 the negative model alone, and w > 1
extrapolates away from the negative model (Ho & Salimans 2022 write the same rule as
(1 + w') D_pos - w' D_neg with w' = w - 1).

The combination space does not matter. At fixed (x, t) each of the five kinds is an affine
function of the denoiser, pred = A(t) x + B(t) x0_hat (predictions.from_x0_eps), and an
affine map commutes with a combination whose weights (1 - w, w) sum to 1. Guiding eps,
x0, v, score or velocity predictions therefore gives the same model; `space` only selects
where the nonlinear CFG rescale measures its standard deviations (and, in floating point,
where rounding happens).

Time convention: t = 0 is data, t = 1 is noise (see `jdiff.paths`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from jdiff import predictions
from jdiff._checks import check_batched, check_key, check_labels, check_time_shape, check_times_in_range
from jdiff._model import Model, _as_pytree_net, check_model
from jdiff.paths import AbstractPath, expand_to
from jdiff.precision import as_state

__all__ = [
    "autoguidance",
    "classifier_free",
    "classifier_guidance",
    "classifier_log_prob",
    "drop_labels",
    "noisy_classifier_loss",
    "with_label_dropout",
]


# -- shared pieces ------------------------------------------------------------------------


def _check_interval(interval):
    """None, or a pair (t_lo, t_hi); checked for 0 <= t_lo <= t_hi <= 1 where it is concrete."""
    if interval is None:
        return None
    if not isinstance(interval, Sequence) or len(interval) != 2:
        raise ValueError(
            f"`interval` must be None or a pair (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1; got {interval!r}"
        )
    lo, hi = interval
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not 0 <= lo <= hi <= 1:
        raise ValueError(f"`interval` must be a pair (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1; got {interval!r}")
    return tuple(interval)


def _check_rescale(rescale):
    """phi of CFG rescale: a number in [0, 1] where concrete."""
    if isinstance(rescale, (int, float)) and not 0 <= rescale <= 1:
        raise ValueError(f"`rescale` must be in [0, 1] (phi of CFG rescale, 0 = off); got {rescale!r}")
    return rescale


def _check_space(space):
    return None if space is None else predictions.check_kind(space, "space")


def _is_zero(value) -> bool:
    """True for a concrete Python 0 (a traced or array value counts as nonzero)."""
    return isinstance(value, (int, float)) and value == 0


def _gate(value, off_value, t, interval):
    """`value` where t lies in the guidance interval (t_lo, t_hi], `off_value` elsewhere.

    The interval is half-open like Kynkaenniemi et al. (2024), who guide for
    sigma in (sigma_lo, sigma_hi]: (0, 0] is empty, so interval=(0, 0) is exactly no
    guidance at every t, t = 0 included. Returns an array of shape broadcast(t, value).
    """
    value = jnp.asarray(value)
    if interval is None:
        return jnp.broadcast_to(value, jnp.broadcast_shapes(jnp.shape(t), value.shape))
    t_lo, t_hi = interval
    on = (t > t_lo) & (t <= t_hi)
    return jnp.where(on, value, off_value)


def _check_batched(x, name):
    if jnp.ndim(x) < 1:
        raise ValueError(f"`{name}` needs a batched `x` of shape (batch, ...); got shape {jnp.shape(x)}")


def _combine(pos, neg, w, kind, x, t, path, rescale, rescaled, space):
    """neg + w (pos - neg) in prediction space `space`, with optional CFG rescale; returns `kind`.

    `w` is a scalar or has shape x.shape[:1]; `rescale` is phi of Lin et al. (2024), applied
    when `rescaled` (a static flag: False for a concrete phi = 0).
    """
    to = kind if space is None else space
    pos_s = predictions.convert(pos, kind, to, x, t, path)
    neg_s = predictions.convert(neg, kind, to, x, t, path)
    guided = neg_s + expand_to(w, x, "w") * (pos_s - neg_s)
    if rescaled:
        guided = _rescale(guided, pos_s, rescale)
    return predictions.convert(guided, to, kind, x, t, path)


def _rescale(guided, pos, phi):
    """CFG rescale (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
    flawed", Sec. 3.4): match the per-example standard deviation of the guided
    prediction to that of the positive one, then blend with weight phi (the paper uses 0.7).
    Standard deviations are taken over all non-batch axes of each example.
    """
    axes = tuple(range(1, guided.ndim))
    std_pos = jnp.std(pos, axis=axes, keepdims=True)
    std_cfg = jnp.std(guided, axis=axes, keepdims=True)
    # A constant guided prediction has no spread to rescale: keep it (factor 1) rather than 0/0.
    ok = std_cfg > 0
    factor = jnp.where(ok, std_pos / jnp.where(ok, std_cfg, 1.0), 1.0)
    return guided * (phi * factor + (1.0 - phi))


def _concat_cond(cond, null_cond):
    """Stack [cond; null_cond] along the batch axis. `null_cond` is a tree prefix of `cond`
    (e.g. one int for an int label array); each of its leaves is broadcast to the shape and
    dtype of the `cond` leaves below it."""

    def per_prefix(null, sub):
        return jax.tree.map(
            lambda c: jnp.concatenate([c, jnp.broadcast_to(jnp.asarray(null, c.dtype), c.shape)], axis=0), sub
        )

    return jax.tree.map(per_prefix, null_cond, cond)


# -- classifier-free guidance -------------------------------------------------------------


class _ClassifierFreeNet(eqx.Module):
    """The network of `classifier_free`: D(null) + w(t) [D(cond) - D(null)] in `model.kind`."""

    model: Model
    w: Any
    null_cond: Any
    interval: Any
    rescale: Any
    space: str | None = eqx.field(static=True)
    rescaled: bool = eqx.field(static=True)

    def __call__(self, x, t, cond=None):
        _check_batched(x, "classifier_free")
        if cond is None:
            raise ValueError("the classifier_free-guided model needs `cond` (the condition to guide towards)")
        model = self.model
        n = jnp.shape(x)[0]
        if self.null_cond is None:
            pos, neg = model(x, t, cond), model(x, t, None)
        else:
            t_arr = jnp.asarray(t)
            t2 = jnp.concatenate([t_arr, t_arr], axis=0) if t_arr.ndim else t_arr
            both = model(jnp.concatenate([x, x], axis=0), t2, _concat_cond(cond, self.null_cond))
            pos, neg = both[:n], both[n:]
        w_t = _gate(self.w, 1.0, t, self.interval)
        return _combine(pos, neg, w_t, model.kind, x, t, model.path, self.rescale, self.rescaled, self.space)


def classifier_free(
    model: Model,
    w,
    *,
    null_cond,
    interval: tuple[float, float] | None = None,
    rescale=0.0,
    space: str | None = None,
) -> Model:
    """Classifier-free guidance (Ho & Salimans 2022) as a model combinator.

    Returns the `jdiff.Model` (same path, same kind as `model`) whose prediction is

        D_w(x, t, c) = D(x, t, null) + w(t) [D(x, t, c) - D(x, t, null)],

    w(t) = w for t in the interval (t_lo, t_hi] and 1 (the conditional model) outside it.

    Args:
        model: a conditional `jdiff.Model` trained with label dropout (see `drop_labels`,
            `with_label_dropout`) so that `null_cond` selects its unconditional branch.
        w: guidance weight; 1 = conditional model, 0 = unconditional, > 1 = stronger
            guidance. A scalar or one weight per example (shape x.shape[:1]); may be traced.
        null_cond: the "no condition" input, a tree prefix of `cond` broadcast to it (for
            integer class labels, the null class index, e.g. `num_classes`). Both branches
            then run as one model call on the doubled batch [x; x] with [cond; null_cond].
            `None` means the model is called a second time with `cond=None` (the
            convention of `GaussianMixture.as_model`).
        interval: `None` (guide at every t) or (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1:
            guide only for t_lo < t <= t_hi (Kynkaenniemi et al. 2024, "Applying guidance in
            a limited interval improves sample and distribution quality"); (0, 0) is no
            guidance.
        rescale: phi of CFG rescale (Lin et al. 2024), in [0, 1]; 0 disables it.
        space: prediction kind in which the branches are combined and rescaled; `None`
            means the model's own output, as in Lin et al. Without rescale every space
            gives the same model (see the module docstring).

    The guided model needs `cond` at every call (the condition to guide towards).
    """
    check_model(model, "model")
    net = _ClassifierFreeNet(
        model,
        w,
        null_cond,
        _check_interval(interval),
        _check_rescale(rescale),
        _check_space(space),
        not _is_zero(rescale),
    )
    return Model(net, model.path, model.kind)


# -- autoguidance ---------------------------------------------------------------------------


class _AutoguidedNet(eqx.Module):
    """The network of `autoguidance`: D_weak + w(t) (D_main - D_weak) in `model.kind`."""

    model: Model
    weak_model: Model
    w: Any
    interval: Any
    rescale: Any
    space: str | None = eqx.field(static=True)
    rescaled: bool = eqx.field(static=True)

    def __call__(self, x, t, cond=None):
        _check_batched(x, "autoguidance")
        model = self.model
        pos = model(x, t, cond)
        neg = self.weak_model.predict(x, t, cond, kind=model.kind)
        w_t = _gate(self.w, 1.0, t, self.interval)
        return _combine(pos, neg, w_t, model.kind, x, t, model.path, self.rescale, self.rescaled, self.space)


def autoguidance(
    model: Model,
    weak_model: Model,
    w,
    *,
    interval: tuple[float, float] | None = None,
    rescale=0.0,
    space: str | None = None,
) -> Model:
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself").

    Returns the `jdiff.Model` (same path, same kind as `model`) whose prediction is

        D_w = D_weak + w(t) (D_main - D_weak),

    with a weaker version of the same model (smaller, or trained for fewer steps) as the
    negative branch; w = 1 is the main model. Both models receive the same `cond`, so this
    guides conditional and unconditional models alike.

    Args:
        model: the main `jdiff.Model`.
        weak_model: the weak `jdiff.Model`, of any kind, on the same kind of path (same class
            as `model.path`); its prediction is converted to `model.kind` before combining.
        w, interval, rescale, space: as in `classifier_free`.
    """
    check_model(model, "model")
    check_model(weak_model, "weak_model")
    if type(weak_model.path) is not type(model.path):
        raise TypeError(
            f"`weak_model` must be on the path of `model` ({type(model.path).__name__}); got a "
            f"{type(weak_model.path).__name__} model"
        )
    net = _AutoguidedNet(
        model,
        weak_model,
        w,
        _check_interval(interval),
        _check_rescale(rescale),
        _check_space(space),
        not _is_zero(rescale),
    )
    return Model(net, model.path, model.kind)


# -- classifier guidance --------------------------------------------------------------------


class _ClassifierGuidedNet(eqx.Module):
    """The network of `classifier_guidance`: score + scale(t) grad_x log p_t(cond | x), in `model.kind`."""

    model: Model
    log_prob_fn: Any
    scale: Any
    interval: Any

    def __call__(self, x, t, cond=None):
        _check_batched(x, "classifier_guidance")
        if cond is None:
            raise ValueError(
                "the classifier_guidance-guided model needs `cond` (the class to guide towards, passed "
                "to `log_prob_fn(x, t, cond)`); got cond=None"
            )
        model, path, kind = self.model, self.model.path, self.model.kind
        x = model.state(x)
        pred = model(x, t, cond)
        grad = jax.grad(lambda x_: jnp.sum(_check_log_prob(self.log_prob_fn(x_, t, cond), x_)))(x)
        score = predictions.convert(pred, kind, "score", x, t, path)
        scale_t = expand_to(_gate(self.scale, 0.0, t, self.interval), x, "scale")
        guided = predictions.convert(score + scale_t * grad, "score", kind, x, t, path)
        # A score shift d moves x0_hat by sigma^2 / alpha * d: infinite where alpha = 0 (pure
        # noise, e.g. t = 1 on the rectified-flow path). Where the scale is 0 (outside the
        # interval) return the model's own prediction, so that case stays finite.
        return jnp.where(scale_t == 0, pred, guided)


def classifier_guidance(
    model: Model,
    log_prob_fn: Callable,
    scale,
    *,
    interval: tuple[float, float] | None = None,
) -> Model:
    """Classifier guidance (Sohl-Dickstein et al. 2015; Dhariwal & Nichol 2021).

    Returns the `jdiff.Model` (same path, same kind as `model`) whose score is

        score(x, t) + scale(t) * grad_x log p_t(cond | x),

    the score of p_t(x) p_t(c | x)^scale. With scale = 1, an unconditional model and the
    exact noisy class posterior this is exactly the class-conditional score
    grad log p_t(x | c), so sampling draws from p_0(x | c).

    Args:
        model: a `jdiff.Model`; its network receives `cond` unchanged (bind an
            unconditional network as `jdiff.Model(lambda x, t, c: net(x, t, None), path, kind)`).
        log_prob_fn: `log_prob_fn(x, t, cond) -> (batch,)`, log p_t(cond | x) of each
            example under a classifier trained on noisy data (`noisy_classifier_loss`,
            `classifier_log_prob`). Examples must be independent: the gradient is taken of
            the batch sum.
        scale: guidance scale (a scalar or one per example; may be traced). 0 = no guidance.
        interval: as in `classifier_free`; outside it the scale is 0 (and the guided model is
            `model` exactly, finite even where alpha = 0).
    """
    check_model(model, "model")
    if not callable(log_prob_fn):
        raise TypeError(
            f"`log_prob_fn` must be a callable log_prob_fn(x, t, cond) -> (batch,) log p_t(cond | x); "
            f"got {type(log_prob_fn).__name__}"
        )
    net = _ClassifierGuidedNet(model, _as_pytree_net(log_prob_fn), scale, _check_interval(interval))
    return Model(net, model.path, model.kind)


def _check_log_prob(logp, x):
    if jnp.shape(logp) != jnp.shape(x)[:1]:
        raise ValueError(
            f"`log_prob_fn` must return one log-probability per example, shape {jnp.shape(x)[:1]}; got "
            f"shape {jnp.shape(logp)}"
        )
    return logp


def _class_log_prob(logits, cond, name="cond"):
    """log softmax(logits)[cond] per example, with `cond` checked against the logits' classes."""
    if cond is None:
        raise ValueError(f"`{name}` is required: the class labels (int array (batch,)) whose log-probability to take")
    b, k = jnp.shape(logits)[0], jnp.shape(logits)[-1]
    cond = jnp.asarray(cond)
    if cond.shape != (b,):
        raise ValueError(f"`{name}` must be one class label per example, shape ({b},); got shape {cond.shape}")
    cond = check_labels(cond, k, name, what=f" (the classifier has {k} classes)")
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, cond[:, None], axis=-1)[:, 0]


class _ClassifierLogProb(eqx.Module):
    """log softmax(logits_fn(x, t))[cond], the `log_prob_fn` of `classifier_log_prob`."""

    logits_fn: Any

    def __call__(self, x, t, cond):
        return _class_log_prob(self.logits_fn(x, t), cond)


def classifier_log_prob(logits_fn: Callable) -> Callable:
    """Turn a noisy classifier `logits_fn(x, t) -> (batch, num_classes)` into the
    `log_prob_fn(x, t, cond) -> (batch,)` = log softmax(logits)[cond] that
    `classifier_guidance` expects; `cond` is an int array of shape (batch,).
    (A pytree: an nnx or equinox classifier stays a pytree child.)"""
    if not callable(logits_fn):
        raise TypeError(
            f"`logits_fn` must be a callable logits_fn(x, t) -> (batch, num_classes); got {type(logits_fn).__name__}"
        )
    return _ClassifierLogProb(_as_pytree_net(logits_fn))


def noisy_classifier_loss(logits_fn: Callable, path: AbstractPath, key, x0, *, cond, t=None):
    """Per-example cross-entropy of a time-dependent classifier on noisy data.

    The classifier sees x_t ~ p(x_t | x0) = N(alpha(t) x0, sigma(t)^2 I) with t uniform on
    [path.t_min, path.t_max] (or the given t), so at its optimum softmax(logits_fn(x_t, t))
    is the noisy class posterior p_t(c | x_t) that classifier guidance needs.

    Args:
        logits_fn: `logits_fn(x_t, t) -> (batch, num_classes)`, t of shape (batch,).
        path: the Gaussian path.
        key: PRNG key (split for t and the noise).
        x0: clean data (batch, ...).
        cond: int class labels (batch,) of x0.
        t: optional times (batch,); sampled uniformly when None.

    Returns:
        (batch,) unreduced cross-entropy -log softmax(logits)[label].
    """
    if not isinstance(path, AbstractPath):
        raise TypeError(f"`path` must be a jdiff path (an AbstractPath); got {type(path).__name__}")
    if cond is None:
        raise ValueError("noisy_classifier_loss needs the class labels `cond` (int array (batch,))")
    check_key(key)
    x0 = check_batched(as_state(x0, name="x0"), "x0")
    k_t, k_x = jax.random.split(key)
    n = jnp.shape(x0)[0]
    if t is None:
        t = jax.random.uniform(k_t, (n,), x0.dtype, path.t_min, path.t_max)
    else:
        t = jnp.broadcast_to(jnp.asarray(check_times_in_range(check_time_shape(t, n), path), x0.dtype), (n,))
    x_t, _ = path.marginal(k_x, x0, t)
    return -_class_log_prob(logits_fn(x_t, t), cond)


# -- conditional training -------------------------------------------------------------------


def _check_probability(p):
    if isinstance(p, (int, float)) and not 0 <= p <= 1:
        raise ValueError(f"`p` must be a probability in [0, 1]; got {p}")


def drop_labels(key, labels, p, null_class):
    """Label dropout for classifier-free guidance training (Ho & Salimans 2022).

    Replace each label independently with probability `p` by `null_class` (for class
    embeddings with num_classes + 1 rows, `null_class = num_classes`), so that one network
    learns both the conditional and the unconditional model. Ho & Salimans use p in
    {0.1, 0.2}. Returns an array of the same shape and dtype as `labels`.
    """
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"`labels` must be integer class labels; got dtype {labels.dtype}")
    _check_probability(p)
    drop = jax.random.bernoulli(check_key(key), p, labels.shape)
    return jnp.where(drop, jnp.asarray(null_class, labels.dtype), labels)


def with_label_dropout(loss: Callable, p, null_class) -> Callable:
    """Conditional training for classifier-free guidance with any jdiff loss.

    Wraps `loss(model, key, x0, *, cond, **kw) -> (batch,)` (e.g. `jdiff.losses.cfm_loss`,
    `dsm_loss`, `edm_loss`) into `wrapped(model, key, x0, *, cond, **kw)`, which first replaces
    each label of `cond` by `null_class` with probability `p` (`drop_labels`, with its own key
    split from `key`) and then calls `loss` with the other key; keyword options go to `loss`.

    Args:
        loss: the per-example loss to train with.
        p: the dropout probability, in [0, 1] (Ho & Salimans use 0.1 or 0.2).
        null_class: the label of the unconditional branch (e.g. `num_classes`), the
            `null_cond` of `classifier_free` at sampling time.
    """
    if not callable(loss):
        raise TypeError(f"`loss` must be a jdiff loss loss(model, key, x0, *, cond, ...); got {type(loss).__name__}")
    _check_probability(p)

    def wrapped(model, key, x0, *, cond, **kwargs):
        if cond is None:
            raise ValueError("with_label_dropout needs the class labels `cond` (int array (batch,))")
        k_drop, k_loss = jax.random.split(key)
        return loss(model, k_loss, x0, cond=drop_labels(k_drop, cond, p, null_class), **kwargs)

    return wrapped
