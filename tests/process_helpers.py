"""Several real processes at once for the tests: a local gloo group's variables, and running them together."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sivae.core.distributed import free_port


def rendezvous_env(world_size: int) -> dict[str, str]:
    """The environment of a local gloo group of `world_size` processes on a free port (each adds its RANK)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(world_size)}  # fmt: skip


def run_together(command: list[str], envs: list[dict[str, str]], cwd: Path, timeout: float = 300,
                 expect_status: int = 0) -> list[str]:
    """Start `command` once per environment, all at once; wait for every one (a hang fails after `timeout`)
    and fail with the stderr of those that did not exit with `expect_status`. Returns their stdouts."""
    return run_all([(command, env) for env in envs], cwd, timeout, expect_status)


def run_all(runs: list[tuple[list[str], dict[str, str]]], cwd: Path, timeout: float = 300,
            expect_status: int = 0) -> list[str]:
    """`run_together` for processes with commands of their own: each (command, environment) at once."""
    procs = [subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for command, env in runs]  # fmt: skip
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()  # only if it hung; a finished process ignores this
    assert all(p.returncode == expect_status for p in procs), [(p.returncode, err[-2000:])
                                                              for p, (_, err) in zip(procs, outputs)]
    return [out for out, _ in outputs]
