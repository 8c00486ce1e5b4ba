"""Multi-process training: 2 processes x 4 CPU devices on 127.0.0.1, started by
experiments/launch/local.py, against the 1-process 8-device run of the same config.

Each process is a separate interpreter (tests/multiprocess_worker.py, experiments.train's
train_and_evaluate) bounded by a timeout; only the processes the launcher started are ended.
"""

import json
import os
import signal
import sys
import time

import jax
import numpy as np
import pytest

from experiments import _config, _recipes, _state
from experiments.launch import local
from jdiff import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")
# Every compiled program is cached, so later launches of the same shapes skip compilation.
CACHE = {
    "JAX_COMPILATION_CACHE_DIR": os.path.join(ROOT, ".jax_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
}
TIMEOUT = 240  # per launch, seconds
K = 24  # train steps
STEP_SLEEP = 0.05  # s after every step: a SIGTERM lands well before step K
SAMPLES = 16  # drawn at the end by experiments.sample's sample_workdir


def _launch(workdir, num_processes, devices_per_process, *args, logs):
    return local.start(
        [sys.executable, WORKER, str(workdir), str(K), *args],
        num_processes,
        devices_per_process=devices_per_process,
        log_dir=str(logs),
        env=CACHE,
        cwd=ROOT,
    )


def _results(job) -> list[dict]:
    out = []
    for log in job.logs:
        with open(log) as f:
            text = f.read()
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        assert lines, f"{log} has no RESULT line:\n{text[-3000:]}"
        out.append(json.loads(lines[-1][len("RESULT ") :]))
    return out


def _finish(job, timeout=TIMEOUT) -> list[dict]:
    """Wait (bounded) for `job`; every process must exit 0. Returns their RESULT lines."""
    _exit_zero(job, timeout)
    return _results(job)


def _exit_zero(job, timeout):
    codes = job.wait(timeout)
    if codes != [0] * len(codes):
        tails = []
        for log in job.logs:
            with open(log) as f:
                tails.append(f"--- {log}\n{f.read()[-3000:]}")
        pytest.fail(f"exit codes {codes}:\n" + "\n".join(tails))


def _losses(workdir) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f)}


def _final_state(workdir):
    """(latest step, its state, the initial state) of `workdir`, on this test process's default device."""
    config = _config.load_config(str(workdir))
    _, _, initial = _state.init_train_state(config, _recipes.recipe_for(config).build_model())
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1)
    try:
        return ckpt.latest_step(), ckpt.restore(initial), initial
    finally:
        ckpt.close()


def _wait_for_rows(workdir, n, job, timeout=TIMEOUT):
    """Until process 0 has logged `n` steps (the run is past start-up and compiling)."""
    path, deadline = os.path.join(workdir, "metrics.jsonl"), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                if sum(1 for _ in f) >= n:
                    return
        if any(c is not None for c in job.poll()):
            pytest.fail(f"a process ended before step {n}: {job.poll()}")
        time.sleep(0.02)
    job.terminate()
    pytest.fail(f"no {n} metric rows within {timeout} s")


def test_two_processes_match_one_and_agree_on_preemption(tmp_path):
    """2 x 4 devices train the same numbers as 1 x 8; a SIGTERM to process 1 alone makes both
    save the same step and exit 0; the rerun resumes there and ends where the uninterrupted run does."""
    ref, run = tmp_path / "one_process", tmp_path / "two_processes"
    job = _launch(ref, 1, 8, f"--sample={SAMPLES}", logs=tmp_path / "logs_ref")
    (r,) = _finish(job)
    assert (r["processes"], r["devices"], r["step"], r["preempted"]) == (1, 8, K, False)

    job = _launch(run, 2, 4, f"--sleep={STEP_SLEEP}", f"--sample={SAMPLES}", logs=tmp_path / "logs_run")
    _wait_for_rows(run, 3, job)
    job.processes[1].send_signal(signal.SIGTERM)  # one process only: the other learns it from the runtime
    first = _finish(job)
    assert [(x["process"], x["processes"], x["devices"]) for x in first] == [(0, 2, 8), (1, 2, 8)]
    stopped = first[0]["step"]
    assert all(x["preempted"] for x in first) and first[1]["step"] == stopped  # the same step on both
    assert 3 <= stopped < K
    assert _final_state(run)[0] == stopped  # ... and it is the checkpoint they wrote together

    second = _finish(_launch(run, 2, 4, f"--sample={SAMPLES}", logs=tmp_path / "logs_resume"))
    assert [(x["step"], x["preempted"]) for x in second] == [(K, False), (K, False)]

    # Every step's loss (steps <= stopped from the first launch, the rest after the resume)
    # equals the one-process run's, and so does the whole final state.
    want, got = _losses(ref), _losses(run)
    assert sorted(got) == sorted(want) == list(range(1, K + 1))
    np.testing.assert_allclose([got[s] for s in range(1, K + 1)], [want[s] for s in range(1, K + 1)], rtol=2e-5)
    (step_a, a, _), (step_b, b, initial) = _final_state(ref), _final_state(run)
    assert step_a == step_b == K and int(b.step) == int(b.data_position) == K
    moved = max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max())
        for x, y in zip(jax.tree.leaves(b.params), jax.tree.leaves(initial.params))
    )
    assert moved > 1e-2  # the parameters did train
    for x, y in zip(
        jax.tree.leaves((a.params, a.opt_state, a.ema_params)), jax.tree.leaves((b.params, b.opt_state, b.ema_params))
    ):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)
    # experiments.sample on 2 processes: each drew its share of the 16 samples, both hold all of
    # them, process 0 wrote them, and they are the one-process run's samples
    assert second[0]["sample_sum"] == second[1]["sample_sum"]
    with np.load(ref / "samples" / "final.npz") as want_s, np.load(run / "samples" / "final.npz") as got_s:
        assert got_s["samples"].shape == (SAMPLES, 2) and int(got_s["step"]) == K
        np.testing.assert_allclose(got_s["samples"], want_s["samples"], rtol=1e-4, atol=1e-5)
        assert np.isclose(second[0]["sample_sum"], float(want_s["samples"].sum()), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_digits_demo_config_trains_under_two_processes(tmp_path):
    """experiments.train on the demo's config (digits_mlp), 2 processes x 4 devices: it trains
    (the loss falls), process 0 writes the sample grid and metrics, both exit 0."""
    workdir = tmp_path / "digits"
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=experiments/configs/digits_mlp.py",
        f"--workdir={workdir}",
        "--config.total_steps=300",
        "--config.log_every=50",
        "--config.checkpoint_every=150",
        "--config.sample_every=300",
        "--config.sample.num_samples=64",
    ]
    job = local.start(command, 2, devices_per_process=4, log_dir=str(tmp_path / "logs"), env=CACHE, cwd=ROOT)
    _exit_zero(job, timeout=1800)
    rows = _losses(workdir)
    assert sorted(rows) == list(range(50, 301, 50))
    assert rows[300] < 0.8 * rows[50]
    assert os.path.exists(workdir / "samples" / "step_0000300.png")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["150", "300"]
