"""The evaluation in the experiments layer: sharded generation + features on 8 CPU devices give
the statistics of 1 device, an interrupted evaluation resumes after its last finished shard,
`experiments.evaluate --metric=fid` on a workdir, and the post-hoc EMA sweep.

Feature networks are small random-weight networks in the real layouts (reduced widths / depth,
smaller input resolutions), so nothing is downloaded and the programs compile quickly."""

import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import random_torch_weights

from experiments import _lib, _sample_eval
from experiments import _posthoc as sweep_cmd
from experiments._config import load_config_file
from jdiff import metrics, parallel

CONFIG = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", "digits_phema.py")
BATCH, NUM = 16, 40  # 3 shards, the last one partly used


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    inc = nnx.eval_shape(lambda: metrics.InceptionV3(width=1 / 8, rngs=nnx.Rngs(0)))
    metrics.write_weights(folder / "inception.npz", random_torch_weights(inc, seed=0))
    kw = {"embed_dim": 32, "depth": 2, "num_heads": 4}
    dino = nnx.eval_shape(lambda: metrics.DinoV2(None, pos_grid=4, rngs=nnx.Rngs(0), **kw))
    metrics.write_weights(folder / "dinov2.safetensors", random_torch_weights(dino, seed=1))
    return _sample_eval.FeatureNets(
        metrics.InceptionV3.from_file(folder / "inception.npz", width=1 / 8),
        metrics.DinoV2.from_file(folder / "dinov2.safetensors", None, **kw),
        inception_size=75,
        dinov2_size=28,
    )


@pytest.fixture(scope="module")
def model():
    """An (untrained) digits model and its sampler of BATCH samples."""
    config = load_config_file(CONFIG + ":runlocal")
    recipe = _lib.recipe_for(config)
    graphdef, params, rest = nnx.split(recipe.build_model(), nnx.Param, ...)
    return recipe.make_sampler(graphdef, (BATCH, 8, 8, 1)), params, rest


def _stats(model, nets, num_devices, **kw):
    draw, params, rest = model
    return _sample_eval.feature_stats_of_samples(
        draw.draw,
        params,
        rest,
        nets,
        num_samples=NUM,
        batch_size=BATCH,
        mesh=parallel.make_mesh(num_devices),
        seed=3,
        progress=False,
        **kw,
    )


def test_sharded_evaluation_on_8_devices_matches_one_device(model, nets):
    assert len(jax.devices()) == 8
    one, eight = _stats(model, nets, 1), _stats(model, nets, 8)
    for a, b in ((one.fid, eight.fid), (one.dino, eight.dino)):
        assert a.count == b.count == NUM
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-5, atol=1e-6 * np.abs(a.mean).max())
        np.testing.assert_allclose(b.m2, a.m2, rtol=1e-4, atol=1e-5 * np.abs(a.m2).max())
    np.testing.assert_array_equal(one.inception_score.count, eight.inception_score.count)
    np.testing.assert_allclose(eight.inception_score.sum_p, one.inception_score.sum_p, rtol=1e-5, atol=1e-9)
    assert eight.inception_score.mean_std()[0] == pytest.approx(one.inception_score.mean_std()[0], rel=1e-5)
    # each of the 8 devices generated its own 2 rows of a shard
    draw, params, rest = model
    mesh = parallel.make_mesh(8)
    x = jax.jit(draw.draw, out_shardings=parallel.data_sharded(mesh))(
        parallel.replicate(params, mesh), parallel.replicate(rest, mesh), jax.random.PRNGKey(0)
    )
    assert len({s.device for s in x.addressable_shards}) == 8
    assert all(s.data.shape == (BATCH // 8, 8, 8, 1) for s in x.addressable_shards)


def test_interrupted_evaluation_resumes_after_the_last_finished_shard(model, nets, tmp_path, monkeypatch):
    save = _sample_eval._save_state
    saved = []

    def killed_after_two_shards(*args):  # the process dies right after writing shard 2's state
        save(*args)
        saved.append(args[1])
        if len(saved) == 2:
            raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(_sample_eval, "_save_state", killed_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        _stats(model, nets, 8, state_dir=str(tmp_path), fingerprint="run")
    monkeypatch.setattr(_sample_eval, "_save_state", save)
    with np.load(tmp_path / "state_p0.npz") as z:
        assert int(z["next_shard"]) == 2
    resumed = _stats(model, nets, 8, state_dir=str(tmp_path), fingerprint="run")
    fresh = _stats(model, nets, 8)
    np.testing.assert_array_equal(resumed.fid.m2, fresh.fid.m2)  # same shards, same order: same numbers
    np.testing.assert_array_equal(resumed.inception_score.sum_p, fresh.inception_score.sum_p)
    # a different fingerprint (other settings) starts over instead of mixing runs
    other = _stats(model, nets, 8, state_dir=str(tmp_path), fingerprint="other")
    np.testing.assert_array_equal(other.fid.m2, fresh.fid.m2)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """digits_phema:runlocal trained for its 6 steps: checkpoints and post-hoc EMA snapshots."""
    path = str(tmp_path_factory.mktemp("run"))
    _lib.train_and_evaluate(load_config_file(CONFIG + ":runlocal"), path)
    return path


def test_evaluate_fid_on_a_workdir_reports_and_resumes(workdir, nets, tmp_path):
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    metrics.save_stats(ref, rng.standard_normal(nets.inception.num_features), np.eye(nets.inception.num_features))
    kw = {
        "num_samples": NUM,
        "batch_size": BATCH,
        "ref": str(ref),
        "nets": nets,
        "progress": False,
        "save_stats": str(tmp_path / "samples.npz"),
    }
    res = _sample_eval.evaluate_fid(workdir, **kw)
    with open(res["json"]) as f:
        saved = json.load(f)
    assert saved["nfe"] == 8 and saved["solver"] == "heun" and saved["num_steps"] == 4  # Heun: 2 evaluations a step
    mu, sigma = metrics.load_stats(tmp_path / "samples.npz")
    assert saved["fid"] == pytest.approx(metrics.frechet_distance_from_stats(mu, sigma, *metrics.load_stats(ref)))
    assert saved["fd_dinov2"] is None and saved["inception_score"] >= 1.0 and saved["wall_seconds"] > 0
    # a rerun with the same arguments resumes from the finished state: the same numbers
    again = _sample_eval.evaluate_fid(workdir, **kw)
    assert again["fid"] == saved["fid"] and again["inception_score"] == saved["inception_score"]
    with pytest.raises(_lib.ConfigError, match="--ref_dinov2"):
        _sample_eval.evaluate_fid(workdir, ref_dinov2=str(tmp_path / "absent.npz"), nets=nets)


def test_posthoc_ema_sweep_on_the_digits(workdir, tmp_path):
    res = sweep_cmd.sweep(workdir, [0.05, 0.1, 0.2], num_samples=64, out=str(tmp_path / "sweep.json"), plot=False)
    assert res["snapshots"] == 6 and res["step"] == 6  # 3 snapshot times x 2 profiles
    assert [r["sigma_rel"] for r in res["rows"]] == [0.05, 0.1, 0.2]
    assert all(np.isfinite(r["fdd"]) for r in res["rows"]) and np.isfinite(res["training_ema"]["fdd"])
    with pytest.raises(_lib.ConfigError, match="--sigma_rels"):
        sweep_cmd.sweep(workdir, [0.5])


def test_reference_statistics_of_the_data_set(workdir, nets, tmp_path):
    # 1797 digits in sharded batches of 16 (the last one padded) on 8 devices = the statistics of
    # the same features computed directly, batch by batch on one device.
    res = _sample_eval.write_reference_stats(
        workdir, str(tmp_path / "ref.npz"), nets=nets, batch_size=BATCH, progress=False
    )
    assert res["num_images"] == 1797
    x = np.asarray(_lib.load_all(load_config_file(CONFIG + ":runlocal")).x, np.float32)
    feat = jax.jit(lambda x: nets.inception.pool3(metrics.inception_preprocess(_sample_eval.to_pixels(x), size=75)))
    direct = metrics.FeatureStats.empty(nets.inception.num_features)
    for i in range(0, 1797, 256):
        direct = direct.update(feat(x[i : i + 256]))
    mu, sigma = metrics.load_stats(tmp_path / "ref.npz")
    np.testing.assert_allclose(mu, direct.mean_cov()[0], rtol=1e-5, atol=1e-6 * np.abs(mu).max())
    np.testing.assert_allclose(sigma, direct.mean_cov()[1], rtol=1e-4, atol=1e-5 * np.abs(sigma).max())
    assert metrics.load_stats(tmp_path / "ref_dinov2.npz")[0].shape == (nets.dinov2.num_features,)
    # 8-bit data x = k / 127.5 - 1 quantize back to exactly their pixel values k
    k = np.arange(256, dtype=np.float32)
    np.testing.assert_array_equal(_sample_eval.to_pixels(k / 127.5 - 1.0), k)


@pytest.mark.slow  # two fresh interpreters compile everything again; the fast test above covers 8 devices
def test_two_processes_give_the_statistics_of_one(model, nets, tmp_path):
    # 2 processes x 4 CPU devices on 127.0.0.1 (experiments/launch/local.py), each generating and
    # featurizing its rows and keeping its own resume state; process 0 gathers and merges.
    from experiments.launch import local

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    worker = os.path.join(root, "tests", "evaluation_mp_worker.py")
    job = local.start(
        [sys.executable, worker, str(tmp_path)],
        2,
        devices_per_process=4,
        log_dir=str(tmp_path / "logs"),
        cwd=root,
        env={"JAX_ENABLE_X64": "1"},
    )  # as tests/conftest.py sets for this process
    codes = job.wait(600)
    assert codes == [0, 0], [pathlib.Path(log).read_text()[-2000:] for log in job.logs]
    assert sorted(os.listdir(tmp_path / "state")) == ["state_p0.npz", "state_p1.npz"]
    single = _stats(model, nets, 8)
    with np.load(tmp_path / "merged.npz") as z:
        assert int(z["processes"]) == 2 and int(z["devices"]) == 8
        np.testing.assert_allclose(z["fid_mean"], single.fid.mean, rtol=1e-5, atol=1e-6 * np.abs(single.fid.mean).max())
        np.testing.assert_allclose(z["fid_m2"], single.fid.m2, rtol=1e-4, atol=1e-5 * np.abs(single.fid.m2).max())
        np.testing.assert_allclose(z["dino_mean"], single.dino.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["is_sum_p"], single.inception_score.sum_p, rtol=1e-5, atol=1e-9)
