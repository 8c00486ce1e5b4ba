"""FSDP against replicated parameters on 8 CPU devices, with a DiT, and the grain pipeline's overhead.

    python benchmarks/bench_scaling.py                       # DiT 384 x 6 on 16x16x3, batch 16
    python benchmarks/bench_scaling.py --hidden=256 --depth=4 --steps=5 --repeats=2

One process, 8 forced CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8 unless set).
For the mesh data=8 (replicated state) and the mesh fsdp=8 (state split 8 ways by FSDP_RULES):

  step ms    median wall time of the jitted, donated train step (AdamW, EMA) on a device-resident
             batch, over `repeats` interleaved rounds of `steps` steps (compile excluded);
  state MiB  parameters + Adam moments + EMA held by one device, summed from the arrays'
             addressable shards (what each device stores between steps);
  XLA MiB    XLA's buffer assignment for one device (compiled.memory_analysis(): arguments + outputs
             - aliased + temporaries), the peak the compiled step needs; device.memory_stats() is
             None on CPU, so this is JAX's own figure;
and the input pipeline: the same step fed by GrainIterator (2 reader threads, next batch + host ->
device transfer every step) over the bare step: grain overhead = pipeline / bare step time.
The machine is shared: read the ratios of one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import numpy as np
import optax
from flax import nnx

import jdiff
from jdiff import data, losses, models, parallel, training

jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))

MiB = 2**20


def _net(args):
    return models.DiT(
        args.image,
        3,
        patch_size=args.patch,
        hidden=args.hidden,
        depth=args.depth,
        num_heads=args.heads,
        kind="velocity",
        rngs=nnx.Rngs(0),
    )


def _loss(net, batch, key):
    return losses.cfm_loss(jdiff.Model(net, jdiff.Linear(), net.kind), key, batch["x"])


def _setup(args, mesh):
    tx = optax.adamw(1e-4)
    graphdef, state = training.init_train_state(_net(args), tx, jax.random.PRNGKey(0), mesh=mesh)
    step = training.make_train_step(_loss, graphdef, tx, mesh=mesh, state_sharding=parallel.shardings_of(state))
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.image, args.image, 3)).astype(np.float32)
    batch = parallel.global_batch({"x": x}, mesh)
    mem = step.lower(state, batch).compile().memory_analysis()
    xla = (
        (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
        if mem is not None
        else float("nan")
    )
    tree = (state.params, state.opt_state, state.ema_params)
    dev0 = jax.devices()[0]
    held = sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev0)
    total = sum(x.nbytes for x in jax.tree.leaves(tree))
    stats = dev0.memory_stats()  # None on CPU
    state, _ = step(state, batch)  # compile
    jax.block_until_ready(state)
    return {
        "step": step,
        "state": state,
        "batch": batch,
        "held": held,
        "total": total,
        "xla": xla,
        "peak": (stats or {}).get("peak_bytes_in_use"),
        "times": [],
    }


def _time(run, steps, feed=None):
    state = run["state"]
    t0 = time.perf_counter()
    for _ in range(steps):
        state, _ = run["step"](state, run["batch"] if feed is None else feed())
    jax.block_until_ready(state)
    run["state"] = state
    return (time.perf_counter() - t0) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=int, default=16)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians reported)")
    parser.add_argument("--examples", type=int, default=20_000, help="images in the grain pipeline's dataset")
    args = parser.parse_args()
    if len(jax.devices()) != 8:
        sys.exit(f"needs 8 devices, found {len(jax.devices())} (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})")

    runs = {
        "replicated (data=8)": _setup(args, parallel.make_mesh(data=8)),
        "fsdp=8": _setup(args, parallel.make_mesh(data=1, fsdp=8)),
    }
    fsdp = runs["fsdp=8"]
    images = np.random.default_rng(1).uniform(-1, 1, (args.examples, args.image, args.image, 3)).astype(np.float32)
    it = data.GrainIterator({"x": images}, args.batch, seed=0, num_threads=2, prefetch=4)
    mesh = fsdp["batch"]["x"].sharding.mesh
    pipeline = []
    for _ in range(args.repeats):
        for run in runs.values():
            run["times"].append(_time(run, args.steps))
        pipeline.append(_time(fsdp, args.steps, feed=lambda: parallel.global_batch(next(it), mesh)))

    n_params = sum(x.size for x in jax.tree.leaves(fsdp["state"].params))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"jax {jax.__version__}, {len(jax.devices())} {jax.devices()[0].platform} devices, {os.cpu_count()} CPU "
        f"cores, load average {load:.1f}"
    )
    print(
        f"DiT hidden={args.hidden} depth={args.depth} heads={args.heads} on {args.image}x{args.image}x3, patch "
        f"{args.patch} ({(args.image // args.patch) ** 2} tokens), {n_params:,} parameters; global batch "
        f"{args.batch}; medians of {args.repeats} x {args.steps} steps"
    )
    print()
    print("| mesh | step ms | state MiB / device | state / replicated | XLA MiB / device | peak_bytes_in_use |")
    print("|---|---:|---:|---:|---:|---:|")
    base = runs["replicated (data=8)"]
    for name, run in runs.items():
        peak = "n/a (CPU)" if run["peak"] is None else f"{run['peak'] / MiB:.1f}"
        print(
            f"| {name} | {1e3 * np.median(run['times']):.1f} | {run['held'] / MiB:.1f} | "
            f"{run['held'] / base['held']:.3f} | {run['xla'] / MiB:.1f} | {peak} |"
        )
    ratio = np.median(fsdp["times"]) / np.median(base["times"])
    print(f"\nFSDP / replicated step time: {ratio:.2f}")
    print(
        f"grain pipeline (fsdp=8): {1e3 * np.median(pipeline):.1f} ms / step; overhead = pipeline / bare step = "
        f"{np.median(pipeline) / np.median(fsdp['times']):.3f}"
    )


if __name__ == "__main__":
    main()
