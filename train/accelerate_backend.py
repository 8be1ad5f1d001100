"""The Accelerate (DDP) backend.

Accelerate starts the processes (`accelerate launch`), joins the process group and places the
device; the training step stays the one of train.steps. Each of the model's networks is wrapped in
its own DDP (phases update them separately). The frozen networks of a phase are called bare, so DDP never
waits for gradients it cannot get; parameters of inactive levels are found unused each step.
Autocast and loss scaling stay ours (Accelerator(mixed_precision="no")), so every backend
computes the same arithmetic.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from sivae.core.distributed import DistEnv, all_true
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
        self.wrapped: dict[str, nn.Module] = {
            name: accelerator.prepare_model(model.network(name), device_placement=True) for name in model.networks
        }

    def callable(self, name: str) -> nn.Module:
        return self.wrapped[name] if name in self.updating else self.model.network(name)

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        if last:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for name in self.updating:
            if hasattr(self.wrapped[name], "no_sync"):
                stack.enter_context(self.wrapped[name].no_sync())
        return stack

    def agree(self, flag: Tensor) -> bool:
        return all_true(flag.to(self.device), self.world_size)


def make_accelerator(cpu: bool):
    """An Accelerator for our use: no mixed precision, DDP that tolerates unused parameters."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(
        cpu=cpu,
        mixed_precision="no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=True)],
    )


def accelerate_env(accelerator) -> DistEnv:
    return DistEnv(
        accelerator.process_index, accelerator.num_processes, accelerator.local_process_index, accelerator.device
    )
