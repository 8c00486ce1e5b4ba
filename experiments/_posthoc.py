"""The post-hoc EMA sweep behind `python -m experiments.posthoc_ema` (see that module for the
command line): rebuild the EMA of each relative std from a workdir's snapshots, sample it, score it.

    res = sweep("runs/digits_phema", [0.02, 0.05, 0.1, 0.2], metric="fdd", num_samples=2000)
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

from experiments import _data, _phema, _sample_eval
from experiments._config import ConfigError
from experiments._workdir import restore
from jdiff import data, metrics, posthoc_ema

__all__ = ["plot_sweep", "sweep"]

DIGIT_SETS = ("digits", "mnist5k")


def _heldout_images(config):
    """Images training did not see (config.data.holdout's split), else a 10% split of the set."""
    if _data.holdout_fraction(config) > 0:
        return np.asarray(_data.load_heldout(config).x, np.float32)
    _, held = data.holdout_split(_data.load_all(config), 0.1, seed=config.seed)
    return np.asarray(held["x"], np.float32)


def sweep(
    workdir: str,
    sigma_rels,
    *,
    metric: str = "fdd",
    num_samples: int = 2000,
    step: int | None = None,
    seed: int = 0,
    ref: str | None = None,
    inception: str | None = None,
    batch_size: int = 250,
    out: str | None = None,
    plot: bool = True,
) -> dict:
    """Score the EMA of every relative std in `sigma_rels` rebuilt from `workdir`'s snapshots.

    Returns {"rows": [{"sigma_rel", metric...}], "training_ema": {...}, ...} and writes the JSON
    (and the plot with `plot`).
    """
    sigma_rels = [float(s) for s in sigma_rels]
    try:
        posthoc_ema.sigma_rel_to_gamma(sigma_rels)
    except ValueError as e:
        raise ConfigError(f"--sigma_rels: {e}") from e
    if num_samples < 2:
        raise ConfigError(f"--num_samples: {num_samples}; accepted: an int >= 2")
    config, recipe, ema = restore(workdir)
    if not _phema.sigma_rels(config):
        raise ConfigError(
            f"--workdir: {workdir} was trained without post-hoc EMA profiles; set "
            "config.posthoc_ema.sigma_rels (e.g. (0.05, 0.10)) and train again"
        )
    snaps = posthoc_ema.load_snapshots(os.path.join(os.path.abspath(workdir), _phema.PHEMA_DIR), max_step=step)
    step = max(s.step for s in snaps) if step is None else step
    candidates = [
        (f"sigma_rel={s:g}", s, posthoc_ema.reconstruct(snaps, s, step=step, template=ema.params)) for s in sigma_rels
    ]
    candidates.append((f"training EMA (decay {config.ema_decay})", None, ema.params))

    if metric == "fdd":
        if config.data.name not in DIGIT_SETS:
            raise ConfigError(
                f"--metric: fdd scores digit images; this workdir trains {config.data.name!r} "
                f"(accepted data: {', '.join(DIGIT_SETS)}; use --metric=fid)"
            )
        clf, acc = metrics.train_digit_classifier(
            config.seed, dataset=config.data.name, steps=600 if config.data.name == "digits" else 2000
        )
        held = _heldout_images(config)
        sampler = recipe.make_sampler(ema.graphdef, (num_samples, *config.data.shape))

        def score(params):
            x = np.asarray(jax.device_get(sampler(params, ema.rest, jax.random.PRNGKey(seed))))
            return {"fdd": metrics.frechet_digit_distance(clf, x, held)}

        extra = {"classifier_heldout_accuracy": acc, "heldout_images": int(held.shape[0])}
    elif metric == "fid":
        if not (ref and inception):
            raise ConfigError("--metric=fid needs --ref (reference statistics) and --inception (weights)")
        nets = _sample_eval.load_feature_nets(inception)

        def score(params):
            r = _sample_eval.evaluate_fid(
                workdir,
                num_samples=num_samples,
                ref=ref,
                nets=nets,
                batch_size=batch_size,
                seed=seed,
                params=(params, ema.rest),
                progress=False,
                out=os.path.join(os.path.abspath(workdir), "eval", "posthoc_fid_last.json"),
            )
            return {"fid": r["fid"], "inception_score": r["inception_score"]}

        extra = {"ref": ref, "inception_weights": inception}
    else:
        raise ConfigError(f"--metric: unknown metric {metric!r}; accepted: fdd, fid")

    rows, reference = [], None
    for label, s, params in candidates:
        result = {"label": label, "sigma_rel": s, **score(params)}
        if s is None:
            reference = result
        else:
            rows.append(result)
        print(
            f"{label}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float) and k != "sigma_rel"),
            file=sys.stderr,
        )
    res = {
        "workdir": os.path.abspath(workdir),
        "step": step,
        "metric": metric,
        "num_samples": num_samples,
        "seed": seed,
        "tracked_sigma_rels": list(_phema.sigma_rels(config)),
        "snapshots": len(snaps),
        "rows": rows,
        "training_ema": reference,
        **extra,
    }
    out = out or os.path.join(os.path.abspath(workdir), "eval", f"posthoc_{metric}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
    res["json"] = out
    if plot:
        res["png"] = plot_sweep(res, os.path.splitext(out)[0] + ".png")
    return res


def plot_sweep(res: dict, path: str) -> str:
    """Metric against sigma_rel (log x axis), the training run's EMA as a horizontal line."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    key = "fdd" if res["metric"] == "fdd" else "fid"
    xs = [r["sigma_rel"] for r in res["rows"]]
    ys = [r[key] for r in res["rows"]]
    fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=120)
    ax.plot(xs, ys, "o-", label="post-hoc EMA (reconstructed)")
    if res["training_ema"] is not None:
        ax.axhline(res["training_ema"][key], color="gray", ls="--", label=res["training_ema"]["label"])
    for s in res["tracked_sigma_rels"]:
        ax.axvline(s, color="C1", lw=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("EMA length sigma_rel (orange: tracked profiles)")
    ax.set_ylabel({"fdd": "Frechet digit distance", "fid": "FID"}[key])
    ax.set_title(f"step {res['step']}, {res['num_samples']} samples", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
