"""Latent vs pixel diffusion on MNIST-5k at matched training compute: the numbers of docs/latent.md.

    nice -n 10 python benchmarks/bench_latent_mnist.py --runs=runs/latent_bench   # the docs run
    python benchmarks/bench_latent_mnist.py --runs=/tmp/latent_bench --quick      # the pipeline, a few steps

1. Trains the autoencoder (experiments/configs/mnist5k_autoencoder.py, --ae_steps steps) and
   reports, on its 1000 held-out digits, the PSNR of the reconstructions (posterior means decoded;
   images in [-1, 1], so PSNR = 10 log10(2^2 / MSE)), the Frechet digit distance (FDD) of
   reconstructions to originals, and the accuracy of the MNIST-5k digit classifier of jdiff.metrics
   on originals and on their reconstructions (over the held-out digits that are also outside the
   classifier's training split).
2. Measures the CPU time (process time, after compilation) of one train step of the latent model
   (mnist5k_latent.py on the cached 7x7x4 latents) and of the pixel-space model (mnist5k.py), and of
   the autoencoder (in its training run), and sets the pixel model's steps so that its training compute equals the latent
   model's (--steps steps), and, a second checkpoint of the same run, the latent model's plus the
   autoencoder's.
3. Both diffusion models are the same network family (--model: "mlp", a residual MLP with hidden
   256 and depth 3 on the flattened 196-d latents / 784-d pixels, the default; or "unet", the
   configs' U-Nets), the same path, loss, optimizer and batch (v-prediction, cosine VP, AdamW 1e-3
   constant, batch 64, EMA 0.999). Draws --num_samples class-balanced samples from the EMA weights
   with DPM-Solver++(2M), 25 steps; reports FDD to the held-out digits and the classifier's accuracy
   on the requested labels. Reference rows: as many training digits, and the reconstructions.
4. Writes a picture (a row per digit: latent samples | pixel samples at matched compute) and
   results.json next to the runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from experiments import _latent, _lib, _state
from jdiff import checkpoint, data, metrics, parallel, training

COMMON = {  # the same training recipe for the latent and the pixel model
    "batch_size": 64,
    "optimizer.learning_rate": 1e-3,
    "optimizer.warmup_steps": 100,
    "optimizer.schedule": "constant",
    "ema_decay": 0.999,
    "data.holdout": 0.2,
    "sample_every": 0,
}
PIXEL_UNET = {"model.kwargs.ch": 16, "model.kwargs.num_res_blocks": 1, "model.kwargs.attn_resolutions": ()}


def _mlp(in_features):
    return {
        "model.name": "mlp",
        "model.kwargs": ml_collections.ConfigDict(
            {"in_features": in_features, "hidden": 256, "depth": 3, "num_classes": 10, "kind": "v"}
        ),
    }


NUM_SAMPLES, SOLVER, STEPS = 1000, "dpmpp_2m", 25


def _config(name, arg=None, **overrides):
    c = importlib.import_module(f"experiments.configs.{name}").get_config(arg)
    for key, value in overrides.items():
        node = c
        *head, last = key.split(".")
        for h in head:
            node = node[h]
        node[last] = value
    return c


def _step_cost(config, n=10) -> float:
    """CPU seconds of one train step of `config` (after compilation), on one device."""
    recipe, dataset, net = _lib.validate(config)
    tx, graphdef, state = _state.init_train_state(config, net)
    step = training.make_train_step(
        recipe.build_loss(), graphdef, tx, ema=config.ema_decay, grad_clip_norm=config.optimizer.grad_clip_norm
    )
    if isinstance(recipe, _latent.LatentRecipe):  # the cost of a step on latents, not of building the cache
        x = np.random.default_rng(0).normal(size=(config.batch_size, *recipe.latent_shape)).astype(np.float32)
    else:
        x = dataset.x[: config.batch_size]
    batch = {"x": jnp.asarray(x), "label": jnp.asarray(dataset.label[: config.batch_size])}
    state, m = step(state, batch)
    jax.block_until_ready(m)
    t0 = time.process_time()
    for _ in range(n):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    return (time.process_time() - t0) / n


def _restore(config, workdir, step=None):
    """(recipe, graphdef, EMA params, rest) of checkpoint `step` (default: the latest)."""
    recipe = _lib.recipe_for(config)
    _, graphdef, state = _state.init_train_state(config, recipe.build_model())
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1)
    try:
        state = ckpt.restore(state, step)
    finally:
        ckpt.close()
    return recipe, graphdef, state.ema_params, state.rest


def _samples(recipe, graphdef, params, rest, labels):
    """Samples of the EMA weights for `labels` (one batch, one compilation), clipped to [-1, 1]."""
    draw = recipe.make_sampler(
        graphdef, (len(labels), 28, 28, 1), cond=jnp.asarray(labels), solver=SOLVER, num_steps=STEPS
    )
    return np.clip(np.asarray(parallel.to_host(draw(params, rest, jax.random.PRNGKey(100)))), -1.0, 1.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/latent_bench")
    p.add_argument("--quick", action="store_true", help="a few steps of everything (checks the pipeline)")
    p.add_argument("--ae_steps", type=int, default=400, help="autoencoder train steps (batch 32)")
    p.add_argument("--steps", type=int, default=4000, help="latent model train steps (batch 64)")
    p.add_argument("--model", choices=("mlp", "unet"), default="mlp")
    p.add_argument("--num_samples", type=int, default=NUM_SAMPLES)
    args = p.parse_args()
    if args.quick:
        args.ae_steps, args.steps, args.num_samples = 10, 10, 100
    n_samples = args.num_samples
    os.makedirs(args.runs, exist_ok=True)
    ae_dir, lat_dir, pix_dir = (os.path.join(args.runs, n) for n in ("ae", "latent", "pixel"))
    t_start = time.perf_counter()

    # 1. the autoencoder
    ae_cfg = _config(
        "mnist5k_autoencoder",
        total_steps=args.ae_steps,
        **{"optimizer.warmup_steps": 50},
        checkpoint_every=args.ae_steps,
        sample_every=args.ae_steps,
    )
    # the autoencoder's CPU time per step, measured in its own run (process time between the first
    # step, compiled, and the last); a rerun on a trained workdir reads it back
    cost_file, marks = os.path.join(args.runs, "ae_cpu_seconds_per_step.json"), {}

    def clock(step, state, metrics):
        if step in (1, args.ae_steps):
            jax.block_until_ready(metrics)
            marks[step] = time.process_time()

    _lib.train_and_evaluate(ae_cfg, ae_dir, hooks=[clock])
    if len(marks) == 2:
        with open(cost_file, "w") as f:
            json.dump((marks[args.ae_steps] - marks[1]) / (args.ae_steps - 1), f)
    with open(cost_file) as f:
        ae_cost = json.load(f)
    ae = _latent.load_autoencoder(_config("mnist5k_latent", **{"latent.path": ae_dir}).latent, (28, 28, 1))
    held = _lib.load_heldout(ae_cfg)
    rec = np.asarray(nnx.jit(lambda m, x: m.decode(m.encode(x).mode()))(ae, jnp.asarray(held.x)))
    mse = np.mean((rec - held.x) ** 2, axis=(1, 2, 3))
    classifier, clf_acc = metrics.train_digit_classifier(0, dataset="mnist5k")
    # held-out digits that are also outside the classifier's training split (its seeded 20% test split)
    full = data.load_mnist5k()
    perm = np.asarray(jax.random.permutation(jax.random.split(jax.random.PRNGKey(0), 3)[0], full.x.shape[0]))
    clf_test = {full.x[i].tobytes() for i in perm[: round(0.2 * full.x.shape[0])]}
    both = np.array([x.tobytes() in clf_test for x in held.x])
    ae_rows = {
        "psnr_db": float(np.mean(10 * np.log10(4.0 / mse))),
        "mse": float(np.mean(mse)),
        "fdd_reconstructions": metrics.frechet_digit_distance(classifier, rec, held.x),
        "accuracy_originals": float(metrics.classifier_accuracy(classifier, held.x[both], held.label[both])),
        "accuracy_reconstructions": float(metrics.classifier_accuracy(classifier, rec[both], held.label[both])),
        "num_heldout": int(held.x.shape[0]),
        "num_accuracy": int(both.sum()),
        "classifier_test_accuracy": clf_acc,
        "latent_scale": float(ae.scale[...]),
        "latent_shift": float(ae.shift[...]),
    }
    print(json.dumps(ae_rows, indent=1), flush=True)

    # 2. matched compute
    lat_model = _mlp(7 * 7 * 4) if args.model == "mlp" else {}
    pix_model = _mlp(28 * 28) if args.model == "mlp" else PIXEL_UNET
    lat_cfg = _config(
        "mnist5k_latent",
        **{"latent.path": ae_dir, **COMMON, **lat_model, "total_steps": args.steps, "checkpoint_every": args.steps},
    )
    pix_base = _config("mnist5k", **COMMON, **pix_model)
    cost = {"ae": ae_cost, "latent": _step_cost(lat_cfg), "pixel": _step_cost(pix_base)}
    k_lat = lat_cfg.total_steps
    k_pix = max(2, round(k_lat * cost["latent"] / cost["pixel"]))
    k_pix_total = max(k_pix + 1, round((k_lat * cost["latent"] + ae_cfg.total_steps * cost["ae"]) / cost["pixel"]))
    print("CPU s/step", cost, "pixel steps", k_pix, k_pix_total, flush=True)

    # 3. train both, sample, score
    _lib.train_and_evaluate(lat_cfg, lat_dir)
    pix_cfg = _config(
        "mnist5k",
        **COMMON,
        **pix_model,
        total_steps=k_pix_total,
        checkpoint_every=k_pix,
        keep_checkpoints=k_pix_total // k_pix + 2,
    )
    # The matched-compute checkpoint: also saved at step k_pix (a multiple of checkpoint_every).
    _lib.train_and_evaluate(pix_cfg, pix_dir)
    labels = np.repeat(np.arange(10), n_samples // 10)
    rows = {}
    lat = _samples(*_restore(lat_cfg, lat_dir), labels)
    rows["latent"] = lat
    pix = _samples(*_restore(pix_cfg, pix_dir, k_pix), labels)
    rows["pixel_matched"] = pix
    rows["pixel_matched_with_ae"] = _samples(*_restore(pix_cfg, pix_dir, k_pix_total), labels)
    train = _lib.load_data(ae_cfg)  # ordered by class: a seeded random subset of it
    pick_train = np.random.default_rng(0).permutation(train.x.shape[0])[:n_samples]
    table = {
        "training digits (reference)": (
            metrics.frechet_digit_distance(classifier, train.x[pick_train], held.x),
            float(metrics.classifier_accuracy(classifier, train.x[pick_train], train.label[pick_train])),
            None,
        ),
        "autoencoder reconstructions": (ae_rows["fdd_reconstructions"], ae_rows["accuracy_reconstructions"], None),
    }
    net = "MLP" if args.model == "mlp" else "U-Net"
    names = {
        "latent": f"latent {net}, {k_lat} steps",
        "pixel_matched": f"pixel {net}, {k_pix} steps (= latent)",
        "pixel_matched_with_ae": f"pixel {net}, {k_pix_total} steps (= latent + autoencoder)",
    }
    comp = {
        "latent": k_lat * cost["latent"],
        "pixel_matched": k_pix * cost["pixel"],
        "pixel_matched_with_ae": k_pix_total * cost["pixel"],
    }
    for key, x in rows.items():
        table[names[key]] = (
            metrics.frechet_digit_distance(classifier, x, held.x),
            float(metrics.classifier_accuracy(classifier, x, labels)),
            comp[key],
        )
    print(f"| samples ({n_samples}, {SOLVER} {STEPS} steps) | FDD to held-out | classifier accuracy | train CPU s |")
    print("|---|---|---|---|")
    for name, (fdd, acc, c) in table.items():
        print(f"| {name} | {fdd:.2f} | {acc:.3f} | {'' if c is None else f'{c:.0f}'} |")

    # 4. the picture: per digit, 10 latent samples | 10 pixel samples (matched compute)
    per = n_samples // 10
    pick = np.concatenate([np.arange(10) + per * d for d in range(10)])
    grid = np.concatenate([lat[pick].reshape(10, 10, 28, 28, 1), pix[pick].reshape(10, 10, 28, 28, 1)], axis=1)
    png = os.path.join(args.runs, "latent_vs_pixel.png")
    training.save_image_grid(png, grid.reshape(200, 28, 28, 1), ncol=20, scale=2)
    with open(os.path.join(args.runs, "results.json"), "w") as f:
        json.dump(
            {
                "args": vars(args),
                "autoencoder": ae_rows,
                "cpu_seconds_per_step": cost,
                "pixel_steps": [k_pix, k_pix_total],
                "samples": {k: list(v) for k, v in table.items()},
                "wall_minutes": (time.perf_counter() - t_start) / 60,
            },
            f,
            indent=1,
        )
    print("picture", png, "wall minutes", round((time.perf_counter() - t_start) / 60, 1))


if __name__ == "__main__":
    main()
