"""The training step's view of the networks: forward passes, which net learns, and updates.

The training steps (train/steps.py) are written once against `Backend`. A backend decides how a
forward pass runs (device, autocast, DDP or DeepSpeed wrappers) and what an update is
(backward, loss scaling, the finiteness check, the optimizer step), and it owns the training state
of the networks and optimizers: the batch layout and optimizer reset of a level (`set_layout`,
`reset_optimizer`) and how that state is checkpointed (`save_checkpoint` / `restore_checkpoint`, with the trainer's own
state inside). `LocalBackend` is the plain single process on a CPU or one GPU with single-file
checkpoints; `train.distributed.AccelerateBackend` subclasses it, `train.deepspeed_backend` has
DeepSpeed's engines and checkpoint directories.

Freezing follows DESIGN.md 2.1: in the encoder phase the decoder's parameters stop requiring
gradients but gradients still flow *through* it into the encoder, and vice versa. The frozen net
is called unwrapped (DDP and DeepSpeed then do not wait for gradients it will never produce).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sivae.core import checkpoint
from sivae.core.distributed import barrier, broadcast_object
from sivae.models.base import VAE

Net = Literal["encoder", "decoder", "both"]
Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Backend:
    """Forward passes at the current level, the trainable-net phase, and guarded updates."""

    model: VAE
    device: torch.device
    precision: Precision
    rank: int = 0
    world_size: int = 1
    optimizers: dict[str, torch.optim.Optimizer]  # per net; their param_groups carry the learning rate

    def __init__(self, model: VAE, device: torch.device, precision: Precision = "fp32"):
        self.model = model
        self.device = device
        self.precision = precision
        self.lod: int | None = None
        self.blend: float = 1.0
        self.trainable: Net = "both"
        self.skipped = {"encoder": 0, "decoder": 0, "both": 0}
        self.consecutive_skips = 0

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    def set_level(self, lod: int | None, blend: float) -> None:
        self.lod, self.blend = lod, float(blend)

    # ---- forward passes -------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with self.autocast():
            return self.callable("encoder")(x, self.lod, self.blend)

    def decode(self, z: Tensor) -> Tensor:
        with self.autocast():
            return self.callable("decoder")(z, self.lod, self.blend, False)

    def generate(self, z_prior: Tensor) -> Tensor:
        """Decode prior samples (style mixing allowed, unlike reconstructions)."""
        with self.autocast():
            return self.callable("decoder")(z_prior, self.lod, self.blend, True)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def callable(self, name: Literal["encoder", "decoder"]) -> nn.Module:
        """The module to call for `name`: wrapped when it trains, bare when it is frozen."""
        return getattr(self.model, name)

    # ---- phases and updates ---------------------------------------------------------------
    @contextlib.contextmanager
    def train_only(self, net: Net) -> Iterator[None]:
        """Within the block only `net` has trainable parameters."""
        self.trainable = net
        self.model.encoder.requires_grad_(net in ("encoder", "both"))
        self.model.decoder.requires_grad_(net in ("decoder", "both"))
        try:
            yield
        finally:
            self.trainable = "both"

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        """Wraps one micro-batch's forward and backward; gradients are synchronised across
        processes only on the last micro-batch of an update."""
        return contextlib.nullcontext()

    def backward(self, net: Net, loss: Tensor) -> None:
        """Accumulate the gradient of one micro-batch's (already averaged) loss into `net`."""
        raise NotImplementedError

    def step(self, net: Net) -> bool:
        """Apply the accumulated gradients of `net`, unless a loss or gradient was non-finite (then
        count the skip). Clears the gradients either way; returns whether the update was applied."""
        raise NotImplementedError

    def record(self, net: Net, applied: bool) -> bool:
        if applied:
            self.consecutive_skips = 0
        else:
            self.skipped[net] += 1
            self.consecutive_skips += 1
        return applied

    # ---- levels and checkpoints -----------------------------------------------------------
    def set_layout(self, per_device_batch: int, accumulation: int) -> None:
        """The batch layout from now on: micro-batches per update and their size on each process."""

    def reset_optimizer(self) -> None:
        """Forget the optimizer state (moments, step counts): the reference resets Adam at each level switch."""
        for opt in self.optimizers.values():
            opt.state.clear()

    def save_checkpoint(self, directory: Path, images: int, trainer_state: dict[str, Any], keep: int) -> None:
        """Write the training state after `images` images (a collective: every rank calls it) with the
        trainer's own state inside, then keep only the newest `keep` checkpoints."""
        raise NotImplementedError

    def restore_checkpoint(self, directory: Path, warn: Callable[[str], None]) -> tuple[str, dict[str, Any]] | None:
        """Load the newest complete checkpoint into the networks and optimizers (a collective); returns its
        name and the trainer state saved with it, or None when there is none."""
        raise NotImplementedError


class LocalBackend(Backend):
    """One process, CPU or one GPU; an optimizer and a gradient scaler per network.

    Checkpoints are single files (train.checkpoint) holding the trainer state plus `model`,
    `optimizers` and `scalers`; with several processes rank 0 writes them and broadcasts them on restore.
    """

    def __init__(
        self,
        model: VAE,
        optimizers: dict[str, torch.optim.Optimizer],
        *,
        device: torch.device | str = "cpu",
        precision: Precision = "fp32",
        grad_clip: float | None = None,
    ):
        super().__init__(model, torch.device(device), precision)
        if set(optimizers) != {"encoder", "decoder"}:
            raise ValueError("optimizers must be given for exactly 'encoder' and 'decoder'")
        self.optimizers = optimizers
        self.grad_clip = grad_clip
        # One scaler per update kind: the encoder and decoder adversarial updates, and the joint
        # VAE warm-up update (one backward cannot be scaled by two different factors).
        enabled = precision == "fp16"
        self.scalers = {k: torch.amp.GradScaler(self.device.type, enabled=enabled) for k in self.skipped}
        self._losses_finite: Tensor | None = None

    def _optimizers(self, net: Net) -> list[torch.optim.Optimizer]:
        return list(self.optimizers.values()) if net == "both" else [self.optimizers[net]]

    def backward(self, net: Net, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach())  # a device tensor: read once, at step time
        self._losses_finite = finite if self._losses_finite is None else self._losses_finite & finite
        self.scalers[net].scale(loss).backward()

    def agree(self, flag: Tensor) -> bool:
        """Whether `flag` holds (on every process, for the distributed backends)."""
        return bool(flag)

    def step(self, net: Net) -> bool:
        optimizers, scaler = self._optimizers(net), self.scalers[net]
        for opt in optimizers:
            scaler.unscale_(opt)
        params = [p for opt in optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        finite = torch.isfinite(norm)
        if self._losses_finite is not None:
            finite = finite & self._losses_finite
        applied = self.agree(finite)
        if applied:
            if self.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
            for opt in optimizers:
                scaler.step(opt)
        scaler.update()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self._losses_finite = None
        return self.record(net, applied)

    # ---- single-file checkpoints ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "scalers": {k: v.state_dict() for k, v in self.scalers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][k])

    def save_checkpoint(self, directory: Path, images: int, trainer_state: dict[str, Any], keep: int) -> None:
        if self.rank == 0:
            checkpoint.save(checkpoint.checkpoint_path(directory, images), {**trainer_state, **self.state_dict()})
            checkpoint.prune(directory, keep)
        barrier(self.world_size)

    def restore_checkpoint(self, directory: Path, warn: Callable[[str], None]) -> tuple[str, dict[str, Any]] | None:
        found = checkpoint.latest(directory, warn=warn) if self.rank == 0 else None
        named = broadcast_object((found[0].name, found[1]) if found else None, self.world_size)
        if named is not None:
            self.load_state_dict(named[1])
        return named
