"""Guidance as model combinators: functions from models to a model.

Every function here takes one or more models `model(x, t, cond) -> prediction` (see
`jdiff.predictions`) and returns a new model of the same kind and the same signature, so a
guided model goes through every sampler in `jdiff.samplers` (fixed-step and diffrax)
unchanged. Nothing here branches on traced values: the guidance interval is a `jnp.where`
on t, and the guidance weight may be a traced scalar or one weight per example (a new
weight does not recompile).

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

import jax
import jax.numpy as jnp

from jdiff import predictions
from jdiff.paths import AbstractPath, expand_to

__all__ = [
    "classifier_free",
    "autoguidance",
    "classifier_guidance",
    "classifier_log_prob",
    "noisy_classifier_loss",
    "drop_labels",
    "with_label_dropout",
    "label_dropout_loss",
]


# -- shared pieces ------------------------------------------------------------------------


def _check_interval(interval):
    if interval is None:
        return None
    if not isinstance(interval, Sequence) or len(interval) != 2:
        raise ValueError(
            f"`interval` must be None or a pair (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1; got {interval!r}"
        )
    return interval


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


def _combine(pos, neg, w, kind, x, t, path, rescale, space):
    """neg + w (pos - neg) in prediction space `space`, with optional CFG rescale; returns `kind`.

    `w` is a scalar or has shape x.shape[:1]; `rescale` is phi of Lin et al. (2024).
    """
    to = kind if space is None else space
    pos_s = predictions.convert(pos, kind, to, x, t, path)
    neg_s = predictions.convert(neg, kind, to, x, t, path)
    guided = neg_s + expand_to(w, x, "w") * (pos_s - neg_s)
    if not (isinstance(rescale, (int, float)) and rescale == 0):
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


def classifier_free(
    model: Callable,
    kind: str,
    path: AbstractPath,
    w,
    *,
    null_cond,
    interval: tuple[float, float] | None = None,
    rescale=0.0,
    space: str | None = None,
) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022) as a model combinator.

    Returns `guided(x, t, cond)` predicting `kind`:

        D_w(x, t, c) = D(x, t, null) + w(t) [D(x, t, c) - D(x, t, null)],

    w(t) = w for t in the interval (t_lo, t_hi] and 1 (the conditional model) outside it.

    Args:
        model: `model(x, t, cond)`, a conditional model trained with label dropout (see
            `drop_labels`) so that `null_cond` selects its unconditional branch.
        kind: the prediction kind of `model` (and of the guided model).
        path: the Gaussian path the model was trained on (used to change spaces).
        w: guidance weight; 1 = conditional model, 0 = unconditional, > 1 = stronger
            guidance. A scalar or one weight per example (shape x.shape[:1]); may be traced.
        null_cond: the "no condition" input, a tree prefix of `cond` broadcast to it (for
            integer class labels, the null class index, e.g. `num_classes`). Both branches
            then run as one model call on the doubled batch [x; x] with [cond; null_cond].
            `None` means the model is called a second time with `cond=None` (the
            convention of `GaussianMixture.as_model`).
        interval: `None` (guide at every t) or (t_lo, t_hi): guide only for t_lo < t <= t_hi
            (Kynkaenniemi et al. 2024, "Applying guidance in a limited interval improves
            sample and distribution quality"); (0, 0) is no guidance.
        rescale: phi of CFG rescale (Lin et al. 2024); 0 disables it.
        space: prediction kind in which the branches are combined and rescaled; `None`
            means the model's own output, as in Lin et al. Without rescale every space
            gives the same model (see the module docstring).
    """
    predictions.check_kind(kind)
    if space is not None:
        predictions.check_kind(space, "space")
    interval = _check_interval(interval)

    def guided(x, t, cond=None):
        _check_batched(x, "classifier_free")
        if cond is None:
            raise ValueError("the classifier_free-guided model needs `cond` (the condition to guide towards)")
        n = jnp.shape(x)[0]
        if null_cond is None:
            pos, neg = model(x, t, cond), model(x, t, None)
        else:
            t_arr = jnp.asarray(t)
            t2 = jnp.concatenate([t_arr, t_arr], axis=0) if t_arr.ndim else t_arr
            both = model(jnp.concatenate([x, x], axis=0), t2, _concat_cond(cond, null_cond))
            pos, neg = both[:n], both[n:]
        w_t = _gate(w, 1.0, t, interval)
        return _combine(pos, neg, w_t, kind, x, t, path, rescale, space)

    return guided


# -- autoguidance ---------------------------------------------------------------------------


def autoguidance(
    model: Callable,
    weak_model: Callable,
    kind: str,
    path: AbstractPath,
    w,
    *,
    weak_kind: str | None = None,
    interval: tuple[float, float] | None = None,
    rescale=0.0,
    space: str | None = None,
) -> Callable:
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself").

    Returns `guided(x, t, cond)` predicting `kind`:

        D_w = D_weak + w(t) (D_main - D_weak),

    with a weaker version of the same model (smaller, or trained for fewer steps) as the
    negative branch; w = 1 is the main model. Both models receive the same `cond`, so this
    guides conditional and unconditional models alike.

    Args:
        model: the main model, predicting `kind`.
        weak_model: the weak model, predicting `weak_kind` (default `kind`); it is converted
            to `kind` before combining.
        kind, path, w, interval, rescale, space: as in `classifier_free`.
    """
    predictions.check_kind(kind)
    weak_kind = kind if weak_kind is None else predictions.check_kind(weak_kind, "weak_kind")
    if space is not None:
        predictions.check_kind(space, "space")
    interval = _check_interval(interval)

    def guided(x, t, cond=None):
        _check_batched(x, "autoguidance")
        pos = model(x, t, cond)
        neg = predictions.convert(weak_model(x, t, cond), weak_kind, kind, x, t, path)
        w_t = _gate(w, 1.0, t, interval)
        return _combine(pos, neg, w_t, kind, x, t, path, rescale, space)

    return guided


# -- classifier guidance --------------------------------------------------------------------


def classifier_guidance(
    model: Callable,
    kind: str,
    path: AbstractPath,
    log_prob_fn: Callable,
    scale,
    *,
    interval: tuple[float, float] | None = None,
) -> Callable:
    """Classifier guidance (Sohl-Dickstein et al. 2015; Dhariwal & Nichol 2021).

    Returns `guided(x, t, cond)` predicting `kind` whose score is

        score(x, t) + scale(t) * grad_x log p_t(cond | x),

    the score of p_t(x) p_t(c | x)^scale. With scale = 1, an unconditional model and the
    exact noisy class posterior this is exactly the class-conditional score
    grad log p_t(x | c), so sampling draws from p_0(x | c).

    Args:
        model: `model(x, t, cond)` predicting `kind`; it receives `cond` unchanged (wrap an
            unconditional network as `lambda x, t, c: net(x, t, None)`).
        kind: the prediction kind of `model` (and of the guided model).
        path: the Gaussian path (the score is reached through `jdiff.predictions`).
        log_prob_fn: `log_prob_fn(x, t, cond) -> (batch,)`, log p_t(cond | x) of each
            example under a classifier trained on noisy data (`noisy_classifier_loss`,
            `classifier_log_prob`). Examples must be independent: the gradient is taken of
            the batch sum.
        scale: guidance scale (a scalar or one per example; may be traced). 0 = no guidance.
        interval: as in `classifier_free`; outside it the scale is 0.
    """
    predictions.check_kind(kind)
    interval = _check_interval(interval)

    def guided(x, t, cond=None):
        _check_batched(x, "classifier_guidance")
        pred = model(x, t, cond)
        grad = jax.grad(lambda x_: jnp.sum(log_prob_fn(x_, t, cond)))(x)
        score = predictions.convert(pred, kind, "score", x, t, path)
        scale_t = expand_to(_gate(scale, 0.0, t, interval), x, "scale")
        guided = predictions.convert(score + scale_t * grad, "score", kind, x, t, path)
        # A score shift d moves x0_hat by sigma^2 / alpha * d: infinite where alpha = 0 (pure
        # noise, e.g. t = 1 on the rectified-flow path). Where the scale is 0 (outside the
        # interval) return the model's own prediction, so that case stays finite.
        return jnp.where(scale_t == 0, pred, guided)

    return guided


def classifier_log_prob(logits_fn: Callable) -> Callable:
    """Turn a noisy classifier `logits_fn(x, t) -> (batch, num_classes)` into the
    `log_prob_fn(x, t, cond) -> (batch,)` = log softmax(logits)[cond] that
    `classifier_guidance` expects; `cond` is an int array of shape (batch,)."""

    def log_prob_fn(x, t, cond):
        logp = jax.nn.log_softmax(logits_fn(x, t), axis=-1)
        return jnp.take_along_axis(logp, jnp.asarray(cond)[:, None], axis=-1)[:, 0]

    return log_prob_fn


def noisy_classifier_loss(logits_fn: Callable, path: AbstractPath, key, x0, labels, t=None):
    """Per-example cross-entropy of a time-dependent classifier on noisy data.

    The classifier sees x_t ~ p(x_t | x0) = N(alpha(t) x0, sigma(t)^2 I) with t uniform on
    [path.t_min, path.t_max] (or the given t), so at its optimum softmax(logits_fn(x_t, t))
    is the noisy class posterior p_t(c | x_t) that classifier guidance needs.

    Args:
        logits_fn: `logits_fn(x_t, t) -> (batch, num_classes)`, t of shape (batch,).
        path: the Gaussian path.
        key: PRNG key (split for t and the noise).
        x0: clean data (batch, ...).
        labels: int class labels (batch,).
        t: optional times (batch,); sampled uniformly when None.

    Returns:
        (batch,) unreduced cross-entropy -log softmax(logits)[label].
    """
    k_t, k_x = jax.random.split(key)
    n = jnp.shape(x0)[0]
    if t is None:
        t = jax.random.uniform(k_t, (n,), jnp.result_type(x0), path.t_min, path.t_max)
    x_t, _ = path.marginal(k_x, x0, t)
    logp = jax.nn.log_softmax(logits_fn(x_t, t), axis=-1)
    return -jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], axis=-1)[:, 0]


# -- conditional training -------------------------------------------------------------------


def drop_labels(key, labels, p, null_class):
    """Label dropout for classifier-free guidance training (Ho & Salimans 2022).

    Replace each label independently with probability `p` by `null_class` (for class
    embeddings with num_classes + 1 rows, `null_class = num_classes`), so that one network
    learns both the conditional and the unconditional model. Ho & Salimans use p in
    {0.1, 0.2}. Returns an array of the same shape and dtype as `labels`.
    """
    labels = jnp.asarray(labels)
    drop = jax.random.bernoulli(key, p, labels.shape)
    return jnp.where(drop, jnp.asarray(null_class, labels.dtype), labels)


def with_label_dropout(loss: Callable, p, null_class) -> Callable:
    """Wrap a jdiff loss `loss(model, path, key, x0, cond, **kw) -> (batch,)` so that each
    call first applies `drop_labels(.., p, null_class)` to `cond` (with its own key, split
    from `key`): conditional training for classifier-free guidance with any loss.
    """

    def wrapped(model, path, key, x0, cond=None, **kwargs):
        if cond is None:
            raise ValueError("with_label_dropout needs the class labels `cond` (int array (batch,))")
        k_drop, k_loss = jax.random.split(key)
        return loss(model, path, k_loss, x0, drop_labels(k_drop, cond, p, null_class), **kwargs)

    return wrapped


def label_dropout_loss(
    model, path: AbstractPath, key, x0, cond=None, *, p, null_class, loss: str = "cfm_loss", **kwargs
):
    """`with_label_dropout` for configs, which name losses rather than build them:
    the loss `loss` of `jdiff.losses` (e.g. "cfm_loss", "dsm_loss") trained on labels dropped
    to `null_class` with probability `p`. Extra keyword arguments go to that loss.

    experiments: loss.name = "guidance.label_dropout_loss",
                 loss.kwargs = dict(loss="cfm_loss", p=0.1, null_class=num_classes).
    """
    from jdiff import losses  # here, so that guidance does not import the losses otherwise

    if loss not in losses.__all__ or not loss.endswith("_loss"):
        accepted = ", ".join(n for n in losses.__all__ if n.endswith("_loss"))
        raise ValueError(f"unknown loss {loss!r} for `loss`; accepted: {accepted}")
    return with_label_dropout(getattr(losses, loss), p, null_class)(model, path, key, x0, cond, **kwargs)
