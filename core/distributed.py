"""Who this process is and the collectives every package uses; all are no-ops in a single process.

Started by any launcher that exports RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (torchrun,
`accelerate launch`, `deepspeed`, srun with those set), a process joins a process group: gloo on
CPU, NCCL on CUDA. `DistEnv` says which rank and device it is; training and evaluation take the
same one. Work is split into contiguous parts (`part`), and `gather_rows` concatenates each rank's
rows in rank order on every rank, dropping the padding that equal-sized collectives need.

`failure_agreement` makes one rank's exception end a block of collective work on every rank (instead
of leaving the others blocked in their next collective for ever): inside it, each collective here
first all-reduces a "has a rank failed" flag, which the failing rank sends in its place.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def single_process_env(device: str = "auto") -> DistEnv:
    return DistEnv(0, 1, 0, default_device() if device == "auto" else torch.device(device))


def launched_by_distributed_launcher() -> bool:
    """True under accelerate launch / torchrun / deepspeed (they export WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank_from_environment() -> int:
    """This process's index on its node: LOCAL_RANK (torchrun, accelerate, deepspeed, `sivae launch`), else
    SLURM_LOCALID (a bare srun), else RANK modulo the node's GPUs; never RANK itself, which on a second
    node names a GPU the node does not have."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return int(os.environ.get("RANK", "0")) % max(1, torch.cuda.device_count())


def export_local_rank() -> int:
    """`local_rank_from_environment`, also set as LOCAL_RANK (for a process started without a launcher that sets
    it: srun with RANK / WORLD_SIZE / MASTER_* exported). Accelerate and DeepSpeed read LOCAL_RANK alone:
    without it Accelerate takes a CUDA process for a single one, and DeepSpeed's engine refuses to start."""
    local_rank = local_rank_from_environment()
    os.environ["LOCAL_RANK"] = str(local_rank)
    return local_rank


def init_from_environment(device: str = "auto") -> DistEnv:
    """A single-process env, or (WORLD_SIZE > 1 in the environment) this rank of a new process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = local_rank_from_environment()
    dev = default_device(local_rank) if device == "auto" else torch.device(device)
    if world_size == 1:
        return DistEnv(0, 1, 0, dev)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def free_port() -> int:
    """A TCP port free on this host now, for a rendezvous (MASTER_PORT) or a daemon."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part(total: int, rank: int, world_size: int) -> range:
    """Rank r's contiguous share of range(total) (sizes differ by at most one)."""
    return range(rank * total // world_size, (rank + 1) * total // world_size)


class PeerFailure(RuntimeError):
    """Another rank's work failed inside a `failure_agreement` block: this rank stops the same work."""

    def __init__(self, failed_rank: int):
        super().__init__(f"rank {failed_rank} failed")
        self.failed_rank = failed_rank


_agreeing = False  # inside a failure_agreement block (collectives check their peers first)


def _highest_failed_rank(failed: bool) -> int | None:
    """One all-reduce of (rank + 1 if this rank failed else 0): the highest failed rank, or None."""
    flag = torch.tensor([dist.get_rank() + 1 if failed else 0], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) - 1 if flag.item() else None


def _check_peers(world_size: int) -> None:
    if _agreeing and world_size > 1 and (failed := _highest_failed_rank(False)) is not None:
        raise PeerFailure(failed)


@contextlib.contextmanager
def failure_agreement(world_size: int) -> Iterator[None]:
    """Run a block of collective work (this module's collectives only) so that every rank leaves it failed
    when one rank raises: that rank meets the others at their next collective with a failure flag and
    re-raises; they raise PeerFailure there. A block that ends well agrees once more at its end (a rank
    may fail after the last collective, in work of its own)."""
    global _agreeing
    if world_size == 1:
        yield
        return
    _agreeing = True
    try:
        try:
            yield
        except PeerFailure:
            raise  # the agreement has happened, inside the collective that raised this
        except BaseException:
            _agreeing = False
            _highest_failed_rank(True)  # in place of the collective the others wait in
            raise
        _agreeing = False
        if (failed := _highest_failed_rank(False)) is not None:
            raise PeerFailure(failed)
    finally:
        _agreeing = False


def all_gather_objects(obj: Any, world_size: int) -> list:
    """Every rank's `obj`, in rank order."""
    if world_size == 1:
        return [obj]
    _check_peers(world_size)
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def gather_lists(items: list[Any], world_size: int) -> list[Any]:
    """Every rank's list of small Python objects, concatenated in rank order."""
    return [item for part_items in all_gather_objects(list(items), world_size) for item in part_items]


def broadcast_object(obj: Any, world_size: int) -> Any:
    """Rank 0's `obj` on every rank."""
    if world_size == 1:
        return obj
    _check_peers(world_size)
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world_size: int) -> None:
    if world_size > 1:
        _check_peers(world_size)
        dist.barrier()


def all_true(flag: torch.Tensor, world_size: int) -> bool:
    """Whether `flag` holds on every rank (so that every rank takes the same decision)."""
    return bool(all_true_on_device(flag, world_size))


def all_true_on_device(flag: torch.Tensor, world_size: int) -> torch.Tensor:
    """`flag` and-ed over every rank, as a bool tensor where `flag` lives: no host read (an all-reduce on
    the GPU is queued like a kernel)."""
    if world_size == 1:
        return flag.bool()
    _check_peers(world_size)
    agreed = flag.to(torch.int32).reshape(1)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return agreed.reshape(flag.shape).bool()


def broadcast_buffers(module: torch.nn.Module, world_size: int) -> None:
    """Rank 0's buffers (running statistics, tracked averages) in `module` on every rank."""
    if world_size > 1:
        _check_peers(world_size)
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def _collective_device() -> torch.device:
    """Where collective tensors live: this rank's GPU under NCCL (set by init_from_environment), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(rows: np.ndarray, env: DistEnv) -> np.ndarray:
    """Every rank's rows [n_r, ...] concatenated in rank order (on every rank); exact counts, no padding."""
    if env.world_size == 1:
        return rows
    _check_peers(env.world_size)
    device = _collective_device()
    counts = torch.zeros(env.world_size, dtype=torch.int64, device=device)
    counts[env.rank] = rows.shape[0]
    dist.all_reduce(counts)
    longest = int(counts.max())
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=torch.from_numpy(rows[:0]).dtype, device=device)
    padded[: rows.shape[0]] = torch.from_numpy(np.ascontiguousarray(rows)).to(device)
    parts = [torch.empty_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    return np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, counts.tolist())])


def leave_process_group() -> None:
    """Destroy the default process group, if any, before the interpreter exits. Left to interpreter
    teardown, gloo's worker threads can outlive their owner and abort the process ("terminate called
    without an active exception", exit status -6) after all the work succeeded."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
