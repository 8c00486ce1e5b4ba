"""experiments/: exact resume after SIGTERM, every config end to end (small variants), bad
configs fail in one line before writing anything, and the Colab quickstart runs."""

import importlib
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdiff
from experiments import _lib
from jdiff import guidance, losses, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# U-Net configs compile for one to two minutes each on a busy 2-core CPU, so their end-to-end
# runs are `slow`; the fast suite checks every full config abstractly (names, U-Net kwargs,
# shapes: test_every_config_checks) and runs what they add over the MLP configs (EDM
# preconditioning, class conditioning, synthetic data) on the MLP (test_config_features_on_the_mlp).
CONFIGS = [
    "toy2d_fm",
    "digits_mlp",
    "toy_ct",
    "digits_cfg",
    "toy_ddgan",
    pytest.param("digits_ddgan", marks=pytest.mark.slow),  # conv GAN: R1's double backward compiles slowly
    pytest.param("digits_vp", marks=pytest.mark.slow),
    pytest.param("digits_edm", marks=pytest.mark.slow),
    pytest.param("mnist5k", marks=pytest.mark.slow),
    pytest.param("mnist5k_nested", marks=pytest.mark.slow),  # fast: test_nested_experiments on 8x8
    pytest.param("cifar10", marks=pytest.mark.slow),
]


def get_config(name, arg="runlocal"):
    return importlib.import_module(f"experiments.configs.{name}").get_config(arg)


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _host(tree):
    """A host copy (the next step donates the device buffers); typed PRNG keys as raw data."""

    def leaf(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return jax.tree.map(leaf, tree)


def test_resume_after_sigterm_equals_uninterrupted_run(tmp_path):
    """K steps, SIGTERM (checkpoint + clean exit), restart from the workdir, K more steps:
    the final state equals a 2K-step run's bit for bit."""
    k = 4
    config = get_config("toy2d_fm")
    config.total_steps = 2 * k
    config.checkpoint_every = 1000  # only the SIGTERM and the final saves
    config.sample_every = 0
    config.lock()
    final = {}

    def keep_last(name):
        def hook(step, state, metrics):
            if step == 2 * k:
                final[name] = _host(state)

        return hook

    r = _lib.train_and_evaluate(config, str(tmp_path / "a"), hooks=[keep_last("a")])
    assert r["step"] == 2 * k and not r["preempted"]

    def preempt(step, state, metrics):
        if step == k:
            os.kill(os.getpid(), signal.SIGTERM)

    r = _lib.train_and_evaluate(config, str(tmp_path / "b"), hooks=[preempt])
    assert r["preempted"] and r["step"] == k
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == [str(k)]
    r = _lib.train_and_evaluate(config, str(tmp_path / "b"), hooks=[keep_last("b")])
    assert r["step"] == 2 * k and not r["preempted"]

    a, b = final["a"], final["b"]
    assert int(b.step) == 2 * k and int(b.data_position) == 2 * k
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    # both runs logged every step window; the resumed run appended to the same metrics.jsonl, with
    # the same per-step losses as the uninterrupted run
    rows = _rows(tmp_path / "b" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [2, 4, 6, 8]
    assert [row["loss"] for row in rows] == [row["loss"] for row in _rows(tmp_path / "a" / "metrics.jsonl")]


def test_every_unet_config_checks():
    """Every full-size U-Net config's names resolve and its network builds and maps a batch of
    its data shape to the same shape (abstractly: shapes only, nothing compiled)."""
    for name in ["digits_vp", "digits_edm", "mnist5k", "cifar10"]:
        config = get_config(name, None)
        recipe, net = _lib.check_config(config)
        assert isinstance(recipe, _lib.DiffusionRecipe) and recipe.path.t_max <= 1.0
        assert config.model.name == "unet"
        x = jax.ShapeDtypeStruct((2, *config.data.shape), np.float32)
        cond = np.zeros((2,), np.int32) if config.data.cond else None
        out = jax.eval_shape(lambda n, x, c=cond: n(x, np.full((2,), 0.5, np.float32), c), net, x)
        assert out.shape == x.shape, name


def test_nonfinite_run_stops_with_a_clear_error_and_no_checkpoint(tmp_path):
    config = get_config("toy2d_fm")
    config.optimizer.learning_rate = 1e30  # the first update overflows the network: every later step is skipped
    config.optimizer.warmup_steps = 0
    config.max_nonfinite_steps = 3
    config.checkpoint_every = 1000
    with pytest.raises(training.NonFiniteError, match="3 consecutive") as e:
        _lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(e.value) and "last finite checkpoint: none" in str(e.value)
    assert os.listdir(tmp_path / "run" / "checkpoints") == []  # no final save after the error
    stop = int(str(e.value).split("diverged at step ")[1].split(":")[0])
    rows = _rows(tmp_path / "run" / "metrics.jsonl")  # skipped steps are logged with their NaN loss
    assert [r["step"] for r in rows] == list(range(config.log_every, stop, config.log_every))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_and_samples(name, tmp_path):
    """The small variant of every config trains, checkpoints, logs, draws a grid, and its
    workdir samples with a different solver than the config's."""
    config = get_config(name)
    assert get_config(name, None).total_steps >= 3000  # the real config is not the small one
    doc = importlib.import_module(f"experiments.configs.{name}").__doc__
    assert f"--config=experiments/configs/{name}.py" in doc
    if config.model.name != "mlp":
        config.sample_every = 0  # one sampler compile (below) is enough for a U-Net
    _train_and_sample(config, str(tmp_path / name))


def _train_and_sample(config, workdir):
    r = _lib.train_and_evaluate(config, workdir)
    assert r["step"] == config.total_steps and np.isfinite(r["final_loss"])
    rows = _rows(os.path.join(workdir, "metrics.jsonl"))
    assert rows[-1]["step"] == config.total_steps and all(np.isfinite(row["loss"]) for row in rows)
    assert (r["sample_png"] is None) == (config.sample_every == 0)
    assert r["sample_png"] is None or os.path.exists(r["sample_png"])
    assert int(max(os.listdir(os.path.join(workdir, "checkpoints")), key=int)) == config.total_steps
    if "flowmap" in config:  # flow maps sample with flowmaps.sample (no ODE solver): one step here
        x, png, npz = _lib.sample_workdir(workdir, num_steps=1, num_samples=4)
    elif "gan" in config:  # a DDGAN samples in the T steps it was trained with (adversarial.sample)
        x, png, npz = _lib.sample_workdir(workdir, num_samples=4)
    else:
        solver = "ddim" if config.sample.solver != "ddim" else "euler"
        x, png, npz = _lib.sample_workdir(workdir, solver=solver, num_steps=3, num_samples=4)
    assert x.shape == (4, *config.data.shape) and np.all(np.isfinite(x))
    saved = np.load(npz)
    np.testing.assert_array_equal(saved["samples"], x)
    assert int(saved["step"]) == config.total_steps and os.path.exists(png)
    if config.data.cond:
        np.testing.assert_array_equal(saved["labels"], np.arange(4) % config.model.kwargs.num_classes)


def _mlp_variant(variant):
    """digits_mlp / toy2d_fm turned into what the slow U-Net configs add, on the fast MLP."""
    if variant == "edm":  # digits_edm: VE path, EDM loss, preconditioned x0 denoiser, Karras grid
        c = get_config("digits_mlp")
        c.model.kwargs.kind = "x0"
        c.model.preconditioning = "edm"
        c.path.name = "ve"
        c.loss.name = "edm_loss"
        c.sample.grid = "karras"
    else:  # mnist5k + cifar10: labels as cond, dsm_loss on v; synthetic arrays, constant schedule
        c = get_config("digits_mlp")
        c.data.name = "synthetic"
        c.data.kwargs.n = 32
        c.data.kwargs.shape = (8, 8, 1)
        c.data.kwargs.num_classes = 3
        c.data.cond = "label"
        c.model.kwargs.num_classes = 3
        c.model.kwargs.kind = "v"
        c.path.name = "vp_cosine"
        c.loss.name = "dsm_loss"
        c.optimizer.schedule = "constant"
        c.sample.solver = "dpmpp_2m"
    c.sample_every = 0
    return c


def test_consistency_distillation_starts_from_the_teachers_ddim_step(tmp_path):
    """Consistency distillation from a teacher workdir (flowmap.teacher_workdir): an EDM teacher
    (toy MLP, VE path) trains in one workdir; the student with the teacher's network, the DDIM-
    denoiser parameterization, EDM time input and init_from_teacher is at initialisation exactly
    one DDIM step of the teacher (ground truth: jdiff.samplers.DDIM on the grid [t, s]); it then
    trains with the Heun teacher step and the EMA target, and its workdir samples."""
    from jdiff import samplers

    teacher = get_config("toy2d_fm")
    teacher.model.kwargs.kind = "x0"
    teacher.model.preconditioning = "edm"
    teacher.model.sigma_data = 1.0
    teacher.path.name = "ve"
    teacher.loss.name = "edm_loss"
    teacher.optimizer.learning_rate = 0.05  # weights far from the zero-initialised output layer
    teacher.optimizer.warmup_steps = 0
    teacher.ema_decay = 0.0  # the EMA is the last parameters
    teacher.total_steps, teacher.sample_every = 4, 0
    _lib.train_and_evaluate(teacher, str(tmp_path / "teacher"))

    c = get_config("toy_ct")
    c.model = teacher.model.copy_and_resolve_references()
    c.model.preconditioning = "none"
    c.path = teacher.path.copy_and_resolve_references()
    c.loss.name = "flowmaps.consistency_distillation_loss"
    c.loss.kwargs = {"num_scales": 18}
    c.flowmap.update(
        param="ddim_denoiser",
        sigma_data=1.0,
        time_input="edm",
        teacher_solver="heun",
        teacher_workdir=str(tmp_path / "teacher"),
        init_from_teacher=True,
        target="ema",
        num_steps=2,
    )
    c.total_steps, c.sample_every = 4, 0
    recipe = _lib.recipe_for(c)
    assert isinstance(recipe, _lib.FlowMapRecipe) and isinstance(recipe.teacher, _lib.DiffusionRecipe)
    flow, model = recipe.bind(recipe.build_model()), recipe.teacher_model()
    x = jnp.asarray(np.random.default_rng(0).normal(0, 1.5, (8, 2)), jnp.float32)
    t, s = 0.6, 0.2
    ddim = samplers.sample(samplers.DDIM(), model, x, jnp.array([t, s], jnp.float32))
    c_skip = jdiff.predictions.edm_preconditioning(jnp.float32(t), model.path, 1.0).c_skip
    assert np.max(np.abs(np.asarray(model.x0(x, t) - c_skip * x))) > 1e-2  # the teacher's network is not 0
    np.testing.assert_allclose(flow(x, t, s), ddim, rtol=1e-5, atol=1e-5)

    r = _lib.train_and_evaluate(c, str(tmp_path / "student"))
    assert r["step"] == 4 and np.isfinite(r["final_loss"])
    x, png, _ = _lib.sample_workdir(str(tmp_path / "student"), num_samples=4)
    assert x.shape == (4, 2) and np.all(np.isfinite(x)) and png.endswith("flowmap_2.png")


@pytest.mark.parametrize("variant", ["edm", "conditional_synthetic"])
def test_config_features_on_the_mlp(variant, tmp_path):
    config = _mlp_variant(variant)
    _train_and_sample(config, str(tmp_path / variant))


@pytest.mark.parametrize(
    "override, key, accepted",
    [
        ({"model.name": "resnet"}, "config.model.name", "mlp"),
        ({"path.name": "brownian"}, "config.path.name", "vp_cosine"),
        ({"loss.name": "l1_loss"}, "config.loss.name", "cfm_loss"),
        ({"loss.name": "flowmaps.meanflow_loss"}, "config.loss.name", "config.flowmap"),
        ({"loss.kwargs": {"min_snr_gamma": 5.0}}, "config.loss.kwargs", "coupling"),
        ({"loss.time_sampler": "beta"}, "config.loss.time_sampler", "lognormal"),
        ({"loss.weighting": "min_snr"}, "config.loss.weighting", "cfm_loss takes no weighting"),
        ({"loss.label_dropout": 0.1}, "config.loss.label_dropout", "class-conditional"),
        ({"sample.solver": "rk4"}, "config.sample.solver", "dpmpp_2m"),
        ({"data.name": "imagenet"}, "config.data.name", "digits"),
        ({"data.name": "cifar10"}, "config.data.name", "tensorflow-datasets"),
        ({"data.shape": (8, 8, 3)}, "config.data.shape", "(8, 8, 1)"),
        ({"model.preconditioning": "vp"}, "config.model.preconditioning", "edm"),
        ({"model.name": "flowmap_mlp"}, "config.model.name", "config.flowmap"),
    ],
)
def test_bad_config_fails_in_one_line_before_writing(override, key, accepted, tmp_path):
    if override.get("data.name") == "cifar10" and importlib.util.find_spec("tensorflow_datasets"):
        pytest.skip("tensorflow-datasets is installed")
    config = get_config("digits_mlp")
    for k, v in override.items():
        section, field = k.split(".")
        config[section][field] = v
    workdir = tmp_path / "run"
    with pytest.raises(_lib.ConfigError) as e:
        _lib.train_and_evaluate(config, str(workdir))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(key) and accepted in msg
    assert not workdir.exists()


@pytest.mark.parametrize(
    "override, key, accepted",
    [
        ({"flowmap.param": "ddim_denoiser"}, "config.flowmap.param", "average_velocity"),
        ({"flowmap.param": "euler"}, "config.flowmap.param", "ddim_denoiser"),
        ({"flowmap.time_input": "sigma"}, "config.flowmap.time_input", "edm"),
        ({"loss.name": "cfm_loss"}, "config.loss.name", "flowmaps.shortcut_loss"),
        ({"sample.grid": "cosine"}, "config.sample.grid", "karras"),
        ({"model.preconditioning": "edm"}, "config.model.preconditioning", "flowmap.param"),
    ],
)
def test_bad_flowmap_config_fails_in_one_line_before_writing(override, key, accepted, tmp_path):
    config = get_config("toy_shortcut")
    for k, v in override.items():
        section, field = k.split(".")
        config[section][field] = v
    workdir = tmp_path / "run"
    with pytest.raises(_lib.ConfigError) as e:
        _lib.train_and_evaluate(config, str(workdir))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(key) and accepted in msg
    assert not workdir.exists()


def _random_params(net, seed=1, scale=0.3):
    """(graphdef, params, rest) of `net` with N(0, scale^2) added to every parameter (the MLPs
    zero-initialise their output layer, which would make every input predict the same thing)."""
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    params = treedef.unflatten([p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
    return graphdef, params, rest


def test_recipe_loss_is_the_library_loss_with_the_configs_objects():
    """The diffusion recipe's loss_fn(net, batch, key) equals the library call it stands for:
    dsm_loss on jdiff.Model(net, path, "v") with the weighting and time sampler the config names
    (MinSNRWeighting(gamma=2), stratified_time), wrapped in with_label_dropout(p, null class 3);
    and the EDM recipe trains jdiff.edm_denoiser(net, path, sigma_data) with edm_loss."""
    config = _mlp_variant("conditional_synthetic")
    config.loss.weighting = "min_snr"
    config.loss.weighting_kwargs = {"gamma": 2.0}
    config.loss.time_sampler = "stratified"
    config.loss.label_dropout = 0.25
    recipe = _lib.recipe_for(config)
    graphdef, params, rest = _random_params(recipe.build_model())
    net = nnx.merge(graphdef, params, rest)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (6, 8, 8, 1)), jnp.float32)
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    key = jax.random.PRNGKey(5)
    got = recipe.build_loss()(net, {"x": x, "label": labels}, key)
    expected = guidance.with_label_dropout(losses.dsm_loss, 0.25, 3)(
        jdiff.Model(net, recipe.path, "v"),
        key,
        x,
        cond=labels,
        weighting=losses.MinSNRWeighting(gamma=2.0),
        time_sampler=losses.stratified_time,
    )
    assert got.shape == (6,) and np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, expected)
    unweighted = guidance.with_label_dropout(losses.dsm_loss, 0.25, 3)(
        jdiff.Model(net, recipe.path, "v"), key, x, cond=labels, time_sampler=losses.stratified_time
    )
    assert np.max(np.abs(np.asarray(got) - np.asarray(unweighted))) > 1e-4  # the weighting reached the loss

    config = _mlp_variant("edm")
    recipe = _lib.recipe_for(config)
    net = nnx.merge(*_random_params(recipe.build_model()))
    got = recipe.build_loss()(net, {"x": x}, key)
    model = jdiff.edm_denoiser(net, jdiff.VEGeometric(), config.model.sigma_data)
    np.testing.assert_array_equal(got, losses.edm_loss(model, key, x, sigma_data=config.model.sigma_data))


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_override_is_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    cfg = "--config=experiments/configs/toy2d_fm.py:runlocal"
    r = _cli(cfg, f"--workdir={workdir}", "--config.batch_size=abc", "--config.path.name=foo")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: config.batch_size: cannot parse 'abc'") and "; accepted: int values" in lines[0]
    assert not os.path.exists(workdir)


def test_data_holdout_is_left_out_of_training_and_is_what_evaluate_scores():
    """data.holdout = 0.1 on the 1,797 digits: training gets the 1,617 others, the 180 held-out
    examples are exactly evaluate's split (recorded as held out), disjoint from training, and
    the split is a function of the seed; holdout 0 trains on everything and evaluate says so."""

    config = get_config("digits_mlp")
    assert config.data.holdout == 0.1
    train, held = _lib.load_data(config), _lib.load_heldout(config)
    assert train.x.shape[0] == 1617 and held.x.shape[0] == 180

    def rows(x):
        return sorted(r.tobytes() for r in x.reshape(x.shape[0], -1))

    assert rows(np.concatenate([train.x, held.x])) == rows(_lib.load_all(config).x)  # a partition of the set
    train_rows = set(rows(train.x))
    assert sum(r in train_rows for r in rows(held.x)) == 0  # no held-out image is trained on
    x, _, desc, from_training = _lib.heldout_data(config, 256, None)
    np.testing.assert_array_equal(x, held.x)
    assert from_training and "config.data.holdout=0.1" in desc
    np.testing.assert_array_equal(_lib.load_heldout(get_config("digits_mlp")).x, held.x)  # same seed, same split
    config.seed = 1
    assert not np.array_equal(_lib.load_heldout(config).x, held.x)
    config.data.holdout = 0.0
    assert _lib.load_data(config).x.shape[0] == 1797 and _lib.load_heldout(config) is None
    x, _, _, from_training = _lib.heldout_data(config, 256, None)
    assert x.shape[0] == 180 and not from_training
    config.data.holdout = 1.5
    with pytest.raises(_lib.ConfigError, match=r"^config\.data\.holdout: .*\[0, 1\)"):
        _lib.check_config(config)


def test_guidance_configs_sample_with_classifier_free_guidance():
    """make_sampler (the training loop's sample grids, sample_workdir, experiments.sample's class
    rows) applies classifier-free guidance with config.guidance.weight: the default equals an
    explicit weight of 1.5, differs from weight 1, and weight 1 is the unguided conditional model."""
    config = get_config("digits_cfg")
    recipe = _lib.recipe_for(config)
    # Random weights everywhere: every class, the null one included, predicts something different.
    graphdef, params, rest = _random_params(recipe.build_model())
    shape, key = (10, *config.data.shape), jax.random.PRNGKey(3)

    def draw(c, **kw):
        sampler = _lib.recipe_for(c).make_sampler(graphdef, shape, solver="euler", num_steps=2, **kw)  # cheap
        return np.asarray(sampler(params, rest, key))

    default, w15, w1 = draw(config), draw(config, weight=1.5), draw(config, weight=1.0)
    unguided = config.copy_and_resolve_references()
    del unguided["guidance"]
    np.testing.assert_allclose(default, w15, rtol=0, atol=1e-6)
    np.testing.assert_allclose(w1, draw(unguided), rtol=0, atol=1e-5)
    assert config.guidance.weight == 1.5 and np.max(np.abs(default - w1)) > 1e-3
