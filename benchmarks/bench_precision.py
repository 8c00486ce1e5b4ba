"""bfloat16 compute against float32: step time, and how far bfloat16 samples land from float32 ones.

    python benchmarks/bench_precision.py                       # both tables of docs/precision.md
    python benchmarks/bench_precision.py --only speed --repeats 5 --networks mlp,dit
    python benchmarks/bench_precision.py --only accuracy --paths ve,linear

speed: the jitted train step (flow-matching loss, Adam, float32 master weights; `jdiff.training`)
and the jitted forward pass of the MLP (the `make demo` network), the U-Net of digits_vp and a
small DiT, on the 8x8 digits (batch 128), with `jdiff.Policy()` and with
`jdiff.Policy(compute_dtype="bfloat16")` (matmuls and convolutions in bfloat16; norms, softmax,
time features and the loss in float32). Runs are interleaved, `--repeats` times each; medians.
On a CPU without bfloat16 units XLA emulates bfloat16 arithmetic through float32 conversions, so
expect ratios >= 1 here: the policy is for TPUs and recent GPUs, where bfloat16 matmuls run at 2x
or more the float32 rate. Compare ratios measured in one run (the machine is shared).

accuracy: samples of the exact Gaussian-mixture oracle from a bfloat16 network against a float32
one, every path x kind, worst case over every solver of tests/test_precision.py (17 fixed-step
configurations, the adaptive PF-ODE, the reverse SDE; 16 Karras steps from the same bfloat16 x_T
and noise; float32 state). The bfloat16 network is the oracle on bfloat16 inputs with its
prediction rounded to bfloat16; each cell is the largest (over solvers) median / 90th percentile
over 64 samples of the distance to the float32 network's sample (the mixture's components have
standard deviations 0.14 to 0.32). The kinds are emulated on the host as in the test, so one
compiled program per path covers them all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jdiff
from jdiff import losses, models, predictions, training
from jdiff import samplers as S
from jdiff.data import images

BF16 = jdiff.Policy(compute_dtype="bfloat16")


# ---------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------


NETWORKS = {  # --networks key: (table name, builder, example shape)
    "mlp": (
        "mlp 64-256x3 (make demo)",
        lambda rngs, **kw: models.MLP(64, hidden=256, depth=3, kind="velocity", rngs=rngs, **kw),
        (64,),
    ),
    "unet": (
        "unet ch64 (digits_vp)",
        lambda rngs, **kw: models.UNet(
            8,
            1,
            ch=64,
            ch_mult=(1, 2),
            num_res_blocks=2,
            attn_resolutions=(4,),
            dropout=0.0,
            kind="velocity",
            rngs=rngs,
            **kw,
        ),
        (8, 8, 1),
    ),
    "dit": (
        "dit 128x4 p2",
        lambda rngs, **kw: models.DiT(
            8, 1, patch_size=2, hidden=128, depth=4, num_heads=4, kind="velocity", rngs=rngs, **kw
        ),
        (8, 8, 1),
    ),
}


def _networks(policy, keys):
    kw = {} if policy.compute_dtype is None else policy.network_kwargs()
    return {NETWORKS[k][0]: (NETWORKS[k][1](nnx.Rngs(0), **kw), NETWORKS[k][2]) for k in keys}


def _timers(net, shape, policy, x):
    path = jdiff.Linear()
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(net, tx, jax.random.PRNGKey(0))

    def loss_fn(net, batch, key):
        return losses.cfm_loss(jdiff.Model(net, path, "velocity", policy=policy), key, batch["x"])

    step = training.make_train_step(loss_fn, graphdef, tx, donate=False)
    batch = {"x": x.reshape((-1, *shape))}
    forward = jax.jit(
        lambda params, x: jdiff.Model(nnx.merge(graphdef, params, state.rest), path, "velocity", policy=policy)(x, 0.5)
    )

    def time_step(n):
        jax.block_until_ready(step(state, batch))
        t0 = time.perf_counter()
        for _ in range(n):
            out = step(state, batch)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / n

    def time_forward(n):
        jax.block_until_ready(forward(state.params, batch["x"]))
        t0 = time.perf_counter()
        for _ in range(n):
            out = forward(state.params, batch["x"])
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / n

    return time_step, time_forward


def speed(repeats: int, iters: int, batch: int, keys):
    x = jnp.asarray(images.load_digits().x[:batch], jnp.float32)
    f32, bf16 = _networks(jdiff.Policy(), keys), _networks(BF16, keys)
    nets = {name: {"f32": f32[name], "bf16": bf16[name]} for name in f32}
    print(
        f"bfloat16 vs float32 on {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {batch}, "
        f"median of {repeats} x {iters} calls\n"
    )
    print(
        "| network | f32 train step (ms) | bf16 train step (ms) | bf16 / f32 | f32 forward (ms) | "
        "bf16 forward (ms) | bf16 / f32 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, pair in nets.items():
        timers = {k: _timers(net, shape, jdiff.Policy() if k == "f32" else BF16, x) for k, (net, shape) in pair.items()}
        res = {(k, w): [] for k in timers for w in (0, 1)}
        for _ in range(repeats):  # interleaved
            for k, fns in timers.items():
                for w in (0, 1):
                    res[k, w].append(fns[w](iters))
        med = {key: 1e3 * float(np.median(v)) for key, v in res.items()}
        print(
            f"| {name} | {med['f32', 0]:.2f} | {med['bf16', 0]:.2f} | {med['bf16', 0] / med['f32', 0]:.2f} | "
            f"{med['f32', 1]:.2f} | {med['bf16', 1]:.2f} | {med['bf16', 1] / med['f32', 1]:.2f} |",
            flush=True,
        )


# ---------------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------------

PATHS = {
    "vp_linear": jdiff.VPLinear(),
    "vp_cosine": jdiff.VPCosine(),
    "subvp": jdiff.SubVP(),
    "ve": jdiff.VEGeometric(),
    "edm": jdiff.EDM(),
    "linear": jdiff.Linear(),
    "trig": jdiff.Trigonometric(),
    "logsnr": jdiff.LogSNRPath(lambda t: -2.0 * jnp.log(jnp.tan(0.5 * jnp.pi * t)) + 1.0),
    "custom": jdiff.CustomPath(lambda t: (1.0 - t) ** 2, lambda t: jnp.sqrt(t)),
}  # the paths of tests/helpers.py all_paths()
SOLVERS = {  # the configurations of tests/test_precision.py
    "ddpm": S.DDPM(),
    "ddim_eta": S.DDIM(eta=0.5),
    "euler": S.Euler(),
    "heun_churn": S.Heun(s_churn=4.0, s_noise=1.007),
    "dpm_solver_2": S.DPMSolver(order=2),
    "dpm_solver_3": S.DPMSolver(order=3),
    "dpm_solver_2m": S.DPMSolver2M(),
    "dpmpp_2m": S.DPMSolverPP2M(),
    "dpmpp_3m": S.DPMSolverPP3M(),
    "dpmpp_2m_sde": S.DPMSolverPP2MSDE(),
    "unipc_bh1": S.UniPC(predictor_order=3, variant="bh1"),
    "unipc_bh2": S.UniPC(predictor_order=2, variant="bh2"),
    "lms_1": S.LMS(order=1),
    "lms_3": S.LMS(order=3),
    "euler_maruyama": S.EulerMaruyama(),
    "pc": S.PredictorCorrector(S.EulerMaruyama(), n_corrector=1, snr=0.16),
    "pc_lms": S.PredictorCorrector(S.LMS(order=3), n_corrector=1, snr=0.16),
}
KINDS = predictions.KINDS
VARIANTS = [(kind, bf16) for kind in KINDS for bf16 in (False, True)]


def mixture():
    """The 2-D three-component mixture of the tests (tests/helpers.py mixture_2d), float32."""
    return jdiff.GaussianMixture(
        weights=jnp.array([0.5, 0.3, 0.2], jnp.float32),
        means=jnp.array([[-1.0, 0.5], [1.2, 1.0], [0.3, -1.3]], jnp.float32),
        covs=jnp.array(
            [[[0.10, 0.03], [0.03, 0.05]], [[0.04, -0.01], [-0.01, 0.08]], [[0.06, 0.0], [0.0, 0.02]]], jnp.float32
        ),
    )


def _round(x):
    return x.astype(jnp.bfloat16).astype(x.dtype)


def _emulated(path, gm):
    """One "x0" model standing for every (kind, float32 / bfloat16) network, the variant read from
    `cond` on the host: the oracle's kind-`kind` prediction (on bfloat16-rounded x, rounded to
    bfloat16, for the bfloat16 variants), converted to the denoiser from the state x in float64.
    The emulation of tests/test_precision.py, which checks it against real bfloat16 Models."""
    exact = {k: gm.as_model(path, k) for k in KINDS}

    def all_variants(x, t):
        out = []
        for v, (kind, bf16) in enumerate(VARIANTS):
            xv, tv = x[v], t[v]
            pred = exact[kind](_round(xv) if bf16 else xv, tv)
            pred = _round(pred) if bf16 else pred
            f64 = jnp.float64
            out.append(predictions.convert(pred.astype(f64), kind, "x0", xv.astype(f64), tv.astype(f64), path))
        return jnp.stack(out).astype(jnp.float32)

    fn = jax.jit(all_variants)

    def host(x, t, _variant):
        x = np.asarray(x)
        return np.asarray(fn(x, np.broadcast_to(np.asarray(t).reshape(-1), x.shape[:1])))

    def net(x, t, variant):
        return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x, t, variant, vmap_method="expand_dims")

    return jdiff.Model(net, path, "x0")


def accuracy(path_names, n: int, num_steps: int):
    gm = mixture()
    print(
        f"bfloat16 vs float32 network: median / 90th percentile of |x_bf16 - x_f32| over {n} samples, worst over "
        f"{len(SOLVERS)} fixed-step solvers, the PF-ODE and the reverse SDE; {num_steps} Karras steps, "
        "float32 state\n"
    )
    print("| path | sigma/alpha at t_max | " + " | ".join(KINDS) + " |")
    print("|---|---|" + "---|" * len(KINDS))
    for pname in path_names:
        path = PATHS[pname]
        model = _emulated(path, gm)
        key = jax.random.PRNGKey(1)

        def one(x, variant, grid, model=model, key=key):
            out = {k: S.sample(sv, model, x, grid, cond=variant, key=key) for k, sv in SOLVERS.items()}
            out["pf_ode"] = S.solve_pf_ode(model, x, cond=variant, rtol=1e-4, atol=1e-4).sample
            out["reverse_sde"] = S.solve_reverse_sde(model, key, x, cond=variant, num_steps=32).sample
            return out

        x_T = path.prior_sample(jax.random.PRNGKey(0), (n, 2), jnp.float32).astype(jnp.bfloat16)
        v = len(VARIANTS)
        variants = jnp.repeat(jnp.arange(v)[:, None], n, axis=1)
        run = jax.jit(jax.vmap(one, in_axes=(0, 0, None)))
        out = run(jnp.broadcast_to(x_T, (v, *x_T.shape)), variants, S.karras_grid(path, num_steps).astype(jnp.float32))
        cells = []
        for i in range(len(KINDS)):
            meds, p90s = [], []
            for y in out.values():
                d = np.linalg.norm(np.asarray(y[2 * i + 1]) - np.asarray(y[2 * i]), axis=-1)
                meds.append(np.median(d) if np.all(np.isfinite(d)) else np.inf)
                p90s.append(np.quantile(d, 0.9) if np.all(np.isfinite(d)) else np.inf)
            cells.append(f"{max(meds):.2g} / {max(p90s):.2g}")
        gain = float(path.sigma(path.t_max) / path.alpha(path.t_max))
        print(f"| {pname} | {gain:.3g} | " + " | ".join(cells) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("speed", "accuracy"), default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--networks", default=",".join(NETWORKS), help="speed: comma-separated of " + ",".join(NETWORKS)
    )
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--num_steps", type=int, default=16)
    args = parser.parse_args()
    if args.only in (None, "speed"):
        speed(args.repeats, args.iters, args.batch, args.networks.split(","))
        print()
    if args.only in (None, "accuracy"):
        jax.config.update("jax_enable_x64", True)  # the host-side conversions run in float64, as in the tests
        accuracy(args.paths.split(","), args.samples, args.num_steps)


if __name__ == "__main__":
    main()
