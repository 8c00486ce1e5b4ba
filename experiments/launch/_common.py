"""What the launchers share: the command after `--`, and the flag that turns on jax.distributed."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

DISTRIBUTED_FLAG = "--config.distributed=True"


def split_command(argv: Sequence[str]) -> list[str]:
    """The command after a leading `--` (argparse REMAINDER keeps it)."""
    return list(argv[1:] if argv[:1] == ["--"] else argv)


def with_distributed(command: Sequence[str]) -> list[str]:
    """`command` with --config.distributed=True appended when it is an experiments.train run that
    does not set config.distributed itself (jax.distributed.initialize() then auto-detects the
    TPU slice or the SLURM job)."""
    command = list(command)
    if "experiments.train" in command and not any(a.startswith("--config.distributed") for a in command):
        command.append(DISTRIBUTED_FLAG)
    return command


def shell(command: Sequence[str]) -> str:
    return shlex.join(command)
