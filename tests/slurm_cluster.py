"""A real one-node Slurm cluster on loopback for tests: munged, slurmctld and slurmd from
Debian's packages, started here by pid with a private config and state directory, stopped by pid.

`make test` installs the packages where it is root with apt-get; elsewhere `unavailable()` says why the
Slurm test skips. Clients find the cluster through SLURM_CONF (set in `env`); nothing under /etc/slurm
is written. A munged that already answers is used as it is.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sivae.core.distributed import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "munge")


def unavailable() -> str | None:
    """Why a local Slurm cannot run here, or None."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return (f"Slurm/munge not installed ({', '.join(missing)} missing): `make test` installs them as root with "
                "apt-get (slurmctld slurmd slurm-client munge)")  # fmt: skip
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    if not Path("/etc/munge/munge.key").is_file():
        return "no /etc/munge/munge.key (the munge package creates it)"
    return None


def _munge_answers() -> bool:
    proc = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, text=True)
    return proc.returncode == 0


class LocalSlurm:
    """Start with `start()`, stop with `stop()` (every daemon started here, by pid)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []

    def start(self, timeout: float = 90.0) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not _munge_answers():
            run_dir = Path("/run/munge")
            run_dir.mkdir(parents=True, exist_ok=True)
            munge = pwd.getpwnam("munge")
            os.chown(run_dir, munge.pw_uid, munge.pw_gid)
            self._spawn(["munged", "--foreground"], user=munge)
            self._wait(_munge_answers, timeout, "munged to answer")
        self.conf.write_text(self._config())
        for daemon in ("slurmctld", "slurmd"):
            self._spawn([daemon, "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, timeout, "the node to turn idle")

    def _config(self) -> str:
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        host = socket.gethostname()
        r = self.root
        return "\n".join([
            "ClusterName=sivae-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobRequeue=1",
            "AuthInfo=cred_expire=10",  # a requeued job waits this long before it starts again (default 120 s)
            "SchedulerParameters=sched_interval=1,bf_interval=1",  # look at pending jobs every second (default 60)
            "MinJobAge=600",
            "KillWait=30",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ])  # fmt: skip

    def _spawn(self, argv: list[str], user: pwd.struct_passwd | None = None) -> None:
        def drop() -> None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

        log = open(self.root / "log" / f"{argv[0]}.out", "ab")  # noqa: SIM115 (kept open for the daemon's life)
        self.daemons.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                             preexec_fn=drop if user else None))  # fmt: skip

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = self.root / "log"
                raise RuntimeError(f"local Slurm: waiting for {what} failed (exited: {dead}); logs in {logs}")
            time.sleep(0.5)

    def _node_idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env)
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def run(self, *argv: str) -> str:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, check=True).stdout

    def job_field(self, job_id: str, name: str) -> str:
        """A field of `scontrol show job` (e.g. JobState, Restarts, ExitCode)."""
        for item in self.run("scontrol", "show", "job", job_id, "-o").split():
            key, _, value = item.partition("=")
            if key == name:
                return value
        raise KeyError(f"{name} not in scontrol show job {job_id}")

    def stop(self) -> None:
        subprocess.run(["scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name], env=self.env, capture_output=True)
        for proc in reversed(self.daemons):
            proc.terminate()
        for proc in reversed(self.daemons):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.daemons.clear()
