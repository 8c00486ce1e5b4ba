"""Evaluate a trained workdir: held-out NLL in bits/dim (ODE likelihood and the bounds), sample metrics.

    python -m experiments.evaluate --workdir=/tmp/digits_vp
    python -m experiments.evaluate --workdir=runs/toy2d_fm --num_examples=512 --num_samples=4096
    python -m experiments.evaluate --workdir=/tmp/digits_vp --divergence=hutchinson --num_probes=4
    python -m experiments.evaluate --workdir=runs/cifar10 --metric=fid --num_samples=50000 --ref=stats.npz \\
        --inception=pt_inception-2015-12-05.npz [--dinov2=dinov2_vitl14.npz --ref_dinov2=dino_stats.npz]

--metric=fid computes FID, Inception Score and FD-DINOv2 over --num_samples samples generated and
featurized on every device and process, reports NFE and wall time, and resumes an interrupted
run from its last finished shard (experiments/_sample_eval.py, docs/evaluation.md).

Writes <workdir>/eval/step_<step>.json (or --out) and prints it as a table. Everything is
computed with the EMA weights of the latest checkpoint. The likelihoods need a diffusion
model (a jdiff.Model); a flow-map workdir gets the sample metrics only.

Held-out data. Toy 2-D sets are sampled afresh (a seed the training set never used), so
they are truly held out. Image sets use the split training left out: config.data.holdout > 0
made experiments.train train on the complement of `jdiff.data.holdout_split(holdout,
config.seed)`, and evaluation scores exactly that split. A workdir trained on everything
(holdout 0), or a --holdout other than the config's, is scored on a split of the whole set
that training saw; the JSON's `heldout_from_training` says which case it was.

Units. Image data are integer grey levels k (spacing h in [-1, 1] units, found from the
data: 1/8 for the 8x8 digits, 2/255 for MNIST / CIFAR). The ODE likelihood is of centred,
dequantized data x = x_k + (u - 1/2) h, converted with the scaling offset -log2 h
(`jdiff.likelihood.bits_per_dim`); the DDPM bound and VDM ELBO use a decoder discretized
to the same levels (num_bins = 2 / h + 1) and need no offset. Toy data are continuous: their
"bits/dim" is -log p / (D ln 2) of a density (it can be negative).

Sample metrics against held-out data: for images, the Frechet digit distance and k-NN
precision / recall in the features of `jdiff.metrics.train_digit_classifier` (digits,
mnist5k), the classifier's accuracy on class-conditional samples, and pixel-space Frechet
distance; for 2-D sets, sliced Wasserstein, MMD, energy distance, Frechet distance and
precision / recall.

Every flag, the workdir and its config are checked before anything is computed or written; a
bad one fails with one line and exit code 2. The JSON is written atomically.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from experiments import _lib, _names, _sample_eval, _workdir
from experiments._config import Spec, check_flag
from jdiff import data, likelihood, metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "A directory written by experiments.train.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 256, "Held-out examples for the likelihoods.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Generated samples for the sample metrics (0: skip).")
_HOLDOUT = flags.DEFINE_float("holdout", None, "Fraction of an image set to score (jdiff.data.holdout_split; default: "
                               "config.data.holdout, the split training left out, or 0.1 if that is 0).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Examples per likelihood batch.")
_DIVERGENCE = flags.DEFINE_enum("divergence", None, list(_names.DIVERGENCES),
                                "ODE divergence estimator (default: exact up to 100 dimensions, else hutchinson).")
_NUM_PROBES = flags.DEFINE_integer("num_probes", 1, "Hutchinson probes per solve.")
_RTOL = flags.DEFINE_float("rtol", 1e-5, "ODE relative (and absolute) tolerance.")
_VLB_STEPS = flags.DEFINE_integer("vlb_steps", 1000, "Steps T of the discrete DDPM bound (0: skip).")
_ELBO_SAMPLES = flags.DEFINE_integer("elbo_time_samples", 16, "Time samples per example of the VDM ELBO (0: skip).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the evaluation (dequantization, probes, bounds, samples).")
_OUT = flags.DEFINE_string("out", None, "Output JSON path (default <workdir>/eval/step_<step>.json).")
_METRIC = flags.DEFINE_enum("metric", "default", ["default", "fid"], "default: the held-out NLL and sample metrics "
                            "above; fid: FID / Inception Score / FD-DINOv2 over --num_samples samples, generated "
                            "and featurized on every device and process (docs/evaluation.md).")
_REF = flags.DEFINE_string("ref", None, "fid: reference Inception statistics .npz (mu, sigma).")
_REF_DINOV2 = flags.DEFINE_string("ref_dinov2", None, "fid: reference DINOv2 statistics .npz (mu, sigma).")
_INCEPTION = flags.DEFINE_string("inception", None, "fid: pytorch-fid's Inception weights as .npz / .safetensors.")
_DINOV2 = flags.DEFINE_string("dinov2", None, "fid: DINOv2 weights as .npz / .safetensors.")
_DINOV2_ARCH = flags.DEFINE_enum("dinov2_arch", "vitl14", list(metrics.DINOV2_ARCHS), "fid: DINOv2 architecture.")
_PREPROCESSING = flags.DEFINE_enum("preprocessing", "pytorch_fid", list(metrics.INCEPTION_MODES),
                                   "fid: Inception preprocessing: pytorch_fid, clean (clean-fid) or tf1 (TTUR).")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch_size", 250, "fid: samples per shard (a global batch).")
_SOLVER = flags.DEFINE_string("solver", None, "fid: solver name (default: the config's).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "fid: solver steps (default: the config's).")
_GRID = flags.DEFINE_string("grid", None, "fid: time grid name (default: the config's).")
_SAVE_STATS = flags.DEFINE_string("save_stats", None, "fid: also write the samples' statistics .npz here.")
_WRITE_REF = flags.DEFINE_string("write_ref", None, "fid: instead of sampling, write the reference statistics of "
                                 "the workdir's data set here (and <stem>_dinov2.npz).")
flags.mark_flags_as_required(["workdir"])

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
    trained_without = _lib.holdout_fraction(config)
    if trained_without > 0 and holdout in (None, trained_without):
        held = _lib.load_heldout(config)
        return held.x, held.label, f"config.data.holdout={trained_without}, seed={config.seed}", True
    frac = holdout or DEFAULT_HOLDOUT
    ds = _lib.load_all(config)
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


def nll_bits_per_dim(make_model, params, x, label, key, *, bin_width, divergence, rtol, vlb_steps, elbo_time_samples,
                     batch_size):
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
        ll = likelihood.ode_log_likelihood_batch(model, xb, cond=cb, key=jax.random.fold_in(k, 1),
                                                 divergence=divergence, rtol=rtol, atol=rtol)
        bits = (likelihood.nats_to_bits_per_dim(-ll.log_prob, dim) if bin_width is None
                else likelihood.bits_per_dim(ll.log_prob, dim, bin_width=bin_width))
        return bits, ll.nfe

    @jax.jit
    def bounds(params, xb, cb, k):
        model = make_model(params)
        k1, k2 = jax.random.split(k)
        vlb = (likelihood.vlb_bits_per_dim(model, k1, xb, cond=cb, num_steps=vlb_steps, num_bins=num_bins,
                                           bin_width=bin_width or 1.0).total if vlb_steps else jnp.zeros(xb.shape[0]))
        elbo = (likelihood.elbo_bits_per_dim(model, k2, xb, cond=cb, num_time_samples=elbo_time_samples,
                                             num_bins=num_bins, bin_width=bin_width or 1.0).total
                if elbo_time_samples else jnp.zeros(xb.shape[0]))
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
        clf, acc = metrics.train_digit_classifier(config.seed, dataset=config.data.name,
                                                  steps=600 if config.data.name == "digits" else 2000)
        res["classifier_heldout_accuracy"] = acc
        res["frechet_digit_distance"] = metrics.frechet_digit_distance(clf, s, h)
        pr = metrics.precision_recall(h, s, feature_fn=clf.features)
        res["precision"], res["recall"] = float(pr.precision), float(pr.recall)
        if labels is not None:
            res["classifier_accuracy_on_samples"] = float(metrics.classifier_accuracy(clf, s, labels[:n]))
    return res


def evaluate(workdir: str, *, num_examples=256, num_samples=1000, holdout=None, batch_size=64, divergence=None,
             num_probes=1, rtol=1e-5, vlb_steps=1000, elbo_time_samples=16, seed=0, out=None) -> dict:
    """Evaluate the latest checkpoint of `workdir`; writes and returns the results dict.

    divergence: "exact" or "hutchinson" (experiments._names.DIVERGENCES; default exact up to
    100 dimensions, else Hutchinson with `num_probes` probes).
    """
    _check_arguments(num_examples=num_examples, num_samples=num_samples, holdout=holdout, batch_size=batch_size,
                     num_probes=num_probes, rtol=rtol, vlb_steps=vlb_steps, elbo_time_samples=elbo_time_samples)
    if divergence is not None and divergence not in _names.DIVERGENCES:
        raise _lib.ConfigError(f"--divergence: unknown estimator {divergence!r}; accepted: "
                               f"{', '.join(_names.DIVERGENCES)}")
    if out is not None:
        _workdir.check_output(out, "--out")
    config, recipe, ema = _lib.restore(workdir)

    def make_model(params):
        net = nnx.merge(ema.graphdef, *params, copy=True)
        net.eval()  # dropout off
        return recipe.bind(net)

    x, label, heldout, from_training = heldout_data(config, num_examples, holdout)
    x, label = x[:num_examples], (None if label is None or not config.data.cond else label[:num_examples])
    key = jax.random.PRNGKey(seed)
    h = grey_level(x)
    if divergence is None:  # exact trace up to 100 dimensions (D jvps per evaluation), else Hutchinson
        divergence = "exact" if math.prod(x.shape[1:]) <= 100 else "hutchinson"
    res = {
        "workdir": os.path.abspath(workdir), "step": ema.step, "data": config.data.name, "path": config.path.name,
        "heldout": heldout, "heldout_from_training": from_training,
    }
    t0 = time.perf_counter()
    if not isinstance(recipe, _lib.DiffusionRecipe):  # a flow map has no PF-ODE density or diffusion bound
        res["likelihood"] = "none: a flow map defines no density"
    else:
        res.update({
            "num_examples": int(x.shape[0]), "grey_level": h, "continuous_data": h is None,
            "divergence": divergence, "num_probes": num_probes if divergence == "hutchinson" else None,
            "rtol": rtol, "vlb_steps": vlb_steps, "elbo_time_samples": elbo_time_samples,
        })
        estimator = _names.get_divergence(divergence, **({"num_probes": num_probes} if divergence == "hutchinson"
                                                          else {}))
        nll = nll_bits_per_dim(make_model, (ema.params, ema.rest), x, label, jax.random.fold_in(key, 0), bin_width=h,
                               divergence=estimator, rtol=rtol, vlb_steps=vlb_steps,
                               elbo_time_samples=elbo_time_samples, batch_size=batch_size)
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
    "num_examples": Spec("int", 1), "num_samples": Spec("int", 0), "batch_size": Spec("int", 1),
    "num_probes": Spec("int", 1), "vlb_steps": Spec("int", 0), "elbo_time_samples": Spec("int", 0),
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


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if _METRIC.value == "fid":  # experiments/_sample_eval.py: one-line errors, the table on stdout
        _sample_eval.run_cli(_WORKDIR.value, num_samples=_NUM_SAMPLES.value, ref=_REF.value, ref_dinov2=_REF_DINOV2.value,
                             inception=_INCEPTION.value, dinov2=_DINOV2.value, dinov2_arch=_DINOV2_ARCH.value,
                             preprocessing=_PREPROCESSING.value, batch_size=_SAMPLE_BATCH.value, solver=_SOLVER.value,
                             num_steps=_NUM_STEPS.value, grid=_GRID.value, seed=_SEED.value, out=_OUT.value,
                             save_stats=_SAVE_STATS.value, write_ref=_WRITE_REF.value)
        return
    with _lib.exit_on_error():
        if len(argv) > 1:
            raise _lib.ConfigError(f"{argv[1]}: unexpected argument; accepted: --flag=value arguments only")
        res = evaluate(_WORKDIR.value, num_examples=_NUM_EXAMPLES.value, num_samples=_NUM_SAMPLES.value,
                       holdout=_HOLDOUT.value, batch_size=_BATCH.value, divergence=_DIVERGENCE.value,
                       num_probes=_NUM_PROBES.value, rtol=_RTOL.value, vlb_steps=_VLB_STEPS.value,
                       elbo_time_samples=_ELBO_SAMPLES.value, seed=_SEED.value, out=_OUT.value)
    print(format_table(res))


if __name__ == "__main__":
    app.run(main, flags_parser=_lib.parse_flags)
