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
model (a jdiff.Model); a flow-map workdir gets the sample metrics only. A latent workdir (a
config with a `latent` section) gets the LATENT likelihood: the PF-ODE log p(z) of the
held-out images' normalized latents z = E(x) (`jdiff.latent.latent_log_likelihood`), in nats and
bits per latent dimension, with `likelihood_note` saying it is not a pixel bits/dim (no bounds).

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

from absl import app, flags, logging

from experiments import _lib, _names, _sample_eval
from experiments._evaluate import evaluate, format_table
from jdiff import metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "A directory written by experiments.train.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 256, "Held-out examples for the likelihoods.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Generated samples for the sample metrics (0: skip).")
_HOLDOUT = flags.DEFINE_float(
    "holdout",
    None,
    "Fraction of an image set to score (jdiff.data.holdout_split; default: "
    "config.data.holdout, the split training left out, or 0.1 if that is 0).",
)
_BATCH = flags.DEFINE_integer("batch_size", 64, "Examples per likelihood batch.")
_DIVERGENCE = flags.DEFINE_enum(
    "divergence",
    None,
    list(_names.DIVERGENCES),
    "ODE divergence estimator (default: exact up to 100 dimensions, else hutchinson).",
)
_NUM_PROBES = flags.DEFINE_integer("num_probes", 1, "Hutchinson probes per solve.")
_RTOL = flags.DEFINE_float("rtol", 1e-5, "ODE relative (and absolute) tolerance.")
_VLB_STEPS = flags.DEFINE_integer("vlb_steps", 1000, "Steps T of the discrete DDPM bound (0: skip).")
_ELBO_SAMPLES = flags.DEFINE_integer("elbo_time_samples", 16, "Time samples per example of the VDM ELBO (0: skip).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the evaluation (dequantization, probes, bounds, samples).")
_OUT = flags.DEFINE_string("out", None, "Output JSON path (default <workdir>/eval/step_<step>.json).")
_METRIC = flags.DEFINE_enum(
    "metric",
    "default",
    ["default", "fid"],
    "default: the held-out NLL and sample metrics "
    "above; fid: FID / Inception Score / FD-DINOv2 over --num_samples samples, generated "
    "and featurized on every device and process (docs/evaluation.md).",
)
_REF = flags.DEFINE_string("ref", None, "fid: reference Inception statistics .npz (mu, sigma).")
_REF_DINOV2 = flags.DEFINE_string("ref_dinov2", None, "fid: reference DINOv2 statistics .npz (mu, sigma).")
_INCEPTION = flags.DEFINE_string("inception", None, "fid: pytorch-fid's Inception weights as .npz / .safetensors.")
_DINOV2 = flags.DEFINE_string("dinov2", None, "fid: DINOv2 weights as .npz / .safetensors.")
_DINOV2_ARCH = flags.DEFINE_enum("dinov2_arch", "vitl14", list(metrics.DINOV2_ARCHS), "fid: DINOv2 architecture.")
_PREPROCESSING = flags.DEFINE_enum(
    "preprocessing",
    "pytorch_fid",
    list(metrics.INCEPTION_MODES),
    "fid: Inception preprocessing: pytorch_fid, clean (clean-fid) or tf1 (TTUR).",
)
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch_size", 250, "fid: samples per shard (a global batch).")
_SOLVER = flags.DEFINE_string("solver", None, "fid: solver name (default: the config's).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "fid: solver steps (default: the config's).")
_GRID = flags.DEFINE_string("grid", None, "fid: time grid name (default: the config's).")
_SAVE_STATS = flags.DEFINE_string("save_stats", None, "fid: also write the samples' statistics .npz here.")
_WRITE_REF = flags.DEFINE_string(
    "write_ref",
    None,
    "fid: instead of sampling, write the reference statistics of the workdir's data set here (and <stem>_dinov2.npz).",
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if _METRIC.value == "fid":  # experiments/_sample_eval.py: one-line errors, the table on stdout
        _sample_eval.run_cli(
            _WORKDIR.value,
            num_samples=_NUM_SAMPLES.value,
            ref=_REF.value,
            ref_dinov2=_REF_DINOV2.value,
            inception=_INCEPTION.value,
            dinov2=_DINOV2.value,
            dinov2_arch=_DINOV2_ARCH.value,
            preprocessing=_PREPROCESSING.value,
            batch_size=_SAMPLE_BATCH.value,
            solver=_SOLVER.value,
            num_steps=_NUM_STEPS.value,
            grid=_GRID.value,
            seed=_SEED.value,
            out=_OUT.value,
            save_stats=_SAVE_STATS.value,
            write_ref=_WRITE_REF.value,
        )
        return
    with _lib.exit_on_error():
        if len(argv) > 1:
            raise _lib.ConfigError(f"{argv[1]}: unexpected argument; accepted: --flag=value arguments only")
        res = evaluate(
            _WORKDIR.value,
            num_examples=_NUM_EXAMPLES.value,
            num_samples=_NUM_SAMPLES.value,
            holdout=_HOLDOUT.value,
            batch_size=_BATCH.value,
            divergence=_DIVERGENCE.value,
            num_probes=_NUM_PROBES.value,
            rtol=_RTOL.value,
            vlb_steps=_VLB_STEPS.value,
            elbo_time_samples=_ELBO_SAMPLES.value,
            seed=_SEED.value,
            out=_OUT.value,
        )
    print(format_table(res))


if __name__ == "__main__":
    app.run(main, flags_parser=_lib.parse_flags)
