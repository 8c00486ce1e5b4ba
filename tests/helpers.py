"""Shared test fixtures: the analytic Gaussian-mixture oracle, every path, a compile counter."""

import contextlib

import jax
import jax.numpy as jnp

import jdiff
from jdiff import paths, samplers


def all_paths():
    """One instance of every built-in path, with ids for pytest.parametrize."""
    return {
        "vp_linear": paths.VPLinear(),
        "vp_cosine": paths.VPCosine(),
        "subvp": paths.SubVP(),
        "ve": paths.VEGeometric(),
        "edm": paths.EDM(),
        "linear": paths.Linear(),
        "trig": paths.Trigonometric(),
        "logsnr": paths.LogSNRPath(lambda t: -2.0 * jnp.log(jnp.tan(0.5 * jnp.pi * t)) + 1.0),
        "custom": paths.CustomPath(lambda t: (1.0 - t) ** 2, lambda t: jnp.sqrt(t)),
    }


def mixture_2d(dtype=jnp.float64):
    """A 2-D mixture of three anisotropic Gaussians; components 0 and 1 are class 0, 2 is class 1."""
    return jdiff.GaussianMixture(
        weights=jnp.array([0.5, 0.3, 0.2], dtype),
        means=jnp.array([[-1.0, 0.5], [1.2, 1.0], [0.3, -1.3]], dtype),
        covs=jnp.array(
            [[[0.10, 0.03], [0.03, 0.05]], [[0.04, -0.01], [-0.01, 0.08]], [[0.06, 0.0], [0.0, 0.02]]], dtype
        ),
        labels=jnp.array([0, 0, 1]),
    )


def mixture_1d(dtype=jnp.float64):
    return jdiff.GaussianMixture(
        weights=jnp.array([0.3, 0.7], dtype), means=jnp.array([[-1.0], [2.0]], dtype), stds=jnp.array([0.5, 0.8], dtype)
    )


def null_class_oracle(gm, path, kind):
    """The exact model of `gm` with a null class for classifier-free guidance: cond == num_classes
    selects the unconditional model (the mixture itself refuses a class with no component)."""
    uncond = gm.as_model(path, kind)
    null = gm.num_classes

    def net(x, t, cond=None):
        if cond is None:
            return uncond(x, t)
        cond = jnp.asarray(cond)
        # The conditional oracle is evaluated on a valid class where cond is the null class, and
        # the unconditional prediction is selected there.
        pc = uncond(x, t, jnp.minimum(cond, null - 1))
        return jnp.where((cond == null)[:, None], uncond(x, t), pc)

    return jdiff.Model(net, path, kind)


@contextlib.contextmanager
def count_compiles():
    """Count XLA compilations inside the block: `with count_compiles() as n: ...; n()`."""
    counter = [0]

    def listener(event, *args, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            counter[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield lambda: counter[0]
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def callback_oracle(path, kind, gm=None, counter=None, differentiable=False, null_class=False):
    """The exact batched model of `gm` (default `mixture_2d()`) on `path` as a `jdiff.Model`
    whose network runs on the host through a callback.

    With `differentiable`, the network has a custom VJP whose backward pass is a second host
    callback (the oracle's own `jax.vjp` in x and t), so `jax.grad` goes through samplers
    built on it (grid optimisation); `cond` must then be None.

    One compiled oracle per (path, kind, shape) is then shared by every solver program, which
    keeps compile times down; the values are the oracle's own, bit for bit. `cond` (None or
    one class per example) goes to the class-conditional oracle. With a `counter` (a
    one-element list) every evaluation is counted; the callback is then an `io_callback`,
    which XLA never merges or drops, so the count is the true NFE. With `null_class`, cond ==
    num_classes is the unconditional model (`null_class_oracle`, for classifier-free guidance).
    """
    import jax.experimental
    import numpy as np

    gm = mixture_2d() if gm is None else gm
    exact = null_class_oracle(gm, path, kind) if null_class else gm.as_model(path, kind)
    f = jax.jit(lambda x, t, *cond: exact(x, t, *cond))

    def host(x, t, *cond):
        if counter is not None:
            counter[0] += 1
        return np.asarray(f(x, t, *cond))

    if differentiable:
        vjp = jax.jit(lambda x, t, g: jax.vjp(lambda x, t: exact(x, t), x, t)[1](g))

        @jax.custom_vjp
        def diff_net(x, t):
            return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x, t)

        def fwd(x, t):
            return diff_net(x, t), (x, t)

        def bwd(res, g):
            x, t = res
            shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(t.shape, t.dtype))
            return jax.pure_callback(lambda *a: tuple(np.asarray(v) for v in vjp(*a)), shapes, x, t, g)

        diff_net.defvjp(fwd, bwd)
        return jdiff.Model(lambda x, t, cond=None: diff_net(x, jnp.asarray(t, x.dtype)), path, kind)

    def net(x, t, cond=None):
        args = (x, t) if cond is None else (x, t, cond)
        out = jax.ShapeDtypeStruct(x.shape, x.dtype)
        if counter is not None:
            return jax.experimental.io_callback(host, out, *args)
        return jax.pure_callback(host, out, *args)

    return jdiff.Model(net, path, kind)


def random_torch_weights(net, seed=0):
    """Random weights for a feature network (`jdiff.metrics.InceptionV3` / `DinoV2`, possibly
    abstract) as the PyTorch checkpoint would hold them: {key: array} in the key names and torch
    layouts (OIHW convolutions, (out, in) linear weights) of `net.torch_layout()`.

    Values keep a random network alive: BatchNorm variances in [0.5, 1.5], positive shifts,
    He-scaled weights, LayerNorm / LayerScale gains near 1.
    """
    import numpy as np
    from flax import nnx

    rng = np.random.default_rng(seed)
    flat = dict(nnx.to_flat_state(nnx.state(net)))
    out = {}
    for key, (path, transform) in net.torch_layout().items():
        shape = tuple(flat[path].shape)
        if transform is not None:  # back to the torch layout: HWIO -> OIHW, (in, out) -> (out, in)
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            a = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("running_mean", "bias"):
            a = 0.1 + 0.05 * rng.standard_normal(shape)
        elif leaf == "gamma" or (leaf == "weight" and len(shape) == 1):  # LayerScale, BatchNorm/LayerNorm gains
            a = rng.uniform(0.8, 1.2, shape)
        elif leaf == "weight":
            fan_in = int(np.prod(shape[1:]))
            a = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        else:  # cls_token, pos_embed
            a = 0.5 * rng.standard_normal(shape)
        out[key] = a.astype(np.float32)
    return out


def random_autoencoder(seed=0, **kwargs):
    """A `jdiff.models.AutoencoderKL(**kwargs)` with random NumPy weights, built without an
    initialization program (eager or jitted threefry initialization of even a tiny one compiles for
    tens of seconds on a busy 2-core CPU): conv / linear kernels N(0, 1 / fan_in), biases
    N(0, 0.05^2), GroupNorm gains 1 + N(0, 0.1^2); the latent normalization is the kwargs' one."""
    import numpy as np
    from flax import nnx

    from jdiff.models import AutoencoderKL

    abstract = nnx.eval_shape(lambda: AutoencoderKL(**kwargs, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    rng = np.random.default_rng(seed)

    def param(path, s):
        name = " ".join(str(getattr(k, "key", "")) for k in path)  # DictKeys, then the Variable's value
        if "kernel" in name:
            a = rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
        elif "bias" in name:
            a = 0.05 * rng.standard_normal(s.shape)
        else:  # GroupNorm scale
            a = 1.0 + 0.1 * rng.standard_normal(s.shape)
        return jnp.asarray(a, s.dtype)

    params = jax.tree_util.tree_map_with_path(param, params)
    rest = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), rest)
    ae = nnx.merge(graphdef, params, rest)
    ae.scale[...] = jnp.asarray(kwargs.get("scaling_factor", 1.0), jnp.float32)
    ae.shift[...] = jnp.asarray(kwargs.get("shift_factor", 0.0), jnp.float32)
    return ae


def every_solver():
    """One configuration of every fixed-step solver (the stochastic variants exercise the
    deterministic parts too), for the float32-endpoint and bfloat16 sweeps."""
    return {
        "ddpm": samplers.DDPM(),
        "ddim_eta": samplers.DDIM(eta=0.5),
        "euler": samplers.Euler(),
        "heun_churn": samplers.Heun(s_churn=4.0, s_noise=1.007),
        "dpm_solver_2": samplers.DPMSolver(order=2),
        "dpm_solver_3": samplers.DPMSolver(order=3),
        "dpm_solver_2m": samplers.DPMSolver2M(),
        "dpmpp_2m": samplers.DPMSolverPP2M(),
        "dpmpp_3m": samplers.DPMSolverPP3M(),
        "dpmpp_2m_sde": samplers.DPMSolverPP2MSDE(),
        "unipc_bh1": samplers.UniPC(predictor_order=3, variant="bh1"),
        "unipc_bh2": samplers.UniPC(predictor_order=2, variant="bh2"),
        "lms_1": samplers.LMS(order=1),
        "lms": samplers.LMS(order=3),
        "euler_maruyama": samplers.EulerMaruyama(),
        "pc": samplers.PredictorCorrector(samplers.EulerMaruyama(), n_corrector=1, snr=0.16),
        "pc_lms": samplers.PredictorCorrector(samplers.LMS(order=3), n_corrector=1, snr=0.16),
    }
