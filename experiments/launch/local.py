"""Run one command as N processes of a jax.distributed job on this machine (tests, debugging).

    python -m experiments.launch.local --num_processes=2 --devices_per_process=4 -- \
        python -m experiments.train --config=experiments/configs/toy2d_fm.py:runlocal --workdir=/tmp/mp

Process i gets JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>, JAX_NUM_PROCESSES=N and
JAX_PROCESS_ID=i (read by jdiff.parallel.initialize_distributed), and with --devices_per_process=D
JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=D. The launcher waits for
all of them under --timeout; when one fails or the time is up it terminates the others (only the
processes it started, by PID), since the rest would wait forever in a collective. Its exit code
is the first non-zero exit code of a process (124 on timeout), else 0. --dry_run prints the N
command lines instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["Job", "free_port", "main", "process_envs", "start"]

TIMEOUT_EXIT = 124  # coreutils timeout's code


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_envs(
    num_processes: int, *, port: int, devices_per_process: int | None = None, host: str = "127.0.0.1"
) -> list[dict[str, str]]:
    """The environment variables each of `num_processes` processes gets (on top of os.environ)."""
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"`num_processes` must be a positive int; got {num_processes!r}")
    if devices_per_process is not None and (not isinstance(devices_per_process, int) or devices_per_process < 1):
        raise ValueError(
            f"`devices_per_process` must be a positive int or None (the machine's devices); got {devices_per_process!r}"
        )
    envs = []
    for i in range(num_processes):
        env = {
            "JAX_COORDINATOR_ADDRESS": f"{host}:{port}",
            "JAX_NUM_PROCESSES": str(num_processes),
            "JAX_PROCESS_ID": str(i),
        }
        if devices_per_process is not None:
            flags = [
                f
                for f in os.environ.get("XLA_FLAGS", "").split()
                if not f.startswith("--xla_force_host_platform_device_count")
            ]
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices_per_process}"])
        envs.append(env)
    return envs


def _command_line(env: dict, command: Sequence[str]) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command)


class Job:
    """The processes of one launch. `processes[i]` is process i's Popen (send it a signal to test
    preemption); its output goes to `logs[i]` (or is inherited when no log_dir was given)."""

    def __init__(self, processes: list[subprocess.Popen], logs: list[str | None]):
        self.processes = processes
        self.logs = logs

    def poll(self) -> list[int | None]:
        return [p.poll() for p in self.processes]

    def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM every process still running, then SIGKILL those left after `grace` seconds."""
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.processes:
            try:
                p.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def wait(self, timeout: float | None = None, *, fail_grace: float = 30.0) -> list[int]:
        """Wait for every process; returns their exit codes (TIMEOUT_EXIT for those stopped by the
        timeout). When one exits non-zero, the others get `fail_grace` seconds, then are ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failed_at, codes = None, {}
        while len(codes) < len(self.processes):
            for i, p in enumerate(self.processes):
                if i not in codes and p.poll() is not None:
                    codes[i] = p.returncode
                    if p.returncode != 0 and failed_at is None:
                        failed_at = time.monotonic()
            now = time.monotonic()
            timed_out = deadline is not None and now > deadline
            if timed_out or (failed_at is not None and now - failed_at > fail_grace):
                self.terminate()
                for i, p in enumerate(self.processes):
                    codes.setdefault(i, TIMEOUT_EXIT if timed_out else p.returncode)
                break
            time.sleep(0.05)
        return [codes[i] for i in range(len(self.processes))]

    def exit_code(self, codes: Sequence[int]) -> int:
        return next((c for c in codes if c != 0), 0)


def start(
    command: Sequence[str],
    num_processes: int,
    *,
    devices_per_process: int | None = None,
    port: int | None = None,
    log_dir: str | None = None,
    env: dict | None = None,
    cwd: str | None = None,
) -> Job:
    """Start `command` as `num_processes` processes of one job; returns the Job (not waited for).

    log_dir: write process i's stdout and stderr to log_dir/process_<i>.log (default: inherit).
    env: extra environment variables for every process.
    """
    if not command:
        raise ValueError("`command` is empty: give the command to run after `--`")
    port = free_port() if port is None else port
    processes, logs = [], []
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    for i, extra in enumerate(process_envs(num_processes, port=port, devices_per_process=devices_per_process)):
        full = {**os.environ, **(env or {}), **extra}
        log = os.path.join(log_dir, f"process_{i}.log") if log_dir else None
        out = open(log, "w") if log else None  # noqa: SIM115 - handed to the child, closed below
        try:
            processes.append(
                subprocess.Popen(
                    list(command), env=full, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None
                )
            )
        finally:
            if out:
                out.close()
        logs.append(log)
    return Job(processes, logs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.launch.local", description=__doc__.splitlines()[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument(
        "--devices_per_process",
        type=int,
        default=None,
        help="force this many CPU devices per process (default: the machine's devices)",
    )
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before every process is ended")
    parser.add_argument("--log_dir", default=None, help="one log file per process (default: inherit the terminal)")
    parser.add_argument("--dry_run", action="store_true", help="print the command lines, run nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every process runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after `--`")
    if args.dry_run:
        port = args.port or 12355
        for env in process_envs(args.num_processes, port=port, devices_per_process=args.devices_per_process):
            print(_command_line(env, command))
        return 0
    job = start(
        command, args.num_processes, devices_per_process=args.devices_per_process, port=args.port, log_dir=args.log_dir
    )
    try:
        codes = job.wait(args.timeout)
    except KeyboardInterrupt:
        job.terminate()
        raise
    for i, c in enumerate(codes):
        print(f"process {i}: exit code {c}", file=sys.stderr)
    return job.exit_code(codes)


if __name__ == "__main__":
    sys.exit(main())
