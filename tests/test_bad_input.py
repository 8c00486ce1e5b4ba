"""The numerical core refuses malformed input with an error that names the argument.

Property style: every public sampler, loss, guidance and likelihood entry point is fed the
malformed inputs a user plausibly passes (wrong shapes, wrong dtypes, increasing or non-monotone
grids, out-of-range times, labels out of range, missing cond), and each must raise a ValueError or
TypeError whose message names the offending argument (in backticks, as every jdiff error does).
Shapes and dtypes are static, so those errors must also come while tracing under `jax.jit`;
traced class labels are checked at run time (`equinox.error_if`), with the same message.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import mixture_2d

import jdiff
from jdiff import flowmaps, guidance, likelihood, losses, models
from jdiff import samplers as S

F32 = jnp.float32
PATH = jdiff.VPCosine()
GM = mixture_2d(F32)  # components 0, 1 are class 0, component 2 is class 1
MODEL = GM.as_model(PATH, "eps")
B = 8
X = PATH.prior_sample(jax.random.PRNGKey(0), (B, 2), F32)
X0 = GM.sample(jax.random.PRNGKey(1), B)
KEY = jax.random.PRNGKey(2)
GRID = S.uniform_grid(PATH, 4)
LABELS = jnp.arange(B) % 2


def _zero_flow(x, t, s, cond=None):
    return jnp.zeros_like(x)


FLOW = flowmaps.FlowMap(_zero_flow, PATH)
FLOW_DDIM = flowmaps.FlowMap(_zero_flow, PATH, flowmaps.DDIMDenoiser())
TEACHER = flowmaps.solver_step(S.DDIM(), MODEL)

# -- malformed inputs -----------------------------------------------------------------------

BAD_GRIDS = {
    "increasing": jnp.linspace(0.1, 0.9, 5),
    "non_monotone": jnp.array([0.9, 0.5, 0.6, 0.1]),
    "two_dimensional": GRID[None],
    "one_time": GRID[:1],
    "bfloat16": GRID.astype(jnp.bfloat16),
    "beyond_t_max": jnp.array([1.5, 0.5, 0.1]),
    "below_t_min": jnp.array([0.9, 0.5, -0.1]),
    "nan": jnp.array([0.9, jnp.nan, 0.1]),
}
BAD_DATA = {"integer": X.astype(jnp.int32), "scalar": jnp.asarray(1.0), "string": "x"}
BAD_KEYS = {"int": 3, "float_array": jnp.ones((2,), F32)}
BAD_TIMES = {"above_one": 2.0, "negative": -0.5, "beyond_t_max": 0.9995, "wrong_shape": jnp.full((3,), 0.5)}

# -- entry points, each a function of the argument being varied -------------------------------

SAMPLERS = {  # grid, x_T, key
    "sample": lambda x_T=X, grid=GRID, key=KEY: S.sample(S.DDPM(), MODEL, x_T, grid, key=key),
    "flowmaps.sample": lambda x_T=X, grid=GRID, key=KEY: flowmaps.sample(FLOW, x_T, grid, key=key, gamma=0.5),
}
DIFFRAX = {  # t0 / t1, x_T, key
    "solve_pf_ode": lambda x_T=X, t0=None, t1=None, key=KEY: S.solve_pf_ode(MODEL, x_T, t0=t0, t1=t1),
    "solve_reverse_sde": lambda x_T=X, t0=None, t1=None, key=KEY: S.solve_reverse_sde(
        MODEL, key, x_T, t0=t0, t1=t1, num_steps=4
    ),
}
LOSSES = {  # x0, key, t where the loss takes it
    "dsm_loss": lambda x0=X0, key=KEY, t=None: losses.dsm_loss(MODEL, key, x0, t=t),
    "ddpm_loss": lambda x0=X0, key=KEY, t=None: losses.ddpm_loss(MODEL, key, x0, t=t),
    "cfm_loss": lambda x0=X0, key=KEY, t=None: losses.cfm_loss(MODEL, key, x0, t=t),
    "edm_loss": lambda x0=X0, key=KEY, t=None: losses.edm_loss(MODEL, key, x0, t=t),
    "vdm_loss": lambda x0=X0, key=KEY, t=None: losses.vdm_loss(MODEL, key, x0, t=t, num_bins=None),
    "vlb": lambda x0=X0, key=KEY, t=None: losses.vlb(MODEL, key, x0, num_steps=10, num_bins=None),
    "vlb_bits_per_dim": lambda x0=X0, key=KEY, t=None: likelihood.vlb_bits_per_dim(
        MODEL, key, x0, num_steps=10, num_bins=None
    ),
    "elbo_bits_per_dim": lambda x0=X0, key=KEY, t=None: likelihood.elbo_bits_per_dim(
        MODEL, key, x0, num_time_samples=2, num_bins=None
    ),
    "noisy_classifier_loss": lambda x0=X0, key=KEY, t=None: guidance.noisy_classifier_loss(
        lambda x, t: jnp.zeros((x.shape[0], 2)), PATH, key, x0, cond=LABELS, t=t
    ),
    "consistency_training_loss": lambda x0=X0, key=KEY, t=None: flowmaps.consistency_training_loss(
        FLOW_DDIM, key, x0, step=0, total_steps=10
    ),
    "consistency_distillation_loss": lambda x0=X0, key=KEY, t=None: flowmaps.consistency_distillation_loss(
        FLOW_DDIM, key, x0, teacher_step=TEACHER
    ),
    "meanflow_loss": lambda x0=X0, key=KEY, t=None: flowmaps.meanflow_loss(FLOW, key, x0),
    "shortcut_loss": lambda x0=X0, key=KEY, t=None: flowmaps.shortcut_loss(FLOW, key, x0, max_steps=4),
    "progressive_distillation_loss": lambda x0=X0, key=KEY, t=None: flowmaps.progressive_distillation_loss(
        MODEL, key, x0, teacher_step=TEACHER, num_student_steps=2
    ),
}
TAKES_T = ("dsm_loss", "ddpm_loss", "cfm_loss", "edm_loss", "vdm_loss", "noisy_classifier_loss")


def _cases():
    """(id, call, argument the error must name)."""
    for (s, call), (g, grid) in itertools.product(SAMPLERS.items(), BAD_GRIDS.items()):
        yield f"{s}-grid-{g}", lambda c=call, v=grid: c(grid=v), "grid"
    for (s, call), (d, x) in itertools.product({**SAMPLERS, **DIFFRAX}.items(), BAD_DATA.items()):
        yield f"{s}-x_T-{d}", lambda c=call, v=x: c(x_T=v), "x_T"
    for (s, call), (k, key) in itertools.product({**SAMPLERS, **DIFFRAX}.items(), BAD_KEYS.items()):
        if s != "solve_pf_ode":  # deterministic: takes no key
            yield f"{s}-key-{k}", lambda c=call, v=key: c(key=v), "key"
    for s, call in DIFFRAX.items():
        for arg, (name, t) in itertools.product(("t0", "t1"), BAD_TIMES.items()):
            if name != "wrong_shape":
                yield f"{s}-{arg}-{name}", lambda c=call, a=arg, v=t: c(**{a: v}), arg
        yield f"{s}-t0-below-t1", lambda c=call: c(t0=0.2, t1=0.5), "t0"
    for (s, call), (d, x) in itertools.product(LOSSES.items(), BAD_DATA.items()):
        yield f"{s}-x0-{d}", lambda c=call, v=x: c(x0=v), "x0"
    for (s, call), (k, key) in itertools.product(LOSSES.items(), BAD_KEYS.items()):
        yield f"{s}-key-{k}", lambda c=call, v=key: c(key=v), "key"
    for (s, call), (name, t) in itertools.product(((s, LOSSES[s]) for s in TAKES_T), BAD_TIMES.items()):
        yield f"{s}-t-{name}", lambda c=call, v=t: c(t=v), "t"


CASES = list(_cases())


@pytest.mark.parametrize("call, argument", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_input_names_the_argument(call, argument):
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        call()


# Shape and dtype errors are raised while tracing: the malformed array is a jit argument.
TRACED = [
    ("sample-grid-2d", lambda g: S.sample(S.DDIM(), MODEL, X, g), GRID[None], "grid"),
    ("sample-grid-bf16", lambda g: S.sample(S.DDIM(), MODEL, X, g), GRID.astype(jnp.bfloat16), "grid"),
    ("sample-x_T-int", lambda x: S.sample(S.DDIM(), MODEL, x, GRID), X.astype(jnp.int32), "x_T"),
    ("flowmaps.sample-grid-2d", lambda g: flowmaps.sample(FLOW, X, g), GRID[None], "grid"),
    ("solve_pf_ode-x_T-int", lambda x: S.solve_pf_ode(MODEL, x), X.astype(jnp.int32), "x_T"),
    ("solve_reverse_sde-key-float", lambda k: S.solve_reverse_sde(MODEL, k, X, num_steps=2), jnp.ones(2, F32), "key"),
    ("dsm_loss-x0-int", lambda x: losses.dsm_loss(MODEL, KEY, x), X0.astype(jnp.int32), "x0"),
    ("dsm_loss-t-shape", lambda t: losses.dsm_loss(MODEL, KEY, X0, t=t), jnp.full((3,), 0.5), "t"),
    ("cfm_loss-x1-shape", lambda x1: losses.cfm_loss(MODEL, KEY, X0, x1=x1), jnp.zeros((B, 3)), "x1"),
    ("vlb-grid-2d", lambda g: losses.vlb(MODEL, KEY, X0, grid=g, num_bins=None), GRID[None], "grid"),
    ("ode_log_likelihood-x-int", lambda x: likelihood.ode_log_likelihood(MODEL, x), X[0].astype(jnp.int32), "x"),
    (
        "ode_log_likelihood-probes-shape",
        lambda p: likelihood.ode_log_likelihood(MODEL, X[0], divergence=likelihood.Hutchinson(2), probes=p),
        jnp.ones((3, 2)),
        "probes",
    ),
    ("ode_log_likelihood_batch-x-scalar", lambda x: likelihood.ode_log_likelihood_batch(MODEL, x), X[0, 0], "x"),
    (
        "classifier_free-w-shape",
        lambda w: guidance.classifier_free(MODEL, w, null_cond=None)(X, 0.5, LABELS),
        jnp.ones((3,)),
        "w",
    ),
    ("drop_labels-labels-float", lambda y: guidance.drop_labels(KEY, y, 0.1, 2), jnp.ones((B,), F32), "labels"),
    (
        "mlp-cond-float",
        lambda c: jdiff.Model(models.MLP(2, hidden=8, depth=1, num_classes=2, rngs=nnx.Rngs(0)), PATH, "eps")(
            X, 0.5, c
        ),
        jnp.ones((B,), F32),
        "cond",
    ),
]


@pytest.mark.parametrize("fn, bad, argument", [c[1:] for c in TRACED], ids=[c[0] for c in TRACED])
def test_shape_and_dtype_errors_come_at_trace_time(fn, bad, argument):
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        jax.jit(fn).trace(bad)  # tracing only: nothing is compiled or run


# -- increasing / non-monotone grids of the discrete bound (t_0 < ... < t_T) -------------------


@pytest.mark.parametrize(
    "grid",
    [jnp.linspace(0.9, 0.1, 5), jnp.array([0.1, 0.5, 0.4, 0.9]), jnp.array([0.1, 1.5])],
    ids=["decreasing", "non_monotone", "beyond_t_max"],
)
def test_vlb_grid_must_increase_inside_the_path_range(grid):
    with pytest.raises(ValueError, match="`grid`"):
        losses.vlb_terms(MODEL, KEY, X0, grid=grid, num_bins=None)


# -- a path passed by its name -----------------------------------------------------------------

BY_NAME = {
    "Model": lambda p: jdiff.Model(_zero_flow, p, "eps"),
    "edm_denoiser": lambda p: jdiff.edm_denoiser(_zero_flow, p),
    "FlowMap": lambda p: flowmaps.FlowMap(_zero_flow, p),
    "GaussianMixture.as_model": lambda p: GM.as_model(p, "eps"),
    "uniform_grid": lambda p: S.uniform_grid(p, 4),
    "karras_grid": lambda p: S.karras_grid(p, 4),
    "log_snr_grid": lambda p: S.log_snr_grid(p, 4),
    "convert": lambda p: jdiff.convert(X, "eps", "x0", X, 0.5, p),
    "convert_same_kind": lambda p: jdiff.convert(X, "eps", "eps", X, 0.5, p),
    "uniform_time": lambda p: losses.uniform_time(KEY, (B,), p),
    "noisy_classifier_loss": lambda p: guidance.noisy_classifier_loss(
        lambda x, t: jnp.zeros((x.shape[0], 2)), p, KEY, X0, cond=LABELS
    ),
}


@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_path_passed_as_a_string_is_refused_by_name(name):
    """A path's config name ("vp_cosine") is for experiments/_names.py; the library takes the object
    and says so (it failed with "'str' object has no attribute 'alpha'")."""
    with pytest.raises(TypeError, match=r"`path` must be a jdiff path \(an AbstractPath"):
        BY_NAME[name]("vp_cosine")


# -- labels out of range and missing cond ----------------------------------------------------

NETS = {
    "mlp": lambda: models.MLP(2, hidden=8, depth=1, num_classes=3, rngs=nnx.Rngs(0)),
    "unet": lambda: models.UNet(
        4, 1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_classes=3, dropout=0.0, rngs=nnx.Rngs(0)
    ),
    "dit": lambda: models.DiT(4, 1, patch_size=2, hidden=8, depth=1, num_heads=2, num_classes=3, rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("label", [3 + 1, -1], ids=["beyond_null_class", "negative"])
def test_network_class_labels_out_of_range(name, label):
    """3 classes and the null class 3: label 4 used to embed as NaN and -1 wrapped to the null class."""
    x = jnp.zeros((2, 2) if name == "mlp" else (2, 4, 4, 1), F32)
    labels = np.array([0, label])  # a constant of the trace: checked while tracing, nothing is compiled
    with pytest.raises(ValueError, match=r"`cond` has a class label outside 0\.\.3 \(3 = the null class\): got"):
        nnx.eval_shape(lambda: NETS[name]()(x, 0.5, labels))


def test_traced_class_labels_out_of_range_fail_when_run():
    """Inside jit the labels are values, not constants: the check runs with the program (every
    network embeds labels through the same ClassEmbedding) and fails with the same message."""
    net = NETS["mlp"]()
    run = nnx.jit(lambda m, c: m(jnp.zeros((2, 2), F32), 0.5, c))
    assert bool(jnp.all(jnp.isfinite(run(net, jnp.array([0, 3])))))  # the null class is a label
    for label in (4, -1):
        with pytest.raises(Exception, match=r"`cond` has a class label outside 0\.\.3"):
            jax.block_until_ready(run(net, jnp.array([0, label])))


def test_classes_that_do_not_exist():
    with pytest.raises(
        ValueError,
        match=r"`cond` names a class with no component; accepted: the mixture's classes "
        r"\[0, 1\]",
    ):
        GM.sample_class(KEY, 4, 5)
    with pytest.raises(ValueError, match="`cond`"):
        GM.sample_class(KEY, 4, jnp.array([0, 1]))  # one class per call
    with pytest.raises(ValueError, match="`cond` names a class with no component"):
        MODEL(X, 0.5, jnp.full((B,), 2))
    with pytest.raises(ValueError, match=r"`cond` of the mixture's model must be None or one class label per example"):
        MODEL(X, 0.5, jnp.zeros((3,), jnp.int32))
    with pytest.raises(Exception, match="`cond` names a class with no component"):
        jax.block_until_ready(jax.jit(lambda c: GM.sample_class(KEY, 4, c))(7))
    assert GM.sample_class(KEY, 4, 1).shape == (4, 2)


def test_guidance_refuses_missing_cond_and_bad_options():
    log_prob = guidance.classifier_log_prob(lambda x, t: jnp.zeros((x.shape[0], 2)))
    unconditional = jdiff.Model(lambda x, t, c: MODEL.net(x, t, None), PATH, "eps")
    cg = guidance.classifier_guidance(unconditional, log_prob, 1.0)
    with pytest.raises(ValueError, match="`cond`"):
        cg(X, 0.5)
    with pytest.raises(ValueError, match="`cond`"):
        S.sample(S.DDIM(), cg, X, GRID)  # at trace time, before any step runs
    with pytest.raises(ValueError, match=r"`cond` has a class label outside 0\.\.1 \(the classifier has 2 classes\)"):
        cg(X, 0.5, jnp.full((B,), 2))
    with pytest.raises(ValueError, match="`cond`"):
        guidance.classifier_free(MODEL, 2.0, null_cond=None)(X, 0.5)
    with pytest.raises(ValueError, match="`cond`"):
        guidance.with_label_dropout(losses.dsm_loss, 0.1, 2)(MODEL, KEY, X0, cond=None)
    with pytest.raises(ValueError, match="`cond`"):
        guidance.noisy_classifier_loss(lambda x, t: jnp.zeros((x.shape[0], 2)), PATH, KEY, X0, cond=None)
    with pytest.raises(ValueError, match=r"`cond` has a class label outside"):
        guidance.noisy_classifier_loss(lambda x, t: jnp.zeros((x.shape[0], 2)), PATH, KEY, X0, cond=LABELS + 5)
    with pytest.raises(ValueError, match="`cond` and `null_cond`"):
        flowmaps.meanflow_loss(FLOW, KEY, X0, guidance_scale=2.0)
    with pytest.raises(ValueError, match="`interval`"):
        guidance.classifier_free(MODEL, 2.0, null_cond=None, interval=(0.5, 0.2))
    with pytest.raises(ValueError, match="`rescale`"):
        guidance.classifier_free(MODEL, 2.0, null_cond=None, rescale=1.5)
    with pytest.raises(ValueError, match="`p`"):
        guidance.drop_labels(KEY, LABELS, 1.5, 2)
    with pytest.raises(ValueError, match="`log_prob_fn`"):
        guidance.classifier_guidance(MODEL, lambda x, t, c: jnp.zeros((3,)), 1.0)(X, 0.5, LABELS)
    with pytest.raises(TypeError, match="`weak_model`"):
        guidance.autoguidance(MODEL, GM.as_model(jdiff.Linear(), "eps"), 2.0)


def test_likelihood_refuses_bad_input():
    with pytest.raises(ValueError, match="`key`"):
        likelihood.ode_log_likelihood(MODEL, X[0], divergence=likelihood.Hutchinson(2))
    with pytest.raises(TypeError, match="`key`"):
        likelihood.ode_log_likelihood(MODEL, X[0], divergence=likelihood.Hutchinson(2), key=3)
    with pytest.raises(ValueError, match="`t0`"):
        likelihood.ode_log_likelihood(MODEL, X[0], t0=0.5, t1=0.2)  # data end first: t0 < t1
    with pytest.raises(ValueError, match="`t1`"):
        likelihood.ode_log_likelihood(MODEL, X[0], t1=1.5)
    with pytest.raises(ValueError, match="`cond`"):
        likelihood.ode_log_likelihood_batch(MODEL, X, cond=jnp.zeros((3,), jnp.int32))
    with pytest.raises(TypeError, match="`divergence`"):
        likelihood.ode_log_likelihood(MODEL, X[0], divergence="hutchinson")


# -- stability: the documented safe step counts of Euler-Maruyama ----------------------------


def test_euler_maruyama_safe_step_counts_on_ve():
    """Explicit Euler-Maruyama on VE's reverse SDE multiplies the state by 1 - 2 h ln(sigma_max /
    sigma_min) per step while the noise dominates (score ~ -x / sigma^2): its variance relative to
    the path's grows unless (1 - a)^2 e^a < 1 for a = 2 h ln(4e4), i.e. h < 0.07 (uniform grid:
    N >= 15). At N = 8 the samples reach |x| ~ 1e4; at N = 16 (docs/precision.md's table, from
    benchmarks/sde_stability.py: sound from N = 14 on) they are samples of the mixture."""
    path = jdiff.VEGeometric()
    model = GM.as_model(path, "eps")
    x_T = path.prior_sample(jax.random.PRNGKey(0), (1000, 2), F32)
    data = np.asarray(GM.sample(jax.random.PRNGKey(3), 1000))
    run = {n: S.sample(S.EulerMaruyama(), model, x_T, S.uniform_grid(path, n), key=KEY) for n in (8, 16)}
    assert float(jnp.max(jnp.abs(run[8]))) > 100.0
    y = np.asarray(run[16])
    assert np.abs(y).max() < 3 * np.abs(data).max()
    np.testing.assert_allclose(y.std(0), data.std(0), rtol=0.15)
