"""Few-step samplers on the 2-D Gaussian mixture: a T = 4 DDGAN vs a 4-step flow map vs 4-step DDPM.

    python benchmarks/bench_ddgan.py [--steps 4000] [--samples 10000] [--num_steps 4]

The data is jdiff.data's 4-component 2-D mixture (toy.default_mixture), whose exact law the
analytic oracle gives. Trained in one run, each for --steps steps of batch 256 from scratch:
  ddgan     jdiff.models.DDGANMLP (hidden 128, depth 3, latent 16) on the VP path (0.1, 20), T
            uniform steps, trained with jdiff.training.make_train_step on ddgan_loss (R1 0.05,
            Adam(0.5, 0.9) per player at 1e-3, cosine decay, EMA 0.999), sampled with
            jdiff.adversarial.sample (NFE = T);
  shortcut  jdiff.models.FlowMapMLP (hidden 128, depth 3) with flowmaps.shortcut_loss on the
            Linear path, sampled with T flow-map steps (benchmarks/bench_flowmaps.py's trainer);
  ddpm      jdiff.models.MLP eps model (hidden 128, depth 3) with losses.ddpm_loss on the same VP
            path, sampled with samplers.DDPM() (ancestral) on T uniform steps; and the *exact*
            eps of the oracle under the same T-step DDPM and DDIM samplers, the best any T-step
            Gaussian sampler with that grid can do.
Prints the sliced 1-Wasserstein distance (jdiff.metrics.sliced_wasserstein, 256 projections) of
--samples samples to as many fresh data points, with the Monte-Carlo floor (data vs data) and
the ratio to the DDGAN's. Only ratios within this run are meaningful; timings are not measured.
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
from bench_flowmaps import train  # benchmarks/ is the script's directory
from flax import nnx

import jdiff
from jdiff import adversarial, flowmaps, losses, metrics, models, samplers, training
from jdiff.data import toy


def train_ddgan(pair, path, grid, data_fn, steps, *, lr=1e-3, batch=256, r1_gamma=0.05, ema=0.999, chunk=250):
    """Train a GAN pair with the common trainer (two optimizers, one jitted step); returns (graphdef, state).

    The train step is scanned over `chunk` steps per dispatch (the same step function
    experiments/train.py runs one step at a time)."""
    latent = pair.generator.latent_dim

    def loss_fn(net, x0, key):
        out = adversarial.ddgan_loss(
            adversarial.DDGAN(net.generator, path, grid, latent), net.discriminator, key, x0, r1_gamma=r1_gamma
        )
        return out.loss, {"d_loss": out.d_loss, "g_loss": out.g_loss}

    def adam():
        return optax.adam(optax.cosine_decay_schedule(lr, steps, 0.1), b1=0.5, b2=0.9)

    tx = adversarial.two_player_optimizer(adam(), adam())
    graphdef, state = training.init_train_state(pair, tx, jax.random.PRNGKey(0))
    step_fn = training.make_train_step(loss_fn, graphdef, tx, ema=ema, grad_clip_norm=None, donate=False)

    @jax.jit
    def run(state, start):
        def body(state, i):
            state, m = step_fn(state, data_fn(jax.random.fold_in(jax.random.key(7), start + i), batch))
            return state, (m["d_loss"], m["g_loss"], m["finite"])

        return jax.lax.scan(body, state, jnp.arange(chunk))

    for start in range(0, steps, chunk):
        state, (d, g, finite) = run(state, start)
    print(
        f"  ddgan last chunk: d_loss {float(d.mean()):.3f}, g_loss {float(g.mean()):.3f}, "
        f"finite {int(finite.sum())}/{chunk}",
        flush=True,
    )
    return graphdef, state


def ddgan_sampler(graphdef, path, grid, latent):
    @jax.jit
    def draw(params, rest, x_T, key):
        net = nnx.merge(graphdef, params, rest, copy=True)
        return adversarial.sample(adversarial.DDGAN(net.generator, path, grid, latent), key, x_T)

    return draw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--num_steps", type=int, default=4)
    args = ap.parse_args()
    t_start = time.perf_counter()
    n, T = args.samples, args.num_steps

    gm = toy.default_mixture()

    def data_fn(key, num):
        return gm.sample(key, num).astype(jnp.float32)

    data = data_fn(jax.random.key(1), n)
    sw = jax.jit(lambda x: metrics.sliced_wasserstein(jax.random.key(3), x, data, p=1.0))
    floor = float(sw(data_fn(jax.random.key(4), n)))
    vp, lin = jdiff.VPLinear(), jdiff.Linear()
    rows = []

    grid = adversarial.ddgan_grid(vp, T)
    pair = models.DDGANMLP(2, latent_dim=16, hidden=128, depth=3, rngs=nnx.Rngs(0))
    t0 = time.perf_counter()
    graphdef, state = train_ddgan(pair, vp, grid, data_fn, args.steps)
    print(f"trained ddgan in {time.perf_counter() - t0:.0f}s", flush=True)
    draw = ddgan_sampler(graphdef, vp, grid, 16)
    x_T = vp.prior_sample(jax.random.key(2), (n, 2))
    rows.append((f"DDGAN, T = {T} (EMA)", T, float(sw(draw(state.ema_params, state.rest, x_T, jax.random.key(5))))))
    rows.append((f"DDGAN, T = {T} (raw weights)", T, float(sw(draw(state.params, state.rest, x_T, jax.random.key(5))))))

    net = models.FlowMapMLP(2, hidden=128, depth=3, rngs=nnx.Rngs(1))
    secs = train(
        net,
        lambda m, k, x: flowmaps.shortcut_loss(flowmaps.FlowMap(m, lin), k, x),
        data_fn,
        args.steps,
        jax.random.key(11),
        batch=256,
    )
    print(f"trained shortcut in {secs:.0f}s", flush=True)
    flow = flowmaps.FlowMap(net, lin)
    x = jax.jit(lambda xt: flowmaps.sample(flow, xt, samplers.uniform_grid(lin, T)))(
        lin.prior_sample(jax.random.key(2), (n, 2))
    )
    rows.append((f"shortcut flow map, {T} steps", T, float(sw(x))))

    eps_net = models.MLP(2, hidden=128, depth=3, kind="eps", rngs=nnx.Rngs(2))
    secs = train(
        eps_net,
        lambda m, k, x: losses.ddpm_loss(jdiff.Model(m, vp, "eps"), k, x),
        data_fn,
        args.steps,
        jax.random.key(12),
        batch=256,
    )
    print(f"trained ddpm eps model in {secs:.0f}s", flush=True)
    ts = samplers.uniform_grid(vp, T)
    for name, model in (("trained", jdiff.Model(eps_net, vp, "eps")), ("exact oracle", gm.as_model(vp, "eps"))):
        for sname, solver in (("DDPM", samplers.DDPM()), ("DDIM", samplers.DDIM())):
            if name == "trained" and sname == "DDIM":
                continue
            x = jax.jit(lambda xt, s=solver, m=model: samplers.sample(s, m, xt, ts, key=jax.random.key(6)))(x_T)
            rows.append((f"{sname}, {T} steps, {name} eps", solver.nfe(T), float(sw(x))))

    ref = rows[0][2]
    print(
        f"\n2-D Gaussian mixture (4 components), {args.steps} train steps per model (batch 256), {n} samples; "
        f"SW1 floor (data vs data) {floor:.4f}\n"
    )
    print("| sampler | NFE | SW1 to data | / DDGAN |")
    print("|---|---:|---:|---:|")
    print(f"| data vs data (floor) | - | {floor:.4f} | {floor / ref:.2f} |")
    for name, nfe, v in rows:
        print(f"| {name} | {nfe} | {v:.4f} | {v / ref:.2f} |")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
