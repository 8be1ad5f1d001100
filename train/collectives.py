"""Small collectives over the default process group that are no-ops in a single process."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def all_gather_objects(obj: Any, world_size: int) -> list:
    """Every rank's `obj`, in rank order."""
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world_size: int) -> Any:
    """Rank 0's `obj` on every rank."""
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def all_true(flag: torch.Tensor, world_size: int) -> bool:
    """Whether `flag` holds on every rank (so that every rank takes the same decision)."""
    if world_size == 1:
        return bool(flag)
    flag = flag.to(torch.int32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def leave_process_group() -> None:
    """Destroy the default process group, if any, before the interpreter exits. Left to interpreter
    teardown, gloo's worker threads can outlive their owner and abort the process ("terminate called
    without an active exception", exit status -6) after all the work succeeded."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
