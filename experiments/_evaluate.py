"""The library part of `python -m experiments.evaluate`: held-out NLL in bits/dim (the ODE
likelihood and the bounds) and sample metrics of a trained workdir, as functions (re-exported by
experiments._lib for Colab, tests and benchmarks). The program module keeps only its flags and
main: programs define absl flags at import, and two of them imported into one process would
define --workdir twice.

Units, held-out data and metrics: see the docstring of experiments/evaluate.py.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import _names, _workdir
from experiments._config import ConfigError, Spec, check_flag
from experiments._data import holdout_fraction, load_all, load_heldout
from experiments._latent import LatentRecipe
from experiments._recipes import DiffusionRecipe
from jdiff import data, latent, likelihood, metrics

DIGIT_SETS = ("digits", "mnist5k")


DEFAULT_HOLDOUT = 0.1  # scored split of a workdir trained on the whole image set


def heldout_data(config, num_examples: int, holdout: float | None = None):
    """(x, label, description, held_out_from_training): fresh toy samples; the image split that
    training left out (config.data.holdout, when `holdout` is None or equal to it); otherwise
    `holdout_split(holdout or 0.1, config.seed)` of the whole set, which training saw."""
    name = config.data.name
    if name in _names.TOY_SETS:
        n = max(num_examples, 2)
        ds = _names.get_dataset(name, n=n, seed=config.seed + 10_007)  # a seed training never uses
        return np.asarray(ds.x), np.asarray(ds.label), "fresh toy samples", True
    trained_without = holdout_fraction(config)
    if trained_without > 0 and holdout in (None, trained_without):
        held = load_heldout(config)
        return held.x, held.label, f"config.data.holdout={trained_without}, seed={config.seed}", True
    frac = holdout or DEFAULT_HOLDOUT
    ds = load_all(config)
    _, held = data.holdout_split(ds, frac, seed=config.seed)
    return held["x"], held.get("label"), f"holdout_split({frac}, seed={config.seed}) of the training data", False


def grey_level(x) -> float | None:
    """The spacing h of quantized image data in [-1, 1] (None for continuous data)."""
    if x.ndim != 4:
        return None
    levels = np.unique(np.round(np.asarray(x, np.float64), 6))
    h = float(np.min(np.diff(levels))) if levels.size > 1 else 2.0
    return 2.0 / round(2.0 / h)  # snap to 2 / (num_levels - 1)


def _batches(n, size):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def nll_bits_per_dim(
    make_model, params, x, label, key, *, bin_width, divergence, rtol, vlb_steps, elbo_time_samples, batch_size
):
    """Per-example bits/dim of the ODE likelihood, the DDPM bound and the VDM ELBO.

    make_model(params) -> jdiff.Model rebuilds the model inside the jitted functions, so the
    weights are arguments of the compiled programs rather than baked-in constants.
    divergence: None (the exact trace) or a `jdiff.likelihood.Hutchinson` estimator.
    """
    dim = x.shape[1:]
    out = {"ode": [], "ode_nfe": [], "vlb": [], "elbo": []}
    num_bins = None if bin_width is None else round(2.0 / bin_width) + 1

    @jax.jit
    def ode(params, xb, cb, k):
        model = make_model(params)
        if bin_width is not None:  # centred uniform dequantization of the grey levels
            levels = jnp.round((xb + 1.0) / bin_width)
            xb = likelihood.dequantize(k, levels, bin_width=bin_width, low=-1.0 - 0.5 * bin_width, dtype=xb.dtype)
        ll = likelihood.ode_log_likelihood_batch(
            model, xb, cond=cb, key=jax.random.fold_in(k, 1), divergence=divergence, rtol=rtol, atol=rtol
        )
        bits = (
            likelihood.nats_to_bits_per_dim(-ll.log_prob, dim)
            if bin_width is None
            else likelihood.bits_per_dim(ll.log_prob, dim, bin_width=bin_width)
        )
        return bits, ll.nfe

    @jax.jit
    def bounds(params, xb, cb, k):
        model = make_model(params)
        k1, k2 = jax.random.split(k)
        vlb = (
            likelihood.vlb_bits_per_dim(
                model, k1, xb, cond=cb, num_steps=vlb_steps, num_bins=num_bins, bin_width=bin_width or 1.0
            ).total
            if vlb_steps
            else jnp.zeros(xb.shape[0])
        )
        elbo = (
            likelihood.elbo_bits_per_dim(
                model,
                k2,
                xb,
                cond=cb,
                num_time_samples=elbo_time_samples,
                num_bins=num_bins,
                bin_width=bin_width or 1.0,
            ).total
            if elbo_time_samples
            else jnp.zeros(xb.shape[0])
        )
        return vlb, elbo  # continuous data: bin_width 1 makes the density offset log2(1) = 0

    for i, (a, b) in enumerate(_batches(x.shape[0], batch_size)):
        xb = jnp.asarray(x[a:b], jnp.float32)
        cb = None if label is None else jnp.asarray(label[a:b])
        k = jax.random.fold_in(key, i)
        bits, nfe = ode(params, xb, cb, k)
        out["ode"].append(np.asarray(bits))
        out["ode_nfe"].append(np.asarray(nfe))
        if vlb_steps or elbo_time_samples:
            vlb, elbo = bounds(params, xb, cb, jax.random.fold_in(k, 2))
            out["vlb"].append(np.asarray(vlb))
            out["elbo"].append(np.asarray(elbo))
    return {k: np.concatenate(v) for k, v in out.items() if v}


def sample_metrics(config, samples, heldout, key, labels=None):
    """Sample-quality metrics of `samples` against held-out data (flattened arrays)."""
    res = {}
    n = min(samples.shape[0], heldout.shape[0])
    s, h = jnp.asarray(samples[:n], jnp.float32), jnp.asarray(heldout[:n], jnp.float32)
    res["frechet_pixels"] = metrics.frechet_distance(s, h)
    if samples.ndim == 2:  # low-dimensional sets
        res["sliced_wasserstein"] = float(metrics.sliced_wasserstein(key, s, h))
        res["mmd_rbf"] = float(metrics.mmd(s, h, bandwidth=(0.1, 0.5, 1.0)))
        res["energy_distance"] = float(metrics.energy_distance(s, h))
        pr = metrics.precision_recall(h, s)
        res["precision"], res["recall"] = float(pr.precision), float(pr.recall)
    elif config.data.name in DIGIT_SETS:
        clf, acc = metrics.train_digit_classifier(
            config.seed, dataset=config.data.name, steps=600 if config.data.name == "digits" else 2000
        )
        res["classifier_heldout_accuracy"] = acc
        res["frechet_digit_distance"] = metrics.frechet_digit_distance(clf, s, h)
        pr = metrics.precision_recall(h, s, feature_fn=clf.features)
        res["precision"], res["recall"] = float(pr.precision), float(pr.recall)
        if labels is not None:
            res["classifier_accuracy_on_samples"] = float(metrics.classifier_accuracy(clf, s, labels[:n]))
    return res


def latent_nll(recipe, make_model, params, x, label, key, *, divergence, rtol, batch_size) -> dict:
    """Per-example latent likelihood of images x under a latent workdir's model: log p(z) in nats
    of z = E(x) (the autoencoder's normalized posterior mode) and bits per latent dimension, and
    the NFE. Not a pixel bits/dim (see `jdiff.latent.LATENT_LIKELIHOOD_NOTE`)."""
    ae_graphdef, ae_state = nnx.split(recipe.autoencoder)

    @jax.jit
    def one(params, ae_state, xb, cb, k):
        lm = latent.LatentModel.from_autoencoder(
            make_model(params), nnx.merge(ae_graphdef, ae_state), recipe.image_shape
        )
        ll = latent.latent_log_likelihood(lm, xb, cond=cb, key=k, divergence=divergence, rtol=rtol, atol=rtol)
        return ll.log_prob, ll.bits_per_latent_dim, ll.nfe

    out = {"nats": [], "bits": [], "nfe": []}
    for i, (a, b) in enumerate(_batches(x.shape[0], batch_size)):
        cb = None if label is None else jnp.asarray(label[a:b])
        lp, bits, nfe = one(params, ae_state, jnp.asarray(x[a:b], jnp.float32), cb, jax.random.fold_in(key, i))
        out["nats"].append(-np.asarray(lp))
        out["bits"].append(np.asarray(bits))
        out["nfe"].append(np.asarray(nfe))
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate(
    workdir: str,
    *,
    num_examples=256,
    num_samples=1000,
    holdout=None,
    batch_size=64,
    divergence=None,
    num_probes=1,
    rtol=1e-5,
    vlb_steps=1000,
    elbo_time_samples=16,
    seed=0,
    out=None,
) -> dict:
    """Evaluate the latest checkpoint of `workdir`; writes and returns the results dict.

    divergence: "exact" or "hutchinson" (experiments._names.DIVERGENCES; default exact up to
    100 dimensions, else Hutchinson with `num_probes` probes).
    """
    _check_arguments(
        num_examples=num_examples,
        num_samples=num_samples,
        holdout=holdout,
        batch_size=batch_size,
        num_probes=num_probes,
        rtol=rtol,
        vlb_steps=vlb_steps,
        elbo_time_samples=elbo_time_samples,
    )
    if divergence is not None and divergence not in _names.DIVERGENCES:
        raise ConfigError(f"--divergence: unknown estimator {divergence!r}; accepted: {', '.join(_names.DIVERGENCES)}")
    if out is not None:
        _workdir.check_output(out, "--out")
    config, recipe, ema = _workdir.restore(workdir)

    def make_model(params):
        net = nnx.merge(ema.graphdef, *params, copy=True)
        net.eval()  # dropout off
        return recipe.bind(net)

    x, label, heldout, from_training = heldout_data(config, num_examples, holdout)
    x, label = x[:num_examples], (None if label is None or not config.data.cond else label[:num_examples])
    key = jax.random.PRNGKey(seed)
    h = grey_level(x)
    requested = divergence
    if divergence is None:  # exact trace up to 100 dimensions (D jvps per evaluation), else Hutchinson
        divergence = "exact" if math.prod(x.shape[1:]) <= 100 else "hutchinson"
    res = {
        "workdir": os.path.abspath(workdir),
        "step": ema.step,
        "data": config.data.name,
        "path": config.path.name,
        "heldout": heldout,
        "heldout_from_training": from_training,
    }
    t0 = time.perf_counter()
    if isinstance(recipe, LatentRecipe) and isinstance(recipe.inner, DiffusionRecipe):
        # the default estimator follows the latent's dimension (the trace is over it), not the images'
        divergence = requested or ("exact" if math.prod(recipe.latent_shape) <= 100 else "hutchinson")
        estimator = _names.get_divergence(
            divergence, **({"num_probes": num_probes} if divergence == "hutchinson" else {})
        )
        nll = latent_nll(
            recipe,
            make_model,
            (ema.params, ema.rest),
            x,
            label,
            jax.random.fold_in(key, 0),
            divergence=estimator,
            rtol=rtol,
            batch_size=batch_size,
        )
        res.update(
            {
                "num_examples": int(x.shape[0]),
                "latent_shape": list(recipe.latent_shape),
                "divergence": divergence,
                "num_probes": num_probes if divergence == "hutchinson" else None,
                "rtol": rtol,
                "latent_nll_nats": float(np.mean(nll["nats"])),
                "latent_bits_per_latent_dim": float(np.mean(nll["bits"])),
                "latent_bits_per_latent_dim_se": (
                    float(np.std(nll["bits"], ddof=1) / math.sqrt(nll["bits"].size)) if nll["bits"].size > 1 else None
                ),
                "ode_nfe": float(np.mean(nll["nfe"])),
                "likelihood_note": latent.LATENT_LIKELIHOOD_NOTE,
            }
        )
        res["likelihood_seconds"] = time.perf_counter() - t0
    elif not isinstance(recipe, DiffusionRecipe):  # a flow map has no PF-ODE density or diffusion bound
        res["likelihood"] = "none: a flow map defines no density"
    else:
        res.update(
            {
                "num_examples": int(x.shape[0]),
                "grey_level": h,
                "continuous_data": h is None,
                "divergence": divergence,
                "num_probes": num_probes if divergence == "hutchinson" else None,
                "rtol": rtol,
                "vlb_steps": vlb_steps,
                "elbo_time_samples": elbo_time_samples,
            }
        )
        estimator = _names.get_divergence(
            divergence, **({"num_probes": num_probes} if divergence == "hutchinson" else {})
        )
        nll = nll_bits_per_dim(
            make_model,
            (ema.params, ema.rest),
            x,
            label,
            jax.random.fold_in(key, 0),
            bin_width=h,
            divergence=estimator,
            rtol=rtol,
            vlb_steps=vlb_steps,
            elbo_time_samples=elbo_time_samples,
            batch_size=batch_size,
        )
        for name, v in nll.items():
            res[f"{name}_bpd" if name != "ode_nfe" else "ode_nfe"] = float(np.mean(v))
            if name != "ode_nfe":
                res[f"{name}_bpd_se"] = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else None
        res["likelihood_seconds"] = time.perf_counter() - t0
    if num_samples:
        x_all, _, _, _ = heldout_data(config, num_samples, holdout)
        sampler = recipe.make_sampler(ema.graphdef, (num_samples, *config.data.shape))
        samples = np.asarray(jax.device_get(sampler(ema.params, ema.rest, jax.random.fold_in(key, 1))))
        labels = recipe.labels(num_samples)
        labels = None if labels is None else np.asarray(labels)
        res.update(sample_metrics(config, samples, x_all, jax.random.fold_in(key, 2), labels))
        res["num_samples"] = num_samples
    out = out or os.path.join(os.path.abspath(workdir), "eval", f"step_{ema.step:07d}.json")
    _workdir.atomic_write(out, json.dumps(res, indent=2))
    res["json"] = out
    return res


_ARGUMENTS = {
    "num_examples": Spec("int", 1),
    "num_samples": Spec("int", 0),
    "batch_size": Spec("int", 1),
    "num_probes": Spec("int", 1),
    "vlb_steps": Spec("int", 0),
    "elbo_time_samples": Spec("int", 0),
    "rtol": Spec("float", 0.0, lo_open=True),
    "holdout": Spec("float", 0.0, 1.0, lo_open=True, hi_open=True, none="config.data.holdout, else 0.1"),
}


def _check_arguments(**values) -> None:
    """Each argument in its range (one-line ConfigError naming the flag otherwise)."""
    for name, value in values.items():
        check_flag(f"--{name}", value, _ARGUMENTS[name])


def format_table(res: dict) -> str:
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in res.items()]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)
