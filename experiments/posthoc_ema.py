"""Sweep the EMA length of a trained workdir after the fact (post-hoc EMA, Karras et al. 2024).

    python -m experiments.posthoc_ema --workdir=runs/digits_phema \\
        --sigma_rels=0.01,0.02,0.03,0.05,0.07,0.1,0.13,0.16,0.2,0.25 --metric=fdd --num_samples=2000
    python -m experiments.posthoc_ema --workdir=runs/cifar10 --sigma_rels=0.05,0.1,0.15 --metric=fid \\
        --num_samples=10000 --ref=fid_stats.npz --inception=pt_inception-2015-12-05.npz

The workdir must have been trained with config.posthoc_ema.sigma_rels set (two power-function
EMA profiles, snapshotted to workdir/phema/). For each relative std the EMA weights are rebuilt
from the snapshots by least squares (jdiff.posthoc_ema.reconstruct), sampled and scored:

    fdd   Frechet distance of jdiff.metrics' digit-classifier features against held-out digits
          (digits, mnist5k; the classifier is trained from config.seed)
    fid   FID (and IS / FD-DINOv2 when their files are given) as `experiments.evaluate --metric=fid`

The training run's own EMA (config.ema_decay) is scored too, for reference. Writes
<workdir>/eval/posthoc_<metric>.json (or --out) and a plot of the metric against sigma_rel next
to it (.png), and prints a table.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from experiments._config import ConfigError
from experiments._posthoc import sweep

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir trained with config.posthoc_ema.sigma_rels set.")
_SIGMA_RELS = flags.DEFINE_list(
    "sigma_rels", ["0.02", "0.05", "0.1", "0.15", "0.2"], "Relative EMA lengths to rebuild and score, in (0, 0.2887)."
)
_METRIC = flags.DEFINE_enum("metric", "fdd", ["fdd", "fid"], "What to score each EMA with.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2000, "Samples per EMA length.")
_STEP = flags.DEFINE_integer("step", None, "Training step to rebuild the EMA at (default: the last snapshot).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the samples (the same for every EMA length).")
_REF = flags.DEFINE_string("ref", None, "fid: reference statistics .npz (mu, sigma).")
_INCEPTION = flags.DEFINE_string("inception", None, "fid: Inception weights (.npz / .safetensors).")
_BATCH = flags.DEFINE_integer("sample_batch_size", 250, "fid: samples per shard.")
_OUT = flags.DEFINE_string("out", None, "Output JSON (default <workdir>/eval/posthoc_<metric>.json).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        if len(argv) > 1:
            raise ConfigError(f"{argv[1]}: unexpected argument; accepted: --flag=value arguments only")
        res = sweep(
            _WORKDIR.value,
            _SIGMA_RELS.value,
            metric=_METRIC.value,
            num_samples=_NUM_SAMPLES.value,
            step=_STEP.value,
            seed=_SEED.value,
            ref=_REF.value,
            inception=_INCEPTION.value,
            batch_size=_BATCH.value,
            out=_OUT.value,
        )
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    key = res["metric"]
    print("\n".join(f"{r['label']:<32} {r[key]:.4f}" for r in [*res["rows"], res["training_ema"]]))
    print(f"wrote {res['json']}" + (f" and {res['png']}" if "png" in res else ""))


if __name__ == "__main__":
    app.run(main)
