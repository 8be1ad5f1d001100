"""The DeepSpeed backend: one engine per network, ZeRO stages 0-2, checkpoint directories.

Engines. Each of the model's networks gets a DeepSpeed engine around the trainer's Adam for it (the
config's betas and eps; the level's learning rate is set on that optimizer's param_groups, which
DeepSpeed's wrappers step). In a phase the trainable networks are called through their engines, the
frozen ones through `engine.module` with requires_grad off: gradients flow through them, and their
engines never wait for gradients they will not get.

Accumulation. `accumulating(last)` sets the trainable engines' accumulation boundary explicitly
(`set_gradient_accumulation_boundary`), so an engine accumulates -- and under ZeRO 2 reduces into
its partitions -- exactly the micro-batches the step code runs, and reduces and steps at the last
one; `set_layout` keeps DeepSpeed's micro-batch size and accumulation steps equal to the level's
layout. `engine.backward(loss, scale_wrt_gas=False)`: the step code already divides by the number
of micro-batches.

The joint update (VAE warm-up: one loss, the encoder and the decoder). Each engine has to run its own
backward. The encoder's outputs therefore enter the rest of the graph as leaves: the decoder engine's
backward fills the decoder's gradients and the leaves', then the encoder engine's backward continues
from there through the surrogate sum(<output, leaf gradient>), whose gradient is exactly the chain
rule's. (This needs the encoder's input not to depend on the decoder, which holds in the VAE loss.)
Other phases must each update one network.

Precision. fp32 and bf16: the engines hold fp32 parameters and the backend's autocast computes in
bf16, the same arithmetic as the other backends. DeepSpeed's own bf16 mode would turn the module's
weights to bf16 -- what the EMA, the frozen net and the snapshots read. fp16: DeepSpeed's fp16 mode
(fp16 module weights, fp32 master weights in the optimizer, DeepSpeed's dynamic loss scale started
and backed off like torch's GradScaler); the EMA is kept in fp32. DeepSpeed has fp16 on CUDA only.

Non-finite updates. Under ZeRO 1/2, and in fp16, DeepSpeed checks the global norm of the reduced
gradients and skips the step (`was_step_applied`); under ZeRO 0 in fp32/bf16 the reduced gradients
are whole on every rank and the backend checks their norm itself, as LocalBackend does.

Level switches. Progressive growing fades in blocks that exist from the start, so the engines stay
and `reset_optimizer` clears the Adam state in place (`reset_optimizer_on_level`). DeepSpeed hands
parameters of inactive levels zero gradients where the other backends leave them without; with
beta1 = 0 (the style configs) Adam's update for a zero gradient is exactly zero, so they agree.

Checkpoints: train.deepspeed_checkpoint (every rank saves; rank 0 marks the directory complete).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sivae.core import deepspeed_checkpoint as ds_ckpt
from sivae.core.checkpoint import CheckpointError
from sivae.core.config import ConfigError, merge
from sivae.core.distributed import (
    DistEnv,
    all_true,
    barrier,
    broadcast_buffers,
    broadcast_object,
    default_device,
    export_local_rank,
    free_port,
)
from sivae.models.base import Model
from sivae.train.backend import Backend, Precision
from sivae.train.schema import DeepSpeedConfig

JOINT = ds_ckpt.VAE_NETWORKS  # the one set of networks a single phase may update together


def deepspeed_config(
    settings: DeepSpeedConfig,
    *,
    precision: Precision,
    grad_clip: float | None,
    micro_batch: int,
    accumulation: int,
    world_size: int,
) -> dict[str, Any]:
    """The DeepSpeed config of one engine: the batch layout, clipping, ZeRO stage and precision of the run
    config, then `settings.extra` merged over it."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch * accumulation * world_size,
        "gradient_clipping": grad_clip or 0.0,
        "zero_optimization": {"stage": settings.zero_stage},
        "zero_allow_untested_optimizer": True,  # the trainer's torch Adam under ZeRO
        "steps_per_print": 2**62,  # the trainer logs progress itself
    }
    if precision == "fp16":
        # torch.amp.GradScaler's schedule (what LocalBackend uses): 2^16 at first, halved at each overflow,
        # doubled after 2000 steps without one
        config["fp16"] = {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 2000, "hysteresis": 1,
                          "min_loss_scale": 1}  # fmt: skip
    return merge(config, settings.extra)


def check_precision(precision: Precision, device: torch.device) -> None:
    """Refuse a precision DeepSpeed cannot train in on `device` (before any process group or engine exists)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision", "DeepSpeed trains in fp16 on CUDA only; use bf16 or fp32 here")


def prepare_ops() -> str:
    """Build now, in this one process, the op DeepSpeed builds at its first distributed start (on CPU its
    shared-memory communication op: about a minute, cached in ~/.cache/torch_extensions). Several ranks
    building it at once can crash; launchers call this before they start the ranks. Returns what was done."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return "nothing to build for this accelerator"
    builder.load(verbose=False)
    return f"{builder.absolute_name()} built (or found in the cache)"


def deepspeed_env(device: str = "auto") -> DistEnv:
    """Join (or, started alone, create) the process group through DeepSpeed. Reads RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT as every launcher exports them (under Slurm `sivae launch`
    maps Slurm's variables to them: DeepSpeed reads none of Slurm's)."""
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)  # its INFO lines repeat the config on every rank
    if "WORLD_SIZE" not in os.environ:  # a single process: a process group of one
        defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(free_port())}  # fmt: skip
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
    local_rank = export_local_rank()
    dev = default_device(local_rank) if device == "auto" else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    deepspeed.init_distributed(dist_backend="nccl" if dev.type == "cuda" else "gloo", auto_mpi_discovery=False)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev)


class DeepSpeedBackend(Backend):
    """Data parallel training through a DeepSpeed engine per network."""

    def __init__(
        self,
        model: Model,
        optimizers: dict[str, torch.optim.Optimizer],
        env: DistEnv,
        settings: DeepSpeedConfig,
        *,
        precision: Precision = "fp32",
        grad_clip: float | None = None,
        micro_batch: int,
        accumulation: int,
    ):
        import deepspeed

        check_precision(precision, env.device)
        super().__init__(model, env.device, precision)
        self.rank, self.world_size = env.rank, env.world_size
        self.optimizers = optimizers
        self.zero_stage = settings.zero_stage
        config = deepspeed_config(settings, precision=precision, grad_clip=grad_clip, micro_batch=micro_batch,
                                  accumulation=accumulation, world_size=env.world_size)  # fmt: skip
        self.engines = {
            name: deepspeed.initialize(model=model.network(name), optimizer=optimizers[name],
                                       config=copy.deepcopy(config), dist_init_required=False)[0]
            for name in model.networks
        }  # fmt: skip
        # ZeRO 0 in fp32/bf16 steps the plain Adam, which has no overflow check of its own
        self.checks_finiteness_itself = self.zero_stage == 0 and precision != "fp16"
        self._cut: list[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = []  # joint update: outputs, leaves

    def callable(self, name: str) -> nn.Module:
        engine = self.engines[name]
        return engine if name in self.updating else engine.module

    def _joint(self) -> bool:
        if len(self.updating) == 1:
            return False
        if set(self.updating) != set(JOINT):
            raise NotImplementedError(f"phase {self.phase!r} updates {', '.join(self.updating)} at once: under "
                                      "DeepSpeed a phase updates one network, or the VAE's encoder and "
                                      "decoder")  # fmt: skip
        return True

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = super().encode(x)
        if not self._joint():
            return mu, logvar
        if x.requires_grad:
            raise RuntimeError("the joint update cuts the graph at the encoder's outputs, so the encoder's input "
                               "must not depend on the decoder")  # fmt: skip
        leaves = (mu.detach().requires_grad_(), logvar.detach().requires_grad_())
        self._cut.append(((mu, logvar), leaves))
        return leaves

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        for name in self.updating:
            self.engines[name].set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, phase: str, loss: Tensor) -> None:
        if not self._joint():
            self.engines[self.updating[0]].backward(loss, scale_wrt_gas=False)
            return
        decoder, encoder = self.engines["decoder"], self.engines["encoder"]
        decoder.backward(loss, scale_wrt_gas=False)
        unscale = 1.0 / float(getattr(decoder.optimizer, "loss_scale", 1.0))  # fp16: the decoder's loss scale
        pairs = [(out, leaf.grad) for outs, leaves in self._cut for out, leaf in zip(outs, leaves)]
        self._cut.clear()
        surrogate = sum((out.float() * (grad.float() * unscale)).sum() for out, grad in pairs if grad is not None)
        if not isinstance(surrogate, Tensor):
            raise RuntimeError("the joint update's loss does not depend on the encoder")
        encoder.backward(surrogate, scale_wrt_gas=False)

    def agree(self, flag: Tensor) -> bool:
        return all_true(flag.to(self.device), self.world_size)

    def step(self, phase: str) -> bool:
        engines = [self.engines[name] for name in self.updating]
        if self.checks_finiteness_itself:
            grads = [p.grad for e in engines for p in e.module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
            applied = self.agree(torch.isfinite(norm))
            for engine in engines:
                engine.step() if applied else engine.zero_grad()
        else:
            applied = True
            for engine in engines:
                engine.step()
                applied = applied and engine.was_step_applied()
        return self.record(phase, applied)

    def set_layout(self, per_device_batch: int, accumulation: int) -> None:
        for engine in self.engines.values():
            engine.set_train_micro_batch_size(per_device_batch)
            engine.set_train_batch_size(per_device_batch * accumulation * self.world_size)

    # ---- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, directory: Path, images: int, trainer_state: dict[str, Any], keep: int) -> None:
        path = ds_ckpt.checkpoint_dir(directory, images)
        if ds_ckpt.is_complete(path):  # a finished run started again: this state is saved already
            return
        # each rank's forward passes move the buffers (the decoder's tracked average w) with its own samples;
        # only rank 0's are saved and read, so every rank takes them here, not after every update
        for engine in self.engines.values():
            broadcast_buffers(engine.module, self.world_size)
        if self.rank == 0 and path.exists():
            shutil.rmtree(path)  # an interrupted write of this same checkpoint before a crash
        barrier(self.world_size)
        first = self.model.networks[0]
        for name, engine in self.engines.items():
            client = {ds_ckpt.CLIENT_KEY: trainer_state} if name == first else {}
            engine.save_checkpoint(str(path), tag=name, client_state=client, save_latest=False)
        barrier(self.world_size)  # every rank's files are written
        if self.rank == 0:
            ds_ckpt.mark_complete(path, images, self.world_size, self.zero_stage, self.model.networks)
            ds_ckpt.prune(directory, keep)
        barrier(self.world_size)

    def restore_checkpoint(self, directory: Path, warn) -> tuple[str, dict[str, Any]] | None:
        found = ds_ckpt.latest_complete(directory) if self.rank == 0 else None
        name = broadcast_object(found.name if found else None, self.world_size)
        if name is None:
            return None
        path = Path(directory) / name
        marker = ds_ckpt.read_marker(path)
        if marker["zero_stage"] != self.zero_stage:
            raise CheckpointError(f"{path}: written under ZeRO {marker['zero_stage']}, this run uses ZeRO "
                                  f"{self.zero_stage}")  # fmt: skip
        if marker["world_size"] != self.world_size and self.zero_stage > 0:
            raise CheckpointError(
                f"{path}: written by {marker['world_size']} processes under ZeRO {self.zero_stage}, which partitions "
                f"the optimizer state per process; resume with {marker['world_size']} processes"
            )
        if ds_ckpt.networks_of(marker) != self.model.networks:
            raise CheckpointError(f"{path}: holds the networks {', '.join(ds_ckpt.networks_of(marker))}, this model "
                                  f"has {', '.join(self.model.networks)}")  # fmt: skip
        trainer_state = None
        for net, engine in self.engines.items():
            loaded, client = engine.load_checkpoint(str(path), tag=net, load_optimizer_states=True,
                                                    load_lr_scheduler_states=False)  # fmt: skip
            if loaded is None:
                raise CheckpointError(f"{path / net}: DeepSpeed could not load it")
            if net == self.model.networks[0]:
                trainer_state = client[ds_ckpt.CLIENT_KEY]
        return name, trainer_state
