"""The training step's view of the networks: forward passes, which net learns, and updates.

The training steps (train/steps.py) are written once against `Backend`. A backend decides how a
forward pass runs (device, autocast, DDP or DeepSpeed wrappers) and what an update is
(backward, loss scaling, the finiteness check, the optimizer step), and it owns the training state
of the networks and optimizers: the batch layout and optimizer reset of a level (`set_layout`,
`reset_optimizer`) and how that state is checkpointed (`save_checkpoint` / `restore_checkpoint`, with the trainer's own
state inside). `LocalBackend` is the plain single process on a CPU or one GPU with single-file
checkpoints; `train.distributed.AccelerateBackend` subclasses it, `train.deepspeed_backend` has
DeepSpeed's engines and checkpoint directories.

The backend works over the model's networks (`model.networks`): one optimizer each, a wrapper each in
the distributed backends, and `forward(name, ...)` for any of them; `encode` / `decode` / `generate`
are the image VAE's conveniences. An objective's phase (train.phases) trains some networks:
`train_only(phase)` makes the others stop requiring gradients, yet gradients still flow *through*
them (Soft-IntroVAE's encoder phase reaches the encoder through the frozen decoder, and vice
versa); a frozen network is called unwrapped, so DDP and DeepSpeed do not wait for gradients it
will never produce. Each phase has its own gradient scaler and count of skipped updates: one
backward cannot be scaled by two factors, and an overflow in one phase says nothing of another.

No update reads a value back to the host. Whether an update is finite is a device tensor (agreed
by every rank through an all-reduce that stays on the device); fused Adam takes it as `found_inf`
and skips on the device, and the skip counters are device tensors too. The trainer reads them
(`read_skips`, one host read) every few iterations and at its cadences, where it decides on a
rollback. On a GPU, a host read waits for every queued kernel: one per phase would stall the GPU
twice per iteration at the small levels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sivae.core import checkpoint
from sivae.core.distributed import all_true, barrier, broadcast_object
from sivae.models.base import Model
from sivae.train.phases import Phase

Precision = Literal["fp32", "bf16", "fp16"]
PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]  # train.precision; "auto" is resolved at start
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """`train.precision` on `device`: "auto" is bf16 autocast where the device multiplies bf16 matrices
    natively (a CUDA GPU that supports bf16; a CPU with AVX512-BF16 or AMX-BF16, where the style model's
    iteration ran 1.8x faster than in fp32), fp32 elsewhere; any other setting is itself."""
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return "bf16" if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16") else "fp32"
    return "fp32"


class Backend:
    """Forward passes at the current level, the phase's trainable networks, and guarded updates."""

    model: Model
    device: torch.device
    precision: Precision
    rank: int = 0
    world_size: int = 1
    optimizers: dict[str, torch.optim.Optimizer]  # per network; their param_groups carry the learning rate

    def __init__(self, model: Model, device: torch.device, precision: Precision = "fp32"):
        self.model = model
        self.device = device
        self.precision = precision
        self.lod: int | None = None
        self.blend: float = 1.0
        self.phase = ""  # the name of the phase running now ("" outside one)
        self.updating: tuple[str, ...] = model.networks  # the networks that train now
        self.skipped: dict[str, int] = {}  # per phase, from its first update on, as of the last read_skips
        self._unread_skips: dict[str, Tensor] = {}  # per phase, on the device, since the last read_skips
        self._skip_run: Tensor | None = None  # consecutive skipped updates now (device)
        self._skip_peak: Tensor | None = None  # the longest such run since the last read_skips (device)

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    def set_level(self, lod: int | None, blend: float) -> None:
        self.lod, self.blend = lod, float(blend)

    # ---- forward passes -------------------------------------------------------------------
    def forward(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Network `name` applied to the arguments, in the run's precision: wrapped when it trains, bare
        when it is frozen."""
        with self.autocast():
            return self.callable(name)(*args, **kwargs)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward("encoder", x, self.lod, self.blend)

    def decode(self, z: Tensor) -> Tensor:
        return self.forward("decoder", z, self.lod, self.blend, False)

    def generate(self, z_prior: Tensor) -> Tensor:
        """Decode prior samples (style mixing allowed, unlike reconstructions)."""
        return self.forward("decoder", z_prior, self.lod, self.blend, True)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def callable(self, name: str) -> nn.Module:
        """The module to call for `name`: wrapped when it trains, bare when it is frozen."""
        return self.model.network(name)

    # ---- phases and updates ---------------------------------------------------------------
    @contextlib.contextmanager
    def train_only(self, phase: Phase | str) -> Iterator[None]:
        """Within the block only the networks `phase` updates have trainable parameters (a network's name
        stands for a phase of that name updating it alone)."""
        name, updates = (phase, (phase,)) if isinstance(phase, str) else (phase.name, phase.updates)
        unknown = [n for n in updates if n not in self.model.networks]
        if unknown:
            raise ValueError(f"phase {name!r} updates {unknown}, which the model does not have "
                             f"(its networks: {', '.join(self.model.networks)})")  # fmt: skip
        self.phase, self.updating = name, tuple(updates)
        for net in self.model.networks:
            self.model.network(net).requires_grad_(net in updates)
        try:
            yield
        finally:
            self.phase, self.updating = "", self.model.networks

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        """Wraps one micro-batch's forward and backward; gradients are synchronised across
        processes only on the last micro-batch of an update."""
        return contextlib.nullcontext()

    def backward(self, phase: str, loss: Tensor) -> None:
        """Accumulate the gradient of one micro-batch's (already averaged) loss of `phase` into the
        networks that train now."""
        raise NotImplementedError

    def step(self, phase: str) -> Tensor:
        """Apply the accumulated gradients of the networks that train now, unless a loss or gradient was
        non-finite (then count the skip against `phase`). Clears the gradients either way; returns whether
        the update was applied (a bool tensor on the device: reading it is a host sync)."""
        raise NotImplementedError

    def record(self, phase: str, applied: Tensor | bool) -> Tensor:
        """Count an update of `phase` on the device (no host read)."""
        skipped = ~torch.as_tensor(applied, device=self.device).reshape(())
        if self._skip_run is None:
            self._skip_run = torch.zeros((), dtype=torch.int64, device=self.device)
            self._skip_peak = torch.zeros_like(self._skip_run)
        self.skipped.setdefault(phase, 0)
        unread = self._unread_skips.get(phase)
        self._unread_skips[phase] = skipped.long() if unread is None else unread + skipped
        self._skip_run = (self._skip_run + 1) * skipped
        self._skip_peak = torch.maximum(self._skip_peak, self._skip_run)
        return ~skipped

    def read_skips(self) -> int:
        """Fold the device's skip counts into `skipped` with one host read; returns the longest run of
        consecutive skipped updates since the previous read (a run still going counts)."""
        if self._skip_run is None:
            return 0
        phases = list(self._unread_skips)
        peak, *counts = torch.stack([self._skip_peak, *(self._unread_skips[p] for p in phases)]).tolist()
        for phase, count in zip(phases, counts):
            self.skipped[phase] += count
        self._unread_skips = {}
        self._skip_peak = self._skip_run.clone()
        return peak

    def reset_skips(self, skipped: dict[str, int]) -> None:
        """Counts as a checkpoint holds them, with no run of skips going (a resume or a rollback)."""
        self.skipped = dict(skipped)
        self._unread_skips, self._skip_run, self._skip_peak = {}, None, None

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
    """One process, CPU or one GPU; an optimizer per network and a gradient scaler per phase.

    Checkpoints are single files (train.checkpoint) holding the trainer state plus `model`,
    `optimizers` and `scalers`; with several processes rank 0 writes them and broadcasts them on restore.
    """

    def __init__(
        self,
        model: Model,
        optimizers: dict[str, torch.optim.Optimizer],
        *,
        device: torch.device | str = "cpu",
        precision: Precision = "fp32",
        grad_clip: float | None = None,
    ):
        super().__init__(model, torch.device(device), precision)
        if set(optimizers) != set(model.networks):
            raise ValueError(f"optimizers must be given for exactly the model's networks "
                             f"({', '.join(model.networks)}), got {', '.join(optimizers)}")  # fmt: skip
        self.optimizers = optimizers
        self.grad_clip = grad_clip
        self.scalers: dict[str, torch.amp.GradScaler] = {}  # per phase, from its first update on
        self._losses_finite: Tensor | None = None

    def scaler(self, phase: str) -> torch.amp.GradScaler:
        if phase not in self.scalers:
            self.scalers[phase] = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        return self.scalers[phase]

    def backward(self, phase: str, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach())  # a device tensor: read once, at step time
        self._losses_finite = finite if self._losses_finite is None else self._losses_finite & finite
        self.scaler(phase).scale(loss).backward()

    def agree(self, flag: Tensor) -> Tensor:
        """`flag` and-ed over every process (the distributed backends), left on the device."""
        return flag

    def step(self, phase: str) -> Tensor:
        optimizers, scaler = [self.optimizers[name] for name in self.updating], self.scaler(phase)
        for opt in optimizers:
            scaler.unscale_(opt)  # fp16 only; a disabled scaler does nothing
        params = [p for opt in optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        # the total norm is the finiteness check (one read of the gradients, on the device) and the clip's input
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        finite = torch.isfinite(norm)
        if self._losses_finite is not None:
            finite = finite & self._losses_finite
        applied = self.agree(finite)
        if self.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        if all(getattr(opt, "_step_supports_amp_scaling", False) for opt in optimizers):
            # fused Adam skips on the device when found_inf is 1, its step counts included: no host read
            found_inf = (~applied).float()
            for opt in optimizers:
                opt.found_inf = found_inf
                try:
                    opt.step()
                finally:
                    del opt.found_inf
        elif bool(applied):  # an optimizer that cannot skip on the device: one host read per phase
            for opt in optimizers:
                opt.step()
        scaler.update()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self._losses_finite = None
        return self.record(phase, applied)

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
        self.scalers = {}  # a phase that had not run by then starts afresh, as it did
        for phase, saved in state["scalers"].items():
            self.scaler(phase).load_state_dict(saved)

    def save_checkpoint(self, directory: Path, images: int, trainer_state: dict[str, Any], keep: int) -> None:
        if self.rank == 0:
            checkpoint.save(checkpoint.checkpoint_path(directory, images), {**trainer_state, **self.state_dict()})
            checkpoint.prune(directory, keep)
        barrier(self.world_size)

    def restore_checkpoint(self, directory: Path, warn: Callable[[str], None]) -> tuple[str, dict[str, Any]] | None:
        """Rank 0 picks the newest readable checkpoint and tells the others its name; every rank reads the
        file itself from the shared file system (a state broadcast as a pickle would hold it twice on
        every rank, 1.2 GB at 1024px)."""
        found = checkpoint.latest(directory, warn=warn) if self.rank == 0 else None
        name = broadcast_object(found[0].name if found else None, self.world_size)
        if name is None:
            return None
        state, error = (found[1] if found else None), None
        if found is None:
            try:
                state = checkpoint.load(Path(directory) / name)
            except checkpoint.CheckpointError as exc:
                error = str(exc)
        if not all_true(torch.tensor(error is None), self.world_size):
            raise checkpoint.CheckpointError(f"{name}: not readable on every rank" + (f" ({error})" if error else ""))
        self.load_state_dict(state)
        return name, state
