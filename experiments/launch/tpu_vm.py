"""Run one command on every worker of a Cloud TPU VM slice (`gcloud compute tpus tpu-vm ssh --worker=all`).

    python -m experiments.launch.tpu_vm --tpu=my-v4-32 --zone=us-central2-b --setup \
        --repo=https://github.com/you/jdiff.git -- \
        python -m experiments.train --config=experiments/configs/cifar10.py --workdir=gs://my-bucket/cifar10

--setup first clones (or updates) the repository on every worker and installs it with jax[tpu];
then every worker runs the same command from the checkout. An experiments.train command gets
--config.distributed=True, so jax.distributed.initialize() finds the slice's coordinator, process
count and index itself. Every worker must see the same workdir: use gs://. --detach leaves the run
going when the ssh session ends (output in ~/jdiff_<tpu>.log on each worker). A maintenance event
or preemption sends SIGTERM: all workers save the same step and exit 0; rerun the same command to
resume. --dry_run prints the gcloud commands instead of running them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence

from experiments.launch._common import shell, split_command, with_distributed

__all__ = ["main", "run_command", "setup_command"]

CHECKOUT = "jdiff"  # the repository's folder in each worker's home


def _ssh(tpu: str, zone: str, project: str | None, remote: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}"]
    if project:
        cmd.append(f"--project={project}")
    return [*cmd, "--worker=all", f"--command={remote}"]


def setup_command(
    tpu: str, zone: str, *, repo: str, ref: str = "main", project: str | None = None, jax_spec: str = "jax[tpu]"
) -> list[str]:
    """The gcloud command that clones or updates `repo` at `ref` on every worker and installs it."""
    if not repo:
        raise ValueError("`repo` (a git URL every worker can clone) is required for the setup step")
    d, q = CHECKOUT, shlex.quote
    remote = (
        f"set -e; if [ -d {d}/.git ]; then git -C {d} fetch -q origin; else git clone -q {q(repo)} {d}; fi; "
        f"git -C {d} checkout -q {q(ref)}; git -C {d} pull -q --ff-only || true; "
        f"python3 -m pip install -q -U {q(jax_spec)} -e {d}"
    )
    return _ssh(tpu, zone, project, remote)


def run_command(
    tpu: str, zone: str, command: Sequence[str], *, project: str | None = None, detach: bool = False
) -> list[str]:
    """The gcloud command that runs `command` from the checkout on every worker."""
    if not command:
        raise ValueError("`command` is empty: give the command every worker runs after `--`")
    remote = f"cd {CHECKOUT} && {shell(with_distributed(command))}"
    if detach:
        remote = f"cd {CHECKOUT} && nohup {shell(with_distributed(command))} > ~/jdiff_{tpu}.log 2>&1 &"
    return _ssh(tpu, zone, project, remote)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.launch.tpu_vm", description=__doc__.splitlines()[0])
    parser.add_argument("--tpu", required=True, help="the TPU VM (slice) name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None)
    parser.add_argument("--setup", action="store_true", help="clone/update and install the repository first")
    parser.add_argument("--repo", default="", help="git URL of the repository (for --setup)")
    parser.add_argument("--ref", default="main", help="branch, tag or commit to check out (for --setup)")
    parser.add_argument("--detach", action="store_true", help="keep running after the ssh session ends")
    parser.add_argument("--dry_run", action="store_true", help="print the gcloud commands, run nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every worker runs")
    args = parser.parse_args(argv)
    command = split_command(args.command)
    if not command:
        parser.error("give the command every worker runs after `--`")
    steps = []
    if args.setup:
        steps.append(setup_command(args.tpu, args.zone, repo=args.repo, ref=args.ref, project=args.project))
    steps.append(run_command(args.tpu, args.zone, command, project=args.project, detach=args.detach))
    for step in steps:
        if args.dry_run:
            print(shell(step))
            continue
        code = subprocess.call(step)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
