"""The commands that start training processes: one process, torchrun, Accelerate's and DeepSpeed's launchers.

Each launcher is a pure function from a `Launch` (what to run, how many nodes and processes per node,
this node's rank, the rendezvous) to the argv of this node's launcher process; `sivae launch` runs it
(one node) or prints it per node (several). The processes they start run `sivae train CONFIG ...`
with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment.

The training backend is the config's `train.backend`; left at `auto`, the launcher names it:
`local` -> single, `accelerate` and `torchrun` -> accelerate (DDP), `deepspeed` -> deepspeed.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass

LAUNCHERS = ("local", "accelerate", "deepspeed", "torchrun")
DEFAULT_BACKEND = {"local": "single", "accelerate": "accelerate", "torchrun": "accelerate", "deepspeed": "deepspeed"}
DEFAULT_PORT = 29500


class LaunchError(ValueError):
    pass


@dataclass(frozen=True)
class Launch:
    launcher: str
    train_args: tuple[str, ...]  # after `sivae train`: CONFIG --run-dir DIR ... key=value ...
    nodes: int = 1
    procs_per_node: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    python: str = sys.executable
    program: tuple[str, ...] = ("-m", "sivae")  # how each process runs `sivae` under `python`

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise LaunchError(f"unknown launcher {self.launcher!r}; one of {', '.join(LAUNCHERS)}")
        if self.nodes < 1 or self.procs_per_node < 1:
            raise LaunchError("--nodes and --gpus-per-node must be >= 1")
        if not 0 <= self.node_rank < self.nodes:
            raise LaunchError(f"--node-rank must be in [0, {self.nodes}), got {self.node_rank}")
        if self.launcher == "local" and self.nodes * self.procs_per_node != 1:
            raise LaunchError("the local launcher runs one process: use accelerate, deepspeed or torchrun for more")

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def train_module(launch: Launch) -> list[str]:
    return [*launch.program, "train", *launch.train_args]


def deepspeed_world_info(nodes: int, procs_per_node: int) -> str:
    """DeepSpeed's launcher's --world_info: base64 JSON {node: [local device ids]}, in node-rank order (the
    launcher takes its node by --node_rank; the names are labels)."""
    info = {f"node{n}": list(range(procs_per_node)) for n in range(nodes)}
    return base64.urlsafe_b64encode(json.dumps(info).encode()).decode()


def launcher_command(launch: Launch) -> list[str]:
    """argv of this node's launcher process."""
    py, n, g = launch.python, launch.nodes, launch.procs_per_node
    if launch.launcher == "local":
        return [py, *train_module(launch)]
    if launch.launcher == "torchrun":
        return [py, "-m", "torch.distributed.run", f"--nnodes={n}", f"--nproc-per-node={g}",
                f"--node-rank={launch.node_rank}", f"--master-addr={launch.master_addr}",
                f"--master-port={launch.master_port}", *train_module(launch)]  # fmt: skip
    if launch.launcher == "accelerate":
        # autocast and loss scaling stay the trainer's (--mixed_precision no), as under every launcher;
        # accelerate refuses --multi_gpu for one process
        multi = ["--multi_gpu"] if launch.world_size > 1 else []
        return [py, "-m", "accelerate.commands.launch", *multi, f"--num_processes={launch.world_size}",
                f"--num_machines={n}", f"--machine_rank={launch.node_rank}", f"--main_process_ip={launch.master_addr}",
                f"--main_process_port={launch.master_port}", "--mixed_precision=no", "--dynamo_backend=no",
                *train_module(launch)]  # fmt: skip
    program = ["--module", launch.program[1]] if launch.program[0] == "-m" else list(launch.program)
    return [py, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={deepspeed_world_info(n, g)}",
            f"--node_rank={launch.node_rank}", f"--master_addr={launch.master_addr}",
            f"--master_port={launch.master_port}", "--no_local_rank", *program, "train",
            *launch.train_args]  # fmt: skip


def launcher_env(launch: Launch, cuda: bool) -> dict[str, str]:
    """Variables the launcher needs beyond the caller's environment."""
    if launch.launcher == "accelerate" and not cuda:
        return {"ACCELERATE_USE_CPU": "true"}  # its --multi_gpu on CPU: gloo processes
    return {}


def effective_backend(config_backend: str, launcher: str) -> str:
    """The training backend: the config's, or the launcher's when the config leaves it at auto."""
    return DEFAULT_BACKEND[launcher] if config_backend == "auto" else config_backend
