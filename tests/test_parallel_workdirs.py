"""Workdirs on local disks and on cloud storage: every file the experiments write goes through
etils.epath, so gs:// paths pass through untouched. The cloud store is faked with epath's own
testing hook (`epath.testing.mock_epath`), which serves gs://bucket/... from a local folder; a
file written with plain `open` would instead appear under ./gs:/ and the test would not find it."""

import json
import os

import numpy as np
import pytest
from etils import epath
from tensorboardX import record_writer

from experiments import _config, _images, _workdir
from experiments.configs import toy2d_fm
from jdiff import checkpoint, training

_FNS = (
    "copy",
    "exists",
    "glob",
    "isdir",
    "listdir",
    "makedirs",
    "mkdir",
    "open",
    "remove",
    "rename",
    "replace",
    "rmtree",
    "stat",
    "walk",
)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """gs://... served from tmp_path/gcs (epath and tensorboardX); yields that folder."""
    root = str(tmp_path / "gcs")
    os.makedirs(root)

    def local(p):
        s = os.fspath(p)
        return os.path.join(root, s[len("gs://") :]) if s.startswith("gs://") else s

    def remote(p):
        return "gs://" + os.path.relpath(p, root) if str(p).startswith(root) else p

    def mocked(name):
        def fn(original, path, *args, **kwargs):
            args = [local(a) if isinstance(a, (str, os.PathLike)) else a for a in args]
            out = original(local(path), *args, **kwargs)
            if name == "glob":
                return [remote(p) for p in out]
            if name == "walk":
                return ((remote(d), dirs, files) for d, dirs, files in out)
            return out

        return fn

    class TensorBoardFiles:  # tensorboardX's writer of gs:// event files, on the fake store
        def open(self, path):
            os.makedirs(os.path.dirname(local(path)), exist_ok=True)
            return open(local(path), "wb")  # closed by tensorboardX

        def directory_check(self, path):
            pass

    monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, "gs", TensorBoardFiles())
    with epath.testing.mock_epath(**{name: mocked(name) for name in _FNS}):
        yield root


def test_cloud_paths_pass_through_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(checkpoint.as_path("gs://bucket/run")) == "gs://bucket/run"
    assert os.fspath(checkpoint.as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    assert checkpoint.is_url("gs://bucket/run") and not checkpoint.is_url("runs/a")
    assert os.fspath(checkpoint.as_path("runs/a")) == str(tmp_path / "runs" / "a")  # local: made absolute


@pytest.mark.parametrize("where", ["local", "gs"])
def test_workdir_files_on_local_and_cloud_storage(where, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    if where == "gs":
        root = request.getfixturevalue("fake_gcs")
        workdir, disk = "gs://bucket/run", os.path.join(root, "bucket", "run")
    else:
        root = None
        workdir = disk = str(tmp_path / "local" / "run")
    config = toy2d_fm.get_config("runlocal")

    run = _workdir.check_workdir(workdir, config)  # a new workdir: nothing written
    assert run.path == (workdir if where == "gs" else disk) and run.config is None and not os.path.exists(disk)
    os.makedirs(disk)
    assert _workdir.check_workdir(workdir, config).config is None  # an empty folder is a new workdir too
    with open(os.path.join(disk, "notes.txt"), "w") as f:
        f.write("mine")
    with pytest.raises(_config.ConfigError, match="holds files \\(notes.txt\\) but no config.json"):
        _workdir.check_workdir(workdir, config)
    os.remove(os.path.join(disk, "notes.txt"))
    _workdir.write_config(run, config)
    assert _config.load_config(workdir).to_dict() == json.loads(config.to_json_best_effort())

    w = training.MetricWriter(workdir, start_step=0)
    for step in (1, 2, 3):
        w.write_scalars(step, {"loss": 1.0 / step})
    w.close()
    w = training.MetricWriter(workdir, start_step=2)  # a resume from step 2: row 3 goes
    assert w.last_row == {"step": 2, "loss": 0.5}
    w.write_scalars(3, {"loss": 0.25})
    w.close()
    with open(os.path.join(disk, "metrics.jsonl")) as f:
        assert [json.loads(line) for line in f] == [
            {"step": 1, "loss": 1.0},
            {"step": 2, "loss": 0.5},
            {"step": 3, "loss": 0.25},
        ]
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(disk, "tb")))

    png = workdir + "/samples/step_0000001.png"
    with _workdir.atomic_path(png) as tmp:
        _images.save_samples(tmp, np.zeros((4, 8, 8, 1), np.float32))
    _images.save_samples(workdir + "/samples/points.png", np.random.default_rng(0).normal(size=(64, 2)))
    for name in ("step_0000001.png", "points.png"):
        with open(os.path.join(disk, "samples", name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    os.makedirs(os.path.join(disk, "checkpoints", "4"))  # as orbax names a finished checkpoint
    os.makedirs(os.path.join(disk, "checkpoints", "6.orbax-checkpoint-tmp-1"))  # ... and an unfinished one
    assert _workdir.checkpoint_steps(workdir) == [4]
    resumed = _workdir.check_workdir(workdir, config)  # the same config: resumable
    assert resumed.steps == [4] and resumed.config is not None and not resumed.changed
    assert not os.path.exists(tmp_path / "gs:")  # nothing went through plain open()
    if root is not None:
        assert sorted(os.listdir(root)) == ["bucket"]
