"""The Accelerate (DDP) backend.

Accelerate starts the processes (`accelerate launch`), joins the process group and places the
device; the training step stays the one of train.steps. Each of the model's networks is wrapped in
its own DDP (phases update them separately). The frozen networks of a phase are called bare, so DDP never
waits for gradients it cannot get.

Which parameters a network uses depends only on its level and on whether that level is fading in (the
previous level's RGB layers): DDP wraps a network once per such graph over the parameters it uses (the
network's `parameters_unused_at` names the others), so no `find_unused_parameters` graph walk runs after
each of the ~7 forward passes of an iteration. Buffers
are not broadcast at each forward either: the constant blur kernels never change, and the decoder's
tracked average w is read only from rank 0 (checkpoints, snapshots, the EMA that is saved), whose own
value is what DDP's broadcast from rank 0 gave it anyway. Autocast and loss scaling stay ours
(Accelerator(mixed_precision="no")), so every backend computes the same arithmetic.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from sivae.core.distributed import DistEnv, all_true_on_device, broadcast_buffers
from sivae.models.base import Model
from sivae.train.backend import LocalBackend, Precision


class AccelerateBackend(LocalBackend):
    """Multi-process data parallel through Accelerate: one DDP wrapper per network."""

    def __init__(
        self,
        model: Model,
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator,
        *,
        precision: Precision = "fp32",
        grad_clip: float | None = None,
    ):
        super().__init__(model, optimizers, device=accelerator.device, precision=precision, grad_clip=grad_clip)
        self.accelerator = accelerator
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.wrapped: dict[str, tuple[tuple, nn.Module]] = {}  # per network: (graph, its DDP wrapper)

    def graph(self) -> tuple:
        """What decides which parameters the networks use: the level, and whether it is fading in."""
        return self.lod, self.blend < 1.0

    def wrapper(self, name: str) -> nn.Module:
        """The DDP wrapper of network `name` for the current graph (made at the graph's first use; made
        directly rather than by accelerator.prepare_model, which would keep every wrapper of the run alive)."""
        if not torch.distributed.is_initialized():  # one process, no group: nothing to synchronise
            return self.model.network(name)
        graph = self.graph()
        if name not in self.wrapped or self.wrapped[name][0] != graph:
            self.wrapped.pop(name, None)  # the previous graph's buckets go before the new ones are allocated
            network = self.model.network(name)
            unused = network.parameters_unused_at(self.lod, self.blend) if hasattr(network, "parameters_unused_at") \
                else set()  # fmt: skip
            # DDP reduces the parameters that require gradients when it is built: the used ones alone
            params = [p for n, p in network.named_parameters() if n in unused and p.requires_grad]
            for p in params:
                p.requires_grad_(False)
            try:
                cuda = self.device.type == "cuda"
                module = DistributedDataParallel(network, device_ids=[self.device] if cuda else None,
                                                 broadcast_buffers=False)  # fmt: skip
            finally:
                for p in params:
                    p.requires_grad_(True)
            self.wrapped[name] = (graph, module)
        return self.wrapped[name][1]

    def callable(self, name: str) -> nn.Module:
        return self.wrapper(name) if name in self.updating else self.model.network(name)

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        if last or not torch.distributed.is_initialized():
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for name in self.updating:
            stack.enter_context(self.wrapper(name).no_sync())
        return stack

    def agree(self, flag: Tensor) -> Tensor:
        return all_true_on_device(flag.to(self.device), self.world_size)

    def save_checkpoint(self, directory: Path, images: int, trainer_state: dict[str, Any], keep: int) -> None:
        """Every rank takes rank 0's buffers first, so that all hold the state the checkpoint (rank 0's) and a
        resume from it give them."""
        broadcast_buffers(self.model, self.world_size)
        super().save_checkpoint(directory, images, trainer_state, keep)


def make_accelerator(cpu: bool):
    """An Accelerator for our use: it starts the processes and places the device; no mixed precision (ours)."""
    from accelerate import Accelerator

    return Accelerator(cpu=cpu, mixed_precision="no")


def accelerate_env(accelerator) -> DistEnv:
    return DistEnv(
        accelerator.process_index, accelerator.num_processes, accelerator.local_process_index, accelerator.device
    )
