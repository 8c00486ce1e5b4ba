"""Experiments never damage a workdir: every bad input ends with one line on stderr and exit code
2 before anything is written (checked on a fresh workdir and on an existing trained one, byte
for byte), a diverged run ends with one line and exit code 3, and the logs stay honest across a
resume (no step twice in metrics.jsonl or TensorBoard; the final loss is the last step's).

The entry points run in-process through the handler their `main` uses (`_lib.exit_on_error`);
a few run as real subprocesses, in parallel, to check the exit code, stderr and flag parsing.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import _config, _lib
from experiments.configs import digits_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_LINE = re.compile(r"^error: (config\.[\w.]+(, config\.[\w.]+)*|--\w+): \S.*; accepted: \S.*$")


def make_config(**overrides):
    """digits_mlp:runlocal (6 steps, a row every 2, a checkpoint every 3), no sample grids, with
    dotted-key overrides."""
    c = digits_mlp.get_config("runlocal")
    c.sample_every = 0
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = c
        for k in path:
            node = node[k]
        with node.ignore_type():  # a wrong type, as a config.json can hold
            node[last] = value
    return c


def snapshot(path):
    """Every file (sha256) and folder under `path`, a file's own hash, or None when absent."""
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path) + "/"] = None
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_cli(capsys, fn):
    """fn() under the entry points' error handler: (exit code, stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e, _lib.exit_on_error():
        fn()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return e.value.code, err


# ----------------------------------------------------------------------------------
# Fixtures: data files, one trained workdir (shared, read-only) and its per-step losses
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    x = np.zeros((64, 8, 8, 1), np.float32)
    np.savez(d / "ok.npz", x=x, label=np.arange(64) % 10)
    np.savez(d / "nan.npz", x=np.full_like(x, np.nan))
    np.savez(d / "inf_one.npz", x=np.concatenate([x[:40], np.full_like(x[:1], np.inf), x[:23]]))
    (d / "text.npz").write_text("x,label\n0.1,3\n")
    raw = (d / "ok.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    np.savez(d / "strings.npz", x=np.array(["a"] * 64))
    np.savez(d / "range.npz", x=x + 3.0)
    np.savez(d / "uint16.npz", x=np.full((64, 8, 8, 1), 4000, np.uint16))
    np.savez(d / "short_labels.npz", x=x, label=np.arange(63))
    np.save(d / "objects.npy", np.array([{"x": 1}] * 4, dtype=object), allow_pickle=True)
    (d / "a_file").write_text("not a folder")
    (d / "foreign").mkdir()
    (d / "foreign" / "notes.txt").write_text("someone else's")
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, {step: loss}) of an uninterrupted 6-step run."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    losses = {}

    def hook(step, state, metrics):
        losses[step] = float(metrics["loss"])

    r = _lib.train_and_evaluate(make_config(), workdir, hooks=[hook])
    assert r["step"] == 6 and not r["preempted"]
    return workdir, losses


# ----------------------------------------------------------------------------------
# The table: every bad input of issue 14 and more, fresh and on the trained workdir
# ----------------------------------------------------------------------------------


def npz(name, **kw):
    return {"data.name": "npz", "data.holdout": 0.0, "data.kwargs": {"path": f"{{files}}/{name}", **kw}}


# (id, overrides, message start, a piece of the accepted values, where: "both" | "fresh" | "existing")
CASES = [
    # issue 14: tracebacks after writing, silently accepted, multi-line tracebacks, misleading
    ("batch_negative", {"batch_size": -4}, "config.batch_size: -4", "an int >= 1", "both"),
    ("batch_zero", {"batch_size": 0}, "config.batch_size: 0", "an int >= 1", "both"),
    ("batch_above_data", {"batch_size": 4096}, "config.batch_size: 4096 exceeds the 1617", "[1, 1617]", "both"),
    ("checkpoint_every_zero", {"checkpoint_every": 0}, "config.checkpoint_every", "an int >= 1", "both"),
    ("log_every_zero", {"log_every": 0}, "config.log_every", "an int >= 1", "both"),
    ("total_steps_negative", {"total_steps": -5}, "config.total_steps", "an int >= 1", "both"),
    (
        "nan_npz",
        npz("nan.npz"),
        "config.data.kwargs.path: {files}/nan.npz: array 'x' has 4096 non-finite",
        "finite values",
        "both",
    ),
    ("batch_not_divisible", {"batch_size": "devices+1"}, "config.batch_size", "a multiple of", "both"),
    ("num_devices_above_machine", {"num_devices": "devices+1"}, "config.num_devices", "[1, ", "both"),
    ("missing_npz", npz("missing.npz"), "config.data.kwargs.path: {files}/missing.npz does not exist", ".npz", "both"),
    (
        "truncated_npz",
        npz("truncated.npz"),
        "config.data.kwargs.path: {files}/truncated.npz cannot be read",
        "numpy.savez",
        "both",
    ),
    (
        "wrong_array_key",
        npz("ok.npz", key="images"),
        "config.data.kwargs.key: {files}/ok.npz has no array 'images'",
        "x, label",
        "both",
    ),
    ("workdir_parent_is_a_file", {}, "--workdir: cannot create {files}/a_file/run", "parent folders", "fresh"),
    (
        "text_named_npz",
        npz("text.npz"),
        "config.data.kwargs.path: {files}/text.npz is not an .npz or .npy",
        "numpy.savez",
        "both",
    ),
    # more
    (
        "one_inf_npz",
        npz("inf_one.npz"),
        (
            "config.data.kwargs.path: {files}/inf_one.npz: array 'x' has 64 non-finite "
            "values (NaN or inf), the first in example 40"
        ),
        "finite",
        "both",
    ),
    (
        "string_npz",
        npz("strings.npz"),
        "config.data.kwargs.path: {files}/strings.npz: array 'x' has dtype <U1",
        "integer, bool or float",
        "both",
    ),
    (
        "float_range_npz",
        npz("range.npz"),
        ("config.data.kwargs.max_value: {files}/range.npz: array 'x' has float images in [3, 3]"),
        "max_value",
        "both",
    ),
    (
        "uint16_npz",
        npz("uint16.npz"),
        ("config.data.kwargs.max_value: {files}/uint16.npz: array 'x' has integer values in [4000, 4000]"),
        "max_value",
        "both",
    ),
    (
        "label_length_npz",
        npz("short_labels.npz"),
        ("config.data.kwargs.label_key: {files}/short_labels.npz: array 'label' has dtype int64 and shape (63,)"),
        "shape (64,)",
        "both",
    ),
    (
        "object_npy",
        npz("objects.npy"),
        "config.data.kwargs.path: {files}/objects.npy holds Python objects",
        "numeric",
        "both",
    ),
    ("npz_is_a_folder", npz("foreign"), "config.data.kwargs.path: {files}/foreign is a directory", ".npz", "both"),
    (
        "npz_without_path",
        {"data.name": "npz", "data.holdout": 0.0},
        ("config.data.kwargs.path: the 'npz' loader needs it"),
        "--config.data.kwargs.path=",
        "both",
    ),
    (
        "npz_option_typo",
        npz("ok.npz", pth="x"),
        "config.data.kwargs.pth: the 'npz' loader has no option 'pth'",
        "path, key, label_key, max_value",
        "both",
    ),
    ("ema_decay_above_one", {"ema_decay": 1.5}, "config.ema_decay: 1.5 is out of range", "[0, 1]", "both"),
    (
        "learning_rate_nan",
        {"optimizer.learning_rate": float("nan")},
        ("config.optimizer.learning_rate: nan is not finite"),
        "a float > 0",
        "both",
    ),
    (
        "learning_rate_negative",
        {"optimizer.learning_rate": -1e-3},
        "config.optimizer.learning_rate",
        "a float > 0",
        "both",
    ),
    ("warmup_negative", {"optimizer.warmup_steps": -3}, "config.optimizer.warmup_steps", "an int >= 0", "both"),
    ("b2_one", {"optimizer.b2": 1.0}, "config.optimizer.b2", "[0, 1)", "both"),
    (
        "grad_clip_negative",
        {"optimizer.grad_clip_norm": -1.0},
        "config.optimizer.grad_clip_norm",
        "or None (no clipping)",
        "both",
    ),
    ("max_nonfinite_zero", {"max_nonfinite_steps": 0}, "config.max_nonfinite_steps", "an int >= 1", "both"),
    ("keep_checkpoints_zero", {"keep_checkpoints": 0}, "config.keep_checkpoints", "an int >= 1", "both"),
    ("sample_every_negative", {"sample_every": -1}, "config.sample_every", "an int >= 0", "both"),
    ("sample_steps_zero", {"sample.num_steps": 0}, "config.sample.num_steps", "an int >= 1", "both"),
    ("sample_count_zero", {"sample.num_samples": 0}, "config.sample.num_samples", "an int >= 1", "both"),
    ("seed_negative", {"seed": -1}, "config.seed", "an int >= 0", "both"),
    ("holdout_one", {"data.holdout": 1.0}, "config.data.holdout", "[0, 1)", "both"),
    ("label_dropout_above_one", {"loss.label_dropout": 1.5}, "config.loss.label_dropout", "[0, 1)", "both"),
    ("batch_bool", {"batch_size": True}, "config.batch_size: True is a bool", "an int >= 1", "both"),
    ("batch_float", {"batch_size": 16.0}, "config.batch_size: 16.0 is a float", "an int >= 1", "both"),
    ("num_devices_zero", {"num_devices": 0}, "config.num_devices", "or None (every visible device)", "both"),
    ("shape_mismatch", {"data.shape": (8, 8, 3)}, "config.data.shape: (8, 8, 3)", "(8, 8, 1)", "both"),
    (
        "too_few_classes",
        {"data.cond": "label", "model.kwargs.num_classes": 5},
        "config.model.kwargs.num_classes: 5 classes, but the data has labels up to 9",
        "an int >= 10",
        "both",
    ),
    ("unknown_path", {"path.name": "brownian"}, "config.path.name: unknown path 'brownian'", "vp_cosine", "both"),
    ("workdir_is_a_file", {}, "--workdir: {files}/a_file is a file", "a new or empty directory", "fresh"),
    (
        "foreign_folder",
        {},
        "--workdir: {files}/foreign holds files (notes.txt) but no config.json",
        "a new or empty directory",
        "fresh",
    ),
    (
        "changed_config",
        {"total_steps": 8, "optimizer.learning_rate": 0.01},
        "config.optimizer.learning_rate, config.total_steps: differ from {workdir}/config.json",
        "--allow_config_change",
        "existing",
    ),
    (
        "below_checkpoint",
        {"total_steps": 4, "allow_config_change": True},
        "config.total_steps: 4 is below the step 6 of the workdir's latest checkpoint",
        "an int >= 6",
        "existing",
    ),
    (
        "another_network",
        {"total_steps": 8, "model.kwargs.hidden": 48, "allow_config_change": True},
        "config.model: the latest checkpoint (6) of {workdir} does not fit",
        "the network and optimizer",
        "existing",
    ),
    (
        "corrupt_config_json",
        {"corrupt": True},
        "--workdir: {workdir}/config.json is not valid JSON",
        "a workdir written by experiments.train",
        "existing",
    ),
]
WORKDIRS = {
    "workdir_parent_is_a_file": "{files}/a_file/run",
    "workdir_is_a_file": "{files}/a_file",
    "foreign_folder": "{files}/foreign",
}


def _params():
    for case in CASES:
        for where in ("fresh", "existing"):
            if case[4] in ("both", where):
                yield pytest.param(*case[:4], where, id=f"{case[0]}-{where}")


@pytest.mark.parametrize("name, overrides, start, accepted, where", list(_params()))
def test_bad_input_is_one_line_exit_2_and_leaves_the_workdir_as_it_was(
    name, overrides, start, accepted, where, files, trained, tmp_path, capsys
):
    workdir = str(tmp_path / "fresh")
    if where == "existing":
        workdir = trained[0]
        if overrides.get("corrupt"):  # a copy of the trained workdir with a damaged config.json
            workdir = str(tmp_path / "copy")
            shutil.copytree(trained[0], workdir)
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write('{"seed": 0, "batch_')
    workdir = WORKDIRS.get(name, workdir).format(files=files)
    fill = {"files": files, "workdir": workdir}
    overrides = {k: v for k, v in overrides.items() if k not in ("corrupt", "allow_config_change")} | {
        k: {kk: vv.format(**fill) if isinstance(vv, str) else vv for kk, vv in v.items()} if k == "data.kwargs" else v
        for k, v in overrides.items()
        if k == "data.kwargs"
    }
    for k, v in overrides.items():
        if v == "devices+1":
            if jax.device_count() == 1 and k == "batch_size":
                pytest.skip("every batch splits over one device")
            overrides[k] = jax.device_count() + 1
    allow = name in ("below_checkpoint", "another_network")
    before = snapshot(workdir)

    code, err = run_cli(
        capsys, lambda: _lib.train_and_evaluate(make_config(**overrides), workdir, allow_config_change=allow)
    )
    assert code == _lib.EXIT_BAD_INPUT == 2
    assert len(err) == 1, err
    assert ONE_LINE.match(err[0]), err[0]
    assert err[0].startswith("error: " + start.format(**fill)), err[0]
    assert accepted in err[0].split("; accepted: ", 1)[1], err[0]
    assert snapshot(workdir) == before  # byte-identical (or still absent)
    if where == "fresh" and name not in WORKDIRS:
        assert before is None


def test_the_table_holds_every_issue_input_and_ten_more():
    issue = {
        "batch_negative",
        "batch_zero",
        "batch_above_data",
        "checkpoint_every_zero",
        "log_every_zero",
        "total_steps_negative",
        "nan_npz",
        "batch_not_divisible",
        "num_devices_above_machine",
        "missing_npz",
        "truncated_npz",
        "wrong_array_key",
        "workdir_parent_is_a_file",
        "text_named_npz",
    }
    names = {c[0] for c in CASES}
    assert issue <= names and len(names - issue) >= 10 and len(names) == len(CASES)


# ----------------------------------------------------------------------------------
# sample and evaluate: the same checks, nothing written on a bad input
# ----------------------------------------------------------------------------------

SAMPLE_CASES = [
    ("num_steps_zero", {"num_steps": 0}, "--num_steps: 0 is out of range", "an int >= 1"),
    ("num_samples_negative", {"num_samples": -1}, "--num_samples: -1 is out of range", "an int >= 1"),
    ("unknown_solver", {"solver": "rk4"}, "--solver: unknown solver 'rk4'", "dpmpp_2m"),
    ("solver_option_typo", {"solver": "heun", "solver_kwargs": {"eta": 1.0}}, "--solver_kwargs: ", "s_churn"),
    ("unknown_grid", {"grid": "cosine"}, "--grid: unknown grid 'cosine'", "karras"),
    ("out_under_a_file", {"out": "{files}/a_file/x"}, "--out: cannot create {files}/a_file/x.png", "parent folders"),
    ("clock_unknown", {"solver": "euler", "clock": "lambda"}, "--clock: unknown clock 'lambda'", "sigma"),
    (
        "clock_for_a_solver_without_one",
        {"solver": "dpmpp_2m", "clock": "sigma"},
        "--clock: solver 'dpmpp_2m' has no clock option",
        "euler, heun, lms",
    ),
    (
        "optimize_objective_unknown",
        {"grid": "optimize", "optimize": {"objective": "kl"}},
        "--optimize_objective: unknown grid objective 'kl'",
        "local_error",
    ),
    (
        "optimize_steps_zero",
        {"grid": "optimize", "optimize": {"iterations": 0}},
        "--optimize_steps: 0 is out of range",
        "an int >= 1",
    ),
    (
        "optimize_lr_negative",
        {"grid": "optimize", "optimize": {"learning_rate": -0.1}},
        "--optimize_lr: -0.1 is out of range",
        "a float > 0",
    ),
    (
        "optimize_init_unknown",
        {"grid": "optimize", "optimize": {"init": "cosine"}},
        "--optimize_init: unknown grid 'cosine'",
        "karras",
    ),
    (
        "optimize_flag_without_optimize",
        {"optimize": {"iterations": 5}},
        "--optimize_steps: applies with --grid=optimize only",
        "--grid=optimize",
    ),
    (
        "optimize_stochastic_solver",
        {"grid": "optimize", "solver": "ddpm"},
        "--solver: 'ddpm' draws noise",
        "a deterministic solver",
    ),
]
EVALUATE_CASES = [
    ("batch_zero", {"batch_size": 0}, "--batch_size: 0 is out of range", "an int >= 1"),
    ("holdout_above_one", {"holdout": 1.5}, "--holdout: 1.5 is out of range", "(0, 1)"),
    ("rtol_negative", {"rtol": -1.0}, "--rtol: -1.0 is out of range", "a float > 0"),
    ("num_examples_zero", {"num_examples": 0}, "--num_examples: 0 is out of range", "an int >= 1"),
    ("unknown_divergence", {"divergence": "trace"}, "--divergence: unknown estimator 'trace'", "hutchinson"),
    (
        "out_under_a_file",
        {"out": "{files}/a_file/e.json"},
        "--out: cannot create {files}/a_file/e.json",
        "parent folders",
    ),
]


@pytest.mark.parametrize(
    "job, name, kwargs, start, accepted",
    [pytest.param("sample", *c, id=f"sample-{c[0]}") for c in SAMPLE_CASES]
    + [pytest.param("evaluate", *c, id=f"evaluate-{c[0]}") for c in EVALUATE_CASES],
)
def test_sample_and_evaluate_bad_arguments_are_one_line(job, name, kwargs, start, accepted, files, trained, capsys):
    workdir = trained[0]
    kwargs = {k: v.format(files=files) if isinstance(v, str) else v for k, v in kwargs.items()}
    fn = _lib.sample_workdir if job == "sample" else _lib.evaluate
    before = snapshot(workdir)
    code, err = run_cli(capsys, lambda: fn(workdir, **kwargs))
    assert code == 2 and len(err) == 1 and ONE_LINE.match(err[0]), err
    assert err[0].startswith("error: " + start.format(files=files)), err[0]
    assert accepted in err[0].split("; accepted: ", 1)[1], err[0]
    assert snapshot(workdir) == before


@pytest.mark.parametrize("job", ["sample", "evaluate"])
def test_sample_and_evaluate_refuse_a_directory_that_is_not_a_trained_workdir(job, files, tmp_path, capsys):
    fn = _lib.sample_workdir if job == "sample" else _lib.evaluate
    expected = {str(tmp_path / "absent"): "is not a directory", str(files / "foreign"): "config.json does not exist"}
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with open(empty / "config.json", "w") as f:
        f.write(make_config().to_json_best_effort())
    expected[str(empty)] = "has no checkpoint yet"
    for workdir, what in expected.items():
        before = snapshot(workdir)
        code, err = run_cli(capsys, lambda w=workdir: fn(w))
        assert code == 2 and len(err) == 1 and ONE_LINE.match(err[0]) and err[0].startswith("error: --workdir: "), err
        assert what in err[0], err[0]
        assert snapshot(workdir) == before


# ----------------------------------------------------------------------------------
# Real subprocesses: exit codes, stderr, flag parsing, --config.data.kwargs.path
# ----------------------------------------------------------------------------------


def test_entry_points_as_subprocesses(files, trained, tmp_path):
    """train with a bad value on the trained workdir (the issue's first case), train with a data
    file named on the command line (--config.data.kwargs.path, a new key), sample with a bad flag:
    exit code 2, one stderr line, nothing written. Run in parallel (each imports jax)."""
    workdir = trained[0]
    before = snapshot(workdir)
    cfg = "--config=experiments/configs/digits_mlp.py:runlocal"
    fresh = str(tmp_path / "fresh")
    runs = {  # argv -> (start of the stderr line, piece of the accepted values)
        ("train", cfg, f"--workdir={workdir}", "--config.sample_every=0", "--config.batch_size=-4"): (
            "error: config.batch_size: -4 is out of range",
            "an int >= 1",
        ),
        (
            "train",
            cfg,
            f"--workdir={fresh}",
            "--config.data.name=npz",
            "--config.data.holdout=0.0",
            f"--config.data.kwargs.path={files}/truncated.npz",
            "--config.data.kwargs.max_value=255",
        ): (f"error: config.data.kwargs.path: {files}/truncated.npz cannot be read", "numpy.savez"),
        ("sample", f"--workdir={workdir}", "--solver_kwargs=eta"): (
            "error: --solver_kwargs: 'eta' is not name=number",
            "eta=1.0",
        ),
        ("sample", f"--workdir={workdir}", "--grid=optimize", "--optimize_objective=kl"): (
            "error: --optimize_objective: unknown grid objective 'kl'",
            "global_error",
        ),
    }
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = {
        argv: subprocess.Popen(
            [sys.executable, "-m", f"experiments.{argv[0]}", *argv[1:]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in runs
    }
    for argv, p in procs.items():
        _out, err = p.communicate(timeout=180)
        lines = [line for line in err.splitlines() if line.strip()]
        start, accepted = runs[argv]
        assert p.returncode == 2, (argv, err)
        assert len(lines) == 1 and ONE_LINE.match(lines[0]) and lines[0].startswith(start), (argv, err)
        assert accepted in lines[0].split("; accepted: ", 1)[1], lines[0]
    assert snapshot(workdir) == before and not os.path.exists(fresh)


def test_sample_grid_optimize_fits_writes_and_samples_on_the_grid(trained, tmp_path):
    """--grid=optimize (through sample_workdir, as experiments.sample calls it) on the trained
    workdir: the fitted 4-step DPM-Solver++(2M) grid is written next to the samples, lies in the
    path's range with the initial grid's ends, the samples are the ones --grid=<that file> gives,
    progress is reported, and on 64 other prior draws it is closer than the initial uniform grid
    to this model's PF-ODE endpoint (a 200-step DPM-Solver++(3M) solve; the fit used Tsit5)."""
    from flax import nnx

    from jdiff import samplers as S

    workdir, out, lines = trained[0], str(tmp_path / "opt"), []
    options = {"iterations": 12, "num_samples": 16, "learning_rate": 0.1, "init": "uniform"}
    x, png, npz = _lib.sample_workdir(
        workdir,
        solver="dpmpp_2m",
        num_steps=4,
        grid="optimize",
        num_samples=8,
        out=out,
        optimize=options,
        progress=lines.append,
    )
    assert os.path.exists(png) and os.path.exists(npz)
    config, recipe, ema = _lib.restore(workdir)
    path = recipe.path
    grid = np.asarray(S.load_grid(out + "_grid.npy", path))
    uniform = np.asarray(S.uniform_grid(path, 4))
    assert grid.shape == (5,) and bool(np.all(np.diff(grid) < 0))
    np.testing.assert_allclose(grid[[0, -1]], uniform[[0, -1]], rtol=1e-6)
    assert np.max(np.abs(grid - uniform)) > 1e-3  # it moved
    assert [line for line in lines if "update 1/12," in line or "update 12/12," in line], lines
    assert lines[-1] == f"wrote {out}_grid.npy", lines
    again, _, _ = _lib.sample_workdir(
        workdir, solver="dpmpp_2m", grid=out + "_grid.npy", num_samples=8, out=str(tmp_path / "again")
    )
    np.testing.assert_array_equal(again, x)

    net = nnx.merge(ema.graphdef, ema.params, ema.rest)
    net.eval()
    model = recipe.bind(net)
    run = jax.jit(lambda g, x_T: S.sample(S.DPMSolverPP2M(), model, x_T, g))
    x_T = path.prior_sample(jax.random.PRNGKey(99), (64, *config.data.shape), np.float32)
    ref = S.sample(S.DPMSolverPP3M(), model, x_T, S.log_snr_grid(path, 200))  # converged to ~1e-6
    rms = {
        name: float(np.sqrt(np.mean((run(g, x_T) - ref) ** 2)))
        for name, g in (("uniform", uniform), ("optimised", grid))
    }
    assert rms["optimised"] < 0.7 * rms["uniform"], rms


def test_kwargs_overrides_add_entries_to_a_locked_config():
    """--config.<...>kwargs.<name>=<value> sets new entries of the free-form sections, values read as
    Python literals (else kept as text); a section that does not exist is a one-line error."""
    config = make_config()
    config.lock()
    _config._apply_kwargs_overrides(
        config,
        [
            ("data.kwargs", "path", "/data/my images.npz"),
            ("data.kwargs", "max_value", "255"),
            ("sample.solver_kwargs", "eta", "1.0"),
            ("model.kwargs", "hidden", "48"),
        ],
    )
    assert config.data.kwargs.to_dict() == {"path": "/data/my images.npz", "max_value": 255}
    assert config.sample.solver_kwargs.eta == 1.0 and config.model.kwargs.hidden == 48
    with pytest.raises(_lib.ConfigError, match=r"^config\.model\.kwargs\.hidden: .*; accepted: "):
        _config._apply_kwargs_overrides(config, [("model.kwargs", "hidden", "'wide'")])
    with pytest.raises(_lib.ConfigError, match=r"^config\.nosuch\.kwargs\.x: config has no section"):
        _config._apply_kwargs_overrides(config, [("nosuch.kwargs", "x", "1")])


# ----------------------------------------------------------------------------------
# Divergence, and honest logs across resumes
# ----------------------------------------------------------------------------------


def test_a_diverged_run_ends_with_one_line_naming_step_count_and_checkpoint(tmp_path, capsys):
    """A learning rate of 1e30 overflows the network after its first updates; the run stops at
    the step that completes max_nonfinite_steps non-finite steps in a row (exit code 3), naming
    that step, the count and the last checkpoint, whose every value is finite."""
    config = make_config(
        **{
            "optimizer.learning_rate": 1e30,
            "optimizer.warmup_steps": 0,
            "max_nonfinite_steps": 3,
            "checkpoint_every": 2,
            "total_steps": 40,
        }
    )
    finite = {}
    workdir = str(tmp_path / "run")

    def hook(step, state, metrics):
        finite[step] = bool(metrics["finite"])

    code, err = run_cli(capsys, lambda: _lib.train_and_evaluate(config, workdir, hooks=[hook]))
    err = [line for line in err if not line.startswith("[")]  # the progress line (\r-refreshed) came first
    assert code == _lib.EXIT_DIVERGED == 3 and len(err) == 1, err
    steps = sorted(finite)
    stop = next(s for s in steps if s >= 3 and not any(finite[s - i] for i in range(3)))  # first 3-in-a-row
    saved = max(s for s in range(2, stop + 1, 2))  # saves run after the step, before the next is checked
    ckpt = os.path.join(workdir, "checkpoints", str(saved))
    assert err[0] == (
        f"error: training diverged at step {stop}: 3 consecutive steps (since step {stop - 2}) had a "
        f"non-finite loss or gradient, the limit config.max_nonfinite_steps=3; last finite checkpoint: "
        f"{ckpt} (step {saved}); lower config.optimizer.learning_rate or check the data"
    )
    assert _lib.restore(workdir)[2].step == saved
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(_lib.restore(workdir)[2].params))


def _tb_scalars(workdir, tag="loss"):
    """{step: value} of `tag` as TensorBoard shows it: event files in name order, and a SessionLog
    START at step s (tensorboardX's purge_step) drops the earlier events at steps >= s."""
    from tensorboardX.proto import event_pb2

    seen = []
    tb = os.path.join(workdir, "tb")
    for name in sorted(os.listdir(tb)):
        with open(os.path.join(tb, name), "rb") as f:
            data = f.read()
        i = 0
        while i + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                seen = [(s, v) for s, v in seen if s < event.step]
            seen += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return seen


def test_resume_after_a_kill_and_a_sigterm_logs_every_step_once(trained, tmp_path):
    """A run killed after writing rows past its last checkpoint (and half a row), resumed, then
    stopped by SIGTERM at a step that is no logging step, then resumed to the end: metrics.jsonl
    and TensorBoard hold each step once, every row's loss is that step's loss in the
    uninterrupted run (bit for bit: the resume is exact), and each report's final loss is the
    loss of its last step, the last logged row."""
    reference_dir, reference = trained
    workdir = str(tmp_path / "run")
    config = make_config()

    class Killed(Exception):
        pass

    def kill_at_5(step, state, metrics):
        if step == 5:
            raise Killed  # rows 2 and 4 are written, the checkpoint is at 3

    with pytest.raises(Killed):
        _lib.train_and_evaluate(config, workdir, hooks=[kill_at_5])
    assert [r["step"] for r in rows(workdir)] == [2, 4]
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # a row cut short by kill -9

    def sigterm_at_5(step, state, metrics):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    r = _lib.train_and_evaluate(config, workdir, hooks=[sigterm_at_5])
    assert r["preempted"] and r["step"] == 5
    assert [row["step"] for row in rows(workdir)] == [2, 4, 5]
    assert r["final_loss"] == rows(workdir)[-1]["loss"] == np.float32(reference[5])

    r = _lib.train_and_evaluate(config, workdir)
    assert r["step"] == 6 and not r["preempted"]
    logged = rows(workdir)
    assert [row["step"] for row in logged] == [2, 4, 5, 6]
    assert [row["loss"] for row in logged] == [float(np.float32(reference[s])) for s in (2, 4, 5, 6)]
    assert r["final_loss"] == logged[-1]["loss"] == float(np.float32(reference[6]))
    assert logged[2]["loss_mean"] == logged[2]["loss"]  # the step-5 row covers step 5 alone
    tb = _tb_scalars(workdir)
    assert [s for s, _ in tb] == [2, 4, 5, 6]
    assert [v for _, v in tb] == [row["loss"] for row in logged]
    assert [row["step"] for row in rows(reference_dir)] == [2, 4, 6]
    assert [s for s, _ in _tb_scalars(reference_dir)] == [2, 4, 6]


def test_final_loss_is_the_last_logged_steps_loss_and_a_finished_run_resumes_to_it(trained, tmp_path):
    """The uninterrupted run's report equals its last row (step 6's loss, not the window mean).
    Rerunning the finished workdir with a changed config and allow_config_change trains nothing,
    reports that row again, keeps the old config.json as config.step6.json and the rows as they
    were, and leaves no temporary file."""
    workdir, reference = trained
    last = rows(workdir)[-1]
    assert last["step"] == 6 and last["loss"] == float(np.float32(reference[6]))
    assert last["loss_mean"] == pytest.approx((reference[5] + reference[6]) / 2, rel=1e-6)
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    with open(os.path.join(copy, "config.json")) as f:
        old = f.read()
    r = _lib.train_and_evaluate(make_config(keep_checkpoints=5), copy, allow_config_change=True)
    assert r["step"] == 6 and r["final_loss"] == last["loss"] and r["final_loss_mean"] == last["loss_mean"]
    assert rows(copy) == rows(workdir)
    with open(os.path.join(copy, "config.step6.json")) as f:
        assert f.read() == old
    assert _lib.load_config(copy).keep_checkpoints == 5
    assert not [f for f in os.listdir(copy) if ".tmp" in f]
