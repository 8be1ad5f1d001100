"""Slurm: its variables mapped to ranks and rendezvous, sbatch scripts, submission.

Neither DeepSpeed nor Accelerate reads Slurm's variables, so `slurm_place` maps them (a pure function
of the environment) to the ones every launcher exports: RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR (the first host of the job's node list) and MASTER_PORT (a
function of the job id, so that every task of a job computes the same port, and a requeued job --
same id -- the same one again; or the user's SIVAE_MASTER_PORT / MASTER_PORT).

A derived port may be taken on the first host (another job's rendezvous, any server). Only a task on
that host can see it, so `agree_port` lets the job's rank 0 probe it and, in a job written by
`sivae launch slurm` / `eval-job` (SIVAE_RENDEZVOUS_DIR: a directory every node shares), take the next
free port of the range and publish it there for the other tasks; without such a directory, or for a
port the user set, a taken port fails at once, naming the port and SIVAE_MASTER_PORT.

Training jobs (`training_script`): srun starts one task per process (nodes x processes per node);
each task runs `sivae launch task -- sivae train ...`, which maps its Slurm variables and replaces
itself with the trainer, so Slurm's signals reach the training processes themselves. With the
torchrun launcher srun starts one torchrun per node instead, its --node-rank and rendezvous taken
from the same mapping.

Preemption: `--signal=B:USR1@<seconds>` warns the batch shell before the time limit; the script
passes the signal to the job's tasks (`scancel --signal=USR1`: steps only), the trainers agree on
the iteration, checkpoint and exit with EXIT_PREEMPTED (4), and the script requeues the job
(`scontrol requeue`); the new allocation runs the same script, which resumes the same run
directory. A SIGTERM from the scheduler (preemption, with `--requeue`) makes the trainers checkpoint
the same way and Slurm requeues the job itself. A node that fails without warning: Slurm requeues the
job (`--requeue`) and the run resumes from its newest complete checkpoint.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from sivae.train.exit_codes import EXIT_PREEMPTED

# MASTER_PORT in [20000, 32768): below Linux's default ephemeral range (32768-60999), where outgoing connections
# take their ports, so that a derived port is taken only by another server
PORT_BASE, PORT_SPAN = 20000, 12768
PORT_TRIES = 64  # ports rank 0 probes, from the derived one on, before it gives up
PORT_WAIT_SECONDS = 300.0  # how long the other tasks wait for rank 0's port (its start, a shared file system's delay)
USER_PORT_KEYS = ("SIVAE_MASTER_PORT", "MASTER_PORT")  # the user's rendezvous port, in this order
RENDEZVOUS_DIR_KEY = "SIVAE_RENDEZVOUS_DIR"


class SlurmError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------
# Slurm's variables -> ranks and rendezvous


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list, e.g. "gpu[01-03,07],login" -> ["gpu01", "gpu02", "gpu03", "gpu07", "login"];
    bracket groups may repeat within a name ("rack[1-2]-n[1-2]"), zero padding is kept."""
    hosts: list[str] = []
    for name in _split_top_level(hostlist.strip()):
        parts = re.split(r"(\[[^\]]*\])", name)
        choices = [_expand_range(p[1:-1], hostlist) if p.startswith("[") else [p] for p in parts if p]
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    if not hosts:
        raise SlurmError(f"empty host list {hostlist!r}")
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets."""
    names, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            names.append(text[start:i])
            start = i + 1
    names.append(text[start:])
    return [n for n in names if n]


def _expand_range(spec: str, hostlist: str) -> list[str]:
    out = []
    for item in spec.split(","):
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise SlurmError(f"cannot read the host range [{spec}] in {hostlist!r}")
        width = len(low)
        out.extend(str(n).zfill(width) for n in range(int(low), int(high or low) + 1))
    return out


def master_port(job_id: int) -> int:
    """The rendezvous port of a job: the same on every task and after a requeue (same job id)."""
    return PORT_BASE + job_id % PORT_SPAN


@dataclass(frozen=True)
class SlurmPlace:
    """Where one Slurm task stands in the job, in the terms launchers use."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    port_key: str | None = None  # the variable the user set the port with; None: derived from the job id

    def torch_env(self) -> dict[str, str]:
        """The variables torch.distributed, Accelerate and DeepSpeed read (env:// rendezvous)."""
        return {
            "RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size), "NODE_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port),
        }  # fmt: skip


def _tasks_on_node(tasks_per_node: str, node_rank: int) -> int:
    """SLURM_TASKS_PER_NODE ("2(x3),1": 2 tasks on each of 3 nodes, then 1) -> the count on node `node_rank`."""
    counts: list[int] = []
    for item in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise SlurmError(f"SLURM_TASKS_PER_NODE: cannot read {tasks_per_node!r}")
        counts += [int(match[1])] * int(match[2] or 1)
    if node_rank >= len(counts):
        raise SlurmError(f"SLURM_TASKS_PER_NODE={tasks_per_node!r} has no entry for node {node_rank}")
    return counts[node_rank]


def slurm_place(env: Mapping[str, str]) -> SlurmPlace:
    """This task's ranks and the job's rendezvous from Slurm's variables (in a task started by srun)."""

    def need(name: str) -> str:
        if name not in env:
            raise SlurmError(f"{name} is not set: run this inside a Slurm job step (srun) of a batch job")
        return env[name]

    def integer(name: str) -> int:
        value = need(name)
        if not value.isdigit():
            raise SlurmError(f"{name}={value!r} is not a non-negative integer")
        return int(value)

    def port() -> tuple[int, str | None]:
        for key in USER_PORT_KEYS:
            if env.get(key, "").strip():
                value = env[key].strip()
                if not value.isdigit() or not 0 < int(value) < 65536:
                    raise SlurmError(f"{key}={value!r} is not a TCP port (1-65535)")
                return int(value), key
        return master_port(integer("SLURM_JOB_ID")), None

    node_rank = integer("SLURM_NODEID")
    nodelist = env.get("SLURM_JOB_NODELIST") or need("SLURM_NODELIST")
    num_nodes = integer("SLURM_JOB_NUM_NODES") if "SLURM_JOB_NUM_NODES" in env else integer("SLURM_NNODES")
    place = SlurmPlace(
        rank=integer("SLURM_PROCID"),
        world_size=integer("SLURM_NTASKS"),
        local_rank=integer("SLURM_LOCALID"),
        local_world_size=_tasks_on_node(need("SLURM_TASKS_PER_NODE"), node_rank),
        node_rank=node_rank,
        num_nodes=num_nodes,
        master_addr=expand_hostlist(nodelist)[0],
        master_port=(user_port := port())[0],
        port_key=user_port[1],
    )
    if not (place.rank < place.world_size and place.local_rank < place.local_world_size
            and place.node_rank < place.num_nodes):  # fmt: skip
        raise SlurmError(f"inconsistent Slurm variables: {place}")
    return place


def port_is_free(port: int) -> bool:
    """Whether a rendezvous could listen on `port` here now (on every address, as torch's TCPStore does). With
    SO_REUSEADDR like the store's, a port in TIME_WAIT (this job's previous start, before a requeue) counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def port_file(directory: Path, env: Mapping[str, str]) -> Path:
    """Where rank 0 publishes the port of this start of the job: a requeued job (same id) probes again."""
    return Path(directory) / f"rendezvous-port-{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT') or 0}"


def agree_port(place: SlurmPlace, env: Mapping[str, str], *, timeout: float = PORT_WAIT_SECONDS) -> SlurmPlace:
    """`place` with the port every task of the job meets at. Rank 0 runs on the first host, where the rendezvous
    listens, and probes there; the other tasks cannot see that host's ports, so they read rank 0's choice from
    SIVAE_RENDEZVOUS_DIR (waiting up to `timeout` seconds) or, without it, must take the derived port as it is."""
    master, host = place.rank == 0, socket.gethostname()
    how = "SIVAE_MASTER_PORT (exported before sbatch: every task sees it)"
    if place.port_key is not None:  # every task has the user's port: nothing to agree on
        if master and not port_is_free(place.master_port):
            raise SlurmError(f"{place.port_key}={place.master_port} is taken on {host}: set {how} to a free port")
        return place
    directory = env.get(RENDEZVOUS_DIR_KEY, "").strip()
    if not directory:
        if master and not port_is_free(place.master_port):
            raise SlurmError(f"MASTER_PORT {place.master_port} (derived from job id {env.get('SLURM_JOB_ID')}) is "
                             f"taken on {host}: set {how} to a free port, or set {RENDEZVOUS_DIR_KEY} to a "
                             "directory every node shares for a free port to be chosen")  # fmt: skip
        return place
    # Rank 0 chooses and publishes through a shared file: only it can see its host's ports, and jobs already
    # rely on a shared run directory; a port guessed by each node alone could differ between nodes.
    path = port_file(Path(directory), env)
    if master:
        candidates = [PORT_BASE + (place.master_port - PORT_BASE + i) % PORT_SPAN for i in range(PORT_TRIES)]
        port = next((p for p in candidates if port_is_free(p)), None)
        if port is None:
            raise SlurmError(f"ports {candidates[0]}..{candidates[-1]} (from job id {env.get('SLURM_JOB_ID')}) are "
                             f"all taken on {host}: set {how} to a free port")  # fmt: skip
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(f"{port}\n")
            os.replace(tmp, path)  # whole or absent: a waiting task never reads half a number
        except OSError as exc:
            raise SlurmError(f"cannot publish the rendezvous port in {RENDEZVOUS_DIR_KEY}={directory}: {exc}") from None
        return replace(place, master_port=port)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SlurmError(f"rank 0 published no rendezvous port in {path} within {timeout:g} s (did it start? "
                             f"is {RENDEZVOUS_DIR_KEY}={directory} shared by every node?): set {how} to bypass")
        time.sleep(0.2)
    return replace(place, master_port=int(path.read_text()))


# ------------------------------------------------------------------------------------------------
# sbatch scripts


@dataclass
class JobSpec:
    """What an sbatch script asks for and runs."""

    name: str
    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    time: str | None  # HH:MM:SS or D-HH:MM:SS
    partition: str | None
    account: str | None
    output: str  # path pattern (%x job name, %j job id)
    error: str
    gpus_per_node: int = 0  # 0: no GPU request (CPU nodes)
    requeue: bool = True
    warn_seconds: int | None = 300  # --signal=B:USR1@<seconds>: the warning before the time limit
    workdir: str = "."
    env: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)  # shell lines before the main step


TIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")


def sbatch_header(spec: JobSpec) -> list[str]:
    if spec.time is not None and not TIME.match(spec.time):
        raise SlurmError(f"--time {spec.time!r}: expected HH:MM:SS or D-HH:MM:SS")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={spec.name}",
        f"#SBATCH --nodes={spec.nodes}",
        f"#SBATCH --ntasks-per-node={spec.tasks_per_node}",
        f"#SBATCH --cpus-per-task={spec.cpus_per_task}",
    ]
    if spec.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={spec.gpus_per_node}")
    for option, value in (("time", spec.time), ("partition", spec.partition), ("account", spec.account)):
        if value:
            lines.append(f"#SBATCH --{option}={value}")
    lines += [f"#SBATCH --output={spec.output}", f"#SBATCH --error={spec.error}",
              "#SBATCH --open-mode=append"]  # a requeued job appends to the same logs  # fmt: skip
    if spec.requeue:
        lines.append("#SBATCH --requeue")
    if spec.warn_seconds:
        lines.append(f"#SBATCH --signal=B:USR1@{spec.warn_seconds}")
    return lines


def training_script(spec: JobSpec, step: Sequence[str], *, per_node_step: Sequence[str] | None = None) -> str:
    """The sbatch script of a training job: `step` runs as srun's tasks (the script's --ntasks-per-node);
    `per_node_step`, if given, runs first as one task per node (e.g. compiling DeepSpeed's ops)."""
    q = shlex.join
    lines = [
        *sbatch_header(spec),
        "",
        "# Written by `sivae launch slurm`. Every start of this job (the first, and each requeue) resumes the run",
        "# directory from its newest complete checkpoint.",
        "set -uo pipefail",
        f"cd {shlex.quote(spec.workdir)}",
        *(f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()),
        *spec.setup,
        'echo "sivae: job $SLURM_JOB_ID, start $(( ${SLURM_RESTART_COUNT:-0} + 1 )), nodes $SLURM_JOB_NODELIST"',
        "warned=0",
        "# The warning before the time limit (--signal=B:USR1@...) comes to this shell: pass it on to the job's",
        "# tasks (scancel --signal reaches the steps, not this shell); the trainers checkpoint and exit.",
        "trap 'warned=1; echo \"sivae: time-limit warning: checkpointing\"; scancel --signal=USR1 $SLURM_JOB_ID' USR1",
    ]  # fmt: skip
    if per_node_step:
        lines.append(f"srun --ntasks-per-node=1 --ntasks={spec.nodes} {q(per_node_step)} || exit $?")
    lines += [
        f"srun --kill-on-bad-exit=1 {q(step)} &",
        "step=$!",
        "wait $step; status=$?",
        "while kill -0 $step 2>/dev/null; do wait $step; status=$?; done  # a trapped signal ends `wait` early",
        f"if [ $warned = 1 ] || [ $status = {EXIT_PREEMPTED} ]; then",
        '    echo "sivae: stopped at a checkpoint (status $status); requeueing job $SLURM_JOB_ID"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        "exit $status",
        "",
    ]
    return "\n".join(lines)


def recurring_script(spec: JobSpec, step: Sequence[str], *, script_path: str, every: str | None) -> str:
    """The sbatch script of an evaluation job; with `every` (a Slurm time offset such as "24hours") the job
    submits `script_path` (this script) again to begin that long after it started."""
    lines = [
        *sbatch_header(spec),
        "",
        "# Written by `sivae launch eval-job`.",
        "set -uo pipefail",
        f"cd {shlex.quote(spec.workdir)}",
        *(f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()),
        *spec.setup,
    ]
    if every:
        lines += [
            "# the next run is submitted first, so that a failing evaluation does not end the series",
            f"sbatch --begin=now+{every} {shlex.quote(script_path)}",
        ]
    lines += [f"srun {shlex.join(step)}", ""]
    return "\n".join(lines)


def submit(script_path: str) -> str:
    """Submit with sbatch; returns the job id."""
    try:
        proc = subprocess.run(["sbatch", "--parsable", script_path], capture_output=True, text=True)
    except FileNotFoundError:
        raise SlurmError("sbatch not found: is this a Slurm login node? (--dry-run prints the script)") from None
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {script_path} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]
