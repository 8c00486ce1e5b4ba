"""Few-step flow-map samplers against their multistep teacher on a 2-D toy set.

    python benchmarks/bench_flowmaps.py [--steps 3000] [--dataset moons] [--samples 10000] [--only shortcut,cd]

Trains, in one run and with the same tiny budget each (adam, cosine decay, batch 512):
  teacher      jdiff.models.MLP velocity model, conditional flow matching on the Linear path,
               sampled with Euler and Heun (jdiff.samplers) at 10, 20 and 50 NFE;
  shortcut     jdiff.models.FlowMapMLP trained from scratch with `shortcut_loss`;
  meanflow     FlowMapMLP trained from scratch with `meanflow_loss` (adaptive p = 1 and p = 0);
  cd           FlowMapMLP (DDIMDenoiser parameterization) distilled from the teacher with
               `consistency_distillation_loss` (teacher step: Heun; EMA target network, decay
               0.95 as Song et al. 2023), multistep sampling with re-noising (gamma = 1) and
               deterministic (gamma = 0);
and prints the sliced 1-Wasserstein distance of 10k samples to 10k fresh data points, with
its ratio to the teacher at 50 NFE (Heun) and the Monte-Carlo floor (data vs data).
Timings are not measured. Only ratios within this run are meaningful.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jdiff
from experiments._names import TOY_SETS
from jdiff import flowmaps, losses, metrics, models, paths, samplers


def train(model, loss_fn, data_fn, steps, key, lr=2e-3, batch=512):
    """Adam with cosine decay; loss_fn(model, key, x0) -> per-example losses."""
    opt = nnx.Optimizer(model, optax.adam(optax.cosine_decay_schedule(lr, steps)), wrt=nnx.Param)

    @nnx.jit
    def run(model, opt, key):
        def body(i, carry):
            model, opt = carry
            k = jax.random.fold_in(key, i)
            x0 = data_fn(jax.random.fold_in(k, 0), batch)
            grads = nnx.grad(lambda m: jnp.mean(loss_fn(m, jax.random.fold_in(k, 1), x0)))(model)
            opt.update(model, grads)
            return model, opt

        nnx.fori_loop(0, steps, body, (model, opt))

    t0 = time.perf_counter()
    run(model, opt, key)
    jax.block_until_ready(nnx.state(model))  # training is dispatched asynchronously
    return time.perf_counter() - t0


def train_with_ema_target(model, loss_fn, data_fn, steps, key, decay, lr=2e-3, batch=512):
    """As `train`, with a target network: loss_fn(model, target, key, x0); target <- EMA(model, decay)."""
    opt = nnx.Optimizer(model, optax.adam(optax.cosine_decay_schedule(lr, steps)), wrt=nnx.Param)
    target = nnx.clone(model)

    @nnx.jit
    def run(model, target, opt, key):
        def body(i, carry):
            model, target, opt = carry
            k = jax.random.fold_in(key, i)
            x0 = data_fn(jax.random.fold_in(k, 0), batch)
            grads = nnx.grad(lambda m: jnp.mean(loss_fn(m, target, jax.random.fold_in(k, 1), x0)))(model)
            opt.update(model, grads)
            new = jax.tree.map(
                lambda e, p: decay * e + (1 - decay) * p, nnx.state(target, nnx.Param), nnx.state(model, nnx.Param)
            )
            nnx.update(target, new)
            return model, target, opt

        nnx.fori_loop(0, steps, body, (model, target, opt))

    t0 = time.perf_counter()
    run(model, target, opt, key)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--dataset", default="moons", choices=sorted(TOY_SETS))
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--only", default="", help="comma-separated subset of shortcut,meanflow,cd (teacher always)")
    args = ap.parse_args()

    data_fn = TOY_SETS[args.dataset]
    path = paths.Linear()
    key = jax.random.key(0)
    data = data_fn(jax.random.key(1), args.samples)
    x_T = path.prior_sample(jax.random.key(2), (args.samples, 2))
    sw = jax.jit(lambda x: metrics.sliced_wasserstein(jax.random.key(3), x, data, p=1.0))
    floor = float(sw(data_fn(jax.random.key(4), args.samples)))
    rows = []

    # Teacher: flow matching.
    teacher = models.MLP(2, hidden=128, depth=3, kind="velocity", rngs=nnx.Rngs(0))
    secs = train(
        teacher,
        lambda m, k, x: losses.cfm_loss(jdiff.Model(m, path, "velocity"), k, x),
        data_fn,
        args.steps,
        jax.random.fold_in(key, 0),
    )
    teacher_model = jdiff.Model(teacher, path, "velocity")
    print(f"trained teacher in {secs:.0f}s", flush=True)
    for name, solver in (("Euler", samplers.Euler()), ("Heun", samplers.Heun())):
        for nfe in (10, 20, 50):
            n = nfe // solver.evals_per_step
            grid = samplers.uniform_grid(path, n)
            x = jax.jit(lambda xt, g, solver=solver: samplers.sample(solver, teacher_model, xt, g))(x_T, grid)
            rows.append((f"teacher {name}", solver.nfe(n), float(sw(x))))
    ref = rows[-1][2]  # Heun at 50 NFE

    def few_step(name, flow, gamma=0.0):
        for steps in (1, 2, 4):
            grid = samplers.uniform_grid(path, steps)
            x = jax.jit(lambda xt, g: flowmaps.sample(flow, xt, g, key=jax.random.key(5), gamma=gamma))(x_T, grid)
            rows.append((name, steps, float(sw(x))))

    def new_net(seed):
        return models.FlowMapMLP(2, hidden=128, depth=3, rngs=nnx.Rngs(seed))

    only = set(args.only.split(",")) if args.only else {"shortcut", "meanflow", "cd"}
    if "shortcut" in only:
        net = new_net(1)
        secs = train(
            net,
            lambda m, k, x: flowmaps.shortcut_loss(flowmaps.FlowMap(m, path), k, x),
            data_fn,
            args.steps,
            jax.random.fold_in(key, 1),
        )
        print(f"trained shortcut in {secs:.0f}s", flush=True)
        few_step("shortcut", flowmaps.FlowMap(net, path))

    for p in (1.0, 0.0) if "meanflow" in only else ():
        net = new_net(2)
        secs = train(
            net,
            lambda m, k, x, p=p: flowmaps.meanflow_loss(flowmaps.FlowMap(m, path), k, x, adaptive_p=p),
            data_fn,
            args.steps,
            jax.random.fold_in(key, 2),
        )
        print(f"trained meanflow p={p:g} in {secs:.0f}s", flush=True)
        few_step(f"meanflow p={p:g}", flowmaps.FlowMap(net, path))

    if "cd" in only:
        # Song et al. (2023): EMA target network (decay 0.95 for CD), 18 levels on EDM's range.
        param = flowmaps.DDIMDenoiser(sigma_data=1.0)
        teacher_step = flowmaps.solver_step(samplers.Heun(), teacher_model)
        net = new_net(3)

        def cd(m, target, k, x):
            return flowmaps.consistency_distillation_loss(
                flowmaps.FlowMap(m, path, param),
                k,
                x,
                teacher_step=teacher_step,
                target_flow=flowmaps.FlowMap(target, path, param),
            )

        secs = train_with_ema_target(net, cd, data_fn, args.steps, jax.random.fold_in(key, 3), decay=0.95)
        print(f"trained cd in {secs:.0f}s", flush=True)
        few_step("cd (gamma=1)", flowmaps.FlowMap(net, path, param), gamma=1.0)
        few_step("cd (gamma=0)", flowmaps.FlowMap(net, path, param), gamma=0.0)

    print(
        f"\n{args.dataset}, {args.steps} train steps per model, {args.samples} samples; "
        f"SW1 floor (data vs data) {floor:.4f}"
    )
    print(f"{'sampler':<18}{'NFE':>5}{'SW1':>9}{'/ teacher@50':>14}")
    for name, nfe, v in rows:
        print(f"{name:<18}{nfe:>5}{v:>9.4f}{v / ref:>14.2f}")


if __name__ == "__main__":
    main()
