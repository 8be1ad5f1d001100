"""Processes for multi-process evaluation: who this rank is, which part of the work it does, and
gathering the parts back with exact counts.

Started by any launcher that exports RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (torchrun,
`accelerate launch`, srun with those set), the evaluator joins a process group: gloo on CPU, NCCL on
CUDA. Work is split into contiguous parts, each rank computes rows for its part, and `gather_rows`
concatenates them in rank order on every rank, dropping the padding that equal-sized collectives
need, so the result has exactly one row per item.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class EvalEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_from_environment(device: str = "auto") -> EvalEnv:
    """A single-process env, or (WORLD_SIZE > 1 in the environment) this rank of a new process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    dev = default_device(local_rank) if device == "auto" else torch.device(device)
    if world_size == 1:
        return EvalEnv(0, 1, dev)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return EvalEnv(dist.get_rank(), dist.get_world_size(), dev)


def part(total: int, rank: int, world_size: int) -> range:
    """Rank r's contiguous share of range(total) (sizes differ by at most one)."""
    return range(rank * total // world_size, (rank + 1) * total // world_size)


def _collective_device(env: EvalEnv) -> torch.device:
    return env.device if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(rows: np.ndarray, env: EvalEnv) -> np.ndarray:
    """Every rank's rows [n_r, ...] concatenated in rank order (on every rank); exact counts, no padding."""
    if env.world_size == 1:
        return rows
    device = _collective_device(env)
    counts = torch.zeros(env.world_size, dtype=torch.int64, device=device)
    counts[env.rank] = rows.shape[0]
    dist.all_reduce(counts)
    longest = int(counts.max())
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=torch.from_numpy(rows[:0]).dtype, device=device)
    padded[: rows.shape[0]] = torch.from_numpy(np.ascontiguousarray(rows)).to(device)
    parts = [torch.empty_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    return np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, counts.tolist())])


def gather_lists(items: list[Any], env: EvalEnv) -> list[Any]:
    """Every rank's list of small Python objects, concatenated in rank order."""
    if env.world_size == 1:
        return list(items)
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, items)
    return [item for part_items in out for item in part_items]


def broadcast(obj: Any, env: EvalEnv) -> Any:
    """Rank 0's `obj` on every rank."""
    if env.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: EvalEnv) -> None:
    if env.world_size > 1:
        dist.barrier()
