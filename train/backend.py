"""The training step's view of the networks: forward passes, which net learns, and updates.

The training steps (train/steps.py) are written once against `Backend`. A backend decides how a
forward pass runs (device, autocast, DDP or DeepSpeed wrappers) and what an update is
(backward, loss scaling, the finiteness check, the optimizer step). `LocalBackend` is the plain
single process on a CPU or one GPU; the distributed backends subclass it.

Freezing follows DESIGN.md 2.1: in the encoder phase the decoder's parameters stop requiring
gradients but gradients still flow *through* it into the encoder, and vice versa. The frozen net
is called unwrapped (DDP and DeepSpeed then do not wait for gradients it will never produce).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from models.base import VAE

Net = Literal["encoder", "decoder", "both"]
Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Backend:
    """Forward passes at the current level, the trainable-net phase, and guarded updates."""

    model: VAE
    device: torch.device
    precision: Precision

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

    def update(self, net: Net, loss: Tensor) -> bool:
        """Backward and step the optimizer(s) of `net`; skip (and count) a non-finite loss or
        gradient. Returns whether the step was applied."""
        raise NotImplementedError

    def record(self, net: Net, applied: bool) -> bool:
        if applied:
            self.consecutive_skips = 0
        else:
            self.skipped[net] += 1
            self.consecutive_skips += 1
        return applied


class LocalBackend(Backend):
    """One process, CPU or one GPU; an optimizer and a gradient scaler per network."""

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

    def _names(self, net: Net) -> list[str]:
        return ["encoder", "decoder"] if net == "both" else [net]

    def loss_is_finite(self, loss: Tensor) -> bool:
        return bool(torch.isfinite(loss.detach()))

    def update(self, net: Net, loss: Tensor) -> bool:
        optimizers = [self.optimizers[n] for n in self._names(net)]
        scaler = self.scalers[net]
        applied = self.loss_is_finite(loss)
        if applied:
            scaler.scale(loss).backward()
            for opt in optimizers:
                scaler.unscale_(opt)
            params = [p for opt in optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
            applied = bool(torch.isfinite(norm))
            if applied and self.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
            if applied:
                for opt in optimizers:
                    scaler.step(opt)
            scaler.update()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        return self.record(net, applied)
