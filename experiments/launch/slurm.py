"""Write (and submit) an sbatch script that runs one command as a jax.distributed job on SLURM GPU nodes.

    python -m experiments.launch.slurm --nodes=2 --gpus_per_node=8 --per=gpu --time=24:00:00 -- \
        python -m experiments.train --config=experiments/configs/cifar10.py --workdir=/shared/runs/cifar10

`srun` starts one process per GPU (--per=gpu: process i of node n uses GPU SLURM_LOCALID, as
jax.distributed's SLURM detection sets it) or one per node (--per=node: JAX_LOCAL_DEVICE_IDS gives
it all the node's GPUs). An experiments.train command gets --config.distributed=True, so
jax.distributed.initialize() reads the coordinator, process count and index from SLURM. The workdir
must be on a filesystem every node sees (or gs://). `--signal=TERM@<s>` asks SLURM for a SIGTERM
before the time limit: every process saves the same step and exits 0, and with --requeue the job
resumes from it. --dry_run prints the script; otherwise it is written to --script and submitted
with sbatch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from experiments.launch._common import shell, split_command, with_distributed

__all__ = ["main", "sbatch_script"]

PER = ("gpu", "node")


def sbatch_script(
    command: Sequence[str],
    *,
    nodes: int,
    gpus_per_node: int,
    per: str = "gpu",
    time: str = "24:00:00",
    job_name: str = "jdiff",
    partition: str | None = None,
    account: str | None = None,
    cpus_per_gpu: int = 8,
    signal_seconds: int = 120,
    requeue: bool = False,
    workdir: str | None = None,
    output: str = "slurm-%j.out",
) -> str:
    """The sbatch script text running `command` on `nodes` x `gpus_per_node` GPUs."""
    if per not in PER:
        raise ValueError(f"`per` must be one of {', '.join(PER)}; got {per!r}")
    for name, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node), ("cpus_per_gpu", cpus_per_gpu)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int; got {value!r}")
    if not command:
        raise ValueError("`command` is empty: give the command every process runs after `--`")
    tasks = gpus_per_node if per == "gpu" else 1
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks}",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_gpu * gpus_per_node // tasks}",
        f"#SBATCH --time={time}",
        f"#SBATCH --signal=TERM@{signal_seconds}",
        f"#SBATCH --output={output}",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    if requeue:
        lines.append("#SBATCH --requeue")
    lines += ["", "set -euo pipefail"]
    if workdir:
        lines.append(f"cd {shell([workdir])}")
    if per == "node":  # one process sees every GPU of its node (jax would otherwise take SLURM_LOCALID's only)
        lines.append("export JAX_LOCAL_DEVICE_IDS=" + ",".join(str(i) for i in range(gpus_per_node)))
    lines.append(f"srun --kill-on-bad-exit=1 {shell(with_distributed(command))}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.launch.slurm", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--per", choices=PER, default="gpu", help="one process per GPU or per node")
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--job_name", default="jdiff")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--cpus_per_gpu", type=int, default=8)
    parser.add_argument("--signal_seconds", type=int, default=120, help="SIGTERM this long before the time limit")
    parser.add_argument("--requeue", action="store_true", help="requeue the job when it is preempted")
    parser.add_argument("--chdir", default=os.getcwd(), help="the repository checkout on the nodes")
    parser.add_argument("--script", default="jdiff.sbatch", help="where to write the script")
    parser.add_argument("--dry_run", action="store_true", help="print the script, submit nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every process runs")
    args = parser.parse_args(argv)
    command = split_command(args.command)
    if not command:
        parser.error("give the command every process runs after `--`")
    text = sbatch_script(
        command,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        per=args.per,
        time=args.time,
        job_name=args.job_name,
        partition=args.partition,
        account=args.account,
        cpus_per_gpu=args.cpus_per_gpu,
        signal_seconds=args.signal_seconds,
        requeue=args.requeue,
        workdir=args.chdir,
    )
    if args.dry_run:
        print(text, end="")
        return 0
    with open(args.script, "w") as f:
        f.write(text)
    return subprocess.call(["sbatch", args.script])


if __name__ == "__main__":
    sys.exit(main())
