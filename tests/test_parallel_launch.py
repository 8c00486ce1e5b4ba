"""The launchers in experiments/launch: the commands each generates (dry runs), and the local
launcher's process handling (environment, exit codes, ending the others when one fails, timeout)."""

import pathlib
import shlex
import subprocess
import sys
import time

import pytest

from experiments.launch import local, slurm, tpu_vm

TRAIN = ["python", "-m", "experiments.train", "--config=experiments/configs/cifar10.py", "--workdir=gs://b/run"]


def _dry(module, *args) -> str:
    out = subprocess.run(
        [sys.executable, "-m", f"experiments.launch.{module}", *args, "--dry_run", "--", *TRAIN],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_local_dry_run_gives_each_process_its_rank():
    lines = _dry("local", "--num_processes=3", "--devices_per_process=4", "--port=4567").splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = shlex.split(line)
        env = dict(w.split("=", 1) for w in words[:5])
        assert env == {
            "JAX_COORDINATOR_ADDRESS": "127.0.0.1:4567",
            "JAX_NUM_PROCESSES": "3",
            "JAX_PROCESS_ID": str(i),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        }
        assert words[5:] == TRAIN  # the local launcher passes the command through as it is


def test_tpu_vm_dry_run_runs_setup_then_the_same_command_on_every_worker():
    setup, run = [
        shlex.split(line)
        for line in _dry(
            "tpu_vm",
            "--tpu=my-v4-32",
            "--zone=us-central2-b",
            "--project=proj",
            "--setup",
            "--repo=https://example.com/jdiff.git",
            "--ref=v1",
        ).splitlines()
    ]
    head = [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "my-v4-32",
        "--zone=us-central2-b",
        "--project=proj",
        "--worker=all",
    ]
    assert setup[:-1] == head and run[:-1] == head
    remote_setup = setup[-1].removeprefix("--command=")
    assert "git clone -q https://example.com/jdiff.git jdiff" in remote_setup
    assert "checkout -q v1" in remote_setup and "pip install -q -U 'jax[tpu]' -e jdiff" in remote_setup
    remote = shlex.split(run[-1].removeprefix("--command="))
    assert remote == ["cd", "jdiff", "&&", *TRAIN, "--config.distributed=True"]
    detached = shlex.split(_dry("tpu_vm", "--tpu=t", "--zone=z", "--detach").strip())[-1]
    assert detached.startswith("--command=cd jdiff && nohup ") and detached.endswith("> ~/jdiff_t.log 2>&1 &")
    with pytest.raises(ValueError, match="`repo`"):
        tpu_vm.setup_command("t", "z", repo="")


@pytest.mark.parametrize("per", ["gpu", "node"])
def test_slurm_dry_run_script(per):
    text = _dry(
        "slurm", "--nodes=2", "--gpus_per_node=4", f"--per={per}", "--partition=p", "--requeue", "--chdir=/shared/jdiff"
    )
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = dict(
        line.removeprefix("#SBATCH --").split("=", 1) for line in lines if line.startswith("#SBATCH --") and "=" in line
    )
    assert sbatch["nodes"] == "2" and sbatch["gpus-per-node"] == "4" and sbatch["partition"] == "p"
    assert sbatch["ntasks-per-node"] == ("4" if per == "gpu" else "1")
    assert sbatch["signal"] == "TERM@120" and "#SBATCH --requeue" in lines
    assert "cd /shared/jdiff" in lines
    assert ("export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in lines) == (per == "node")
    srun = shlex.split(lines[-1])
    assert srun == ["srun", "--kill-on-bad-exit=1", *TRAIN, "--config.distributed=True"]
    explicit = slurm.sbatch_script([*TRAIN, "--config.distributed=False"], nodes=1, gpus_per_node=1)
    assert explicit.count("--config.distributed") == 1  # a command that sets it keeps its own value
    with pytest.raises(ValueError, match="`per` must be one of gpu, node"):
        slurm.sbatch_script(TRAIN, nodes=1, gpus_per_node=1, per="socket")


def test_local_launcher_runs_ends_and_times_out(tmp_path):
    show = "import os; print(os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'])"
    job = local.start([sys.executable, "-c", show], 2, port=1234, log_dir=str(tmp_path / "ok"))
    assert job.wait(60) == [0, 0]
    assert [pathlib.Path(log).read_text().split() for log in job.logs] == [["0", "2"], ["1", "2"]]

    # process 1 fails at once; process 0 would wait forever in a collective: the launcher ends it
    fail = "import os, sys, time; sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(600)"
    t0 = time.monotonic()
    job = local.start([sys.executable, "-c", fail], 2, port=1234, log_dir=str(tmp_path / "fail"))
    codes = job.wait(120, fail_grace=1.0)
    assert codes[1] == 3 and codes[0] != 0 and job.exit_code(codes) != 0
    assert time.monotonic() - t0 < 60 and all(p.poll() is not None for p in job.processes)

    job = local.start(
        [sys.executable, "-c", "import time; time.sleep(600)"], 2, port=1234, log_dir=str(tmp_path / "slow")
    )
    assert job.wait(2.0) == [local.TIMEOUT_EXIT] * 2 and all(p.poll() is not None for p in job.processes)
    with pytest.raises(ValueError, match="`num_processes` must be a positive int"):
        local.process_envs(0, port=1)
