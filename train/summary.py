"""Per-level size and cost of a model: active parameters, FLOPs and activation memory of one training iteration.

Everything is measured by running one real Soft-IntroVAE iteration (train.steps.soft_intro_step:
encoder step + decoder step, forward and backward) on the `meta` device, where operators compute
shapes but no values, so even the 1024px configuration is summarised in seconds:
- active parameters: those that received a gradient during the iteration (at blend = 1);
- FLOPs: torch.utils.flop_counter.FlopCounterMode (matrix multiplications and convolutions, forward
  and backward; elementwise work is not counted), 1 multiply-add = 2 FLOPs;
- activation memory: bytes of the distinct tensors autograd saves for backward
  (torch.autograd.graph.saved_tensors_hooks), parameters excluded, in the larger of the two steps
  (each step's graph is freed by its update), in fp32.
Per-image figures are the difference between batch 2 and batch 1, which removes what does not
scale with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from sivae.models.base import VAE
from sivae.models.build import build_model
from sivae.models.config import ModelConfig
from sivae.models.progressive import resolution_of
from sivae.train.backend import Backend
from sivae.train.schema import ObjectiveConfig
from sivae.train.steps import soft_intro_step


@dataclass
class LevelSummary:
    lod: int
    resolution: int | None  # None for flat (non-image) data
    encoder_params: int  # parameters active at this level (blend = 1)
    decoder_params: int
    flops_per_image: float  # one training iteration: encoder step + decoder step
    activation_bytes_per_image: int


class _GradientRecordingBackend(Backend):
    """Backward without the optimizer: records which parameters got a gradient, then drops the gradients."""

    def __init__(self, model: VAE, device: torch.device):
        super().__init__(model, device)
        self.got_grad: set[str] = set()

    def backward(self, phase: str, loss: Tensor) -> None:
        loss.backward()

    def step(self, phase: str) -> bool:
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                self.got_grad.add(name)
                p.grad = None
        return True


@dataclass
class IterationMeasurement:
    flops: int
    saved_bytes: int  # the larger step
    got_grad: set[str]


def measure_iteration(model: VAE, lod: int | None, batch: int) -> IterationMeasurement:
    """One iteration at `batch` on the model's device (meta for the summary; real tensors give the same)."""
    device = next(model.parameters()).device
    backend = _GradientRecordingBackend(model, device)
    backend.set_level(lod, 1.0)
    param_storages = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    # storages by identity; holding them keeps a freed one's address from being reused by another
    saved: dict[str, dict[int, torch.UntypedStorage]] = {}  # per phase

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in param_storages:
            saved.setdefault(backend.phase, {})[storage._cdata] = storage
        return t

    x = torch.zeros(batch, *model.data_shape_at(lod), device=device)
    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        soft_intro_step(backend, x, ObjectiveConfig(), scale=1.0)
    saved_bytes = max(sum(s.nbytes() for s in step.values()) for step in saved.values())
    return IterationMeasurement(counter.get_total_flops(), saved_bytes, backend.got_grad)


def summarize_level(cfg: ModelConfig, lod: int | None = None) -> LevelSummary:
    """Measure level `lod` (None: the top level) of a freshly built model on the meta device."""
    with torch.device("meta"):
        model = build_model(cfg)
    model.train()
    one, two = measure_iteration(model, lod, 1), measure_iteration(model, lod, 2)
    params = dict(model.named_parameters())
    level = model.max_lod if lod is None else lod
    return LevelSummary(
        lod=level,
        resolution=resolution_of(level) if len(model.data_shape) == 3 else None,
        encoder_params=sum(params[n].numel() for n in two.got_grad if n.startswith("encoder.")),
        decoder_params=sum(params[n].numel() for n in two.got_grad if n.startswith("decoder.")),
        flops_per_image=float(two.flops - one.flops),
        activation_bytes_per_image=two.saved_bytes - one.saved_bytes,
    )


def summarize(cfg: ModelConfig) -> list[LevelSummary]:
    """Every level of a progressive model, or the one level of the others."""
    levels = range(cfg.max_lod + 1) if cfg.arch == "style" else [cfg.max_lod]
    return [summarize_level(cfg, lod) for lod in levels]


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Total parameters of the encoder, the decoder and both (all levels), counted on the meta device."""
    with torch.device("meta"):
        model = build_model(cfg)
    encoder = sum(p.numel() for p in model.encoder.parameters())
    decoder = sum(p.numel() for p in model.decoder.parameters())
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


def format_table(cfg: ModelConfig, rows: list[LevelSummary]) -> str:
    counts = parameter_counts(cfg)
    lines = [
        f"arch {cfg.arch}, latent {cfg.latent_dim}; parameters: encoder {counts['encoder'] / 1e6:.2f}M, "
        f"decoder {counts['decoder'] / 1e6:.2f}M, total {counts['total'] / 1e6:.2f}M",
        "per level (blend = 1): active parameters; one training iteration (encoder step + decoder step,",
        "forward + backward) per image: FLOPs and activation memory (fp32 tensors saved for backward, larger step)",
        "",
        f"{'level':>5} {'resolution':>10} {'encoder':>10} {'decoder':>10} {'GFLOP/img':>12} {'act MiB/img':>12}",
    ]
    for r in rows:
        res = f"{r.resolution}px" if r.resolution else "flat"
        lines.append(
            f"{r.lod:>5} {res:>10} {r.encoder_params / 1e6:>9.2f}M {r.decoder_params / 1e6:>9.2f}M "
            f"{r.flops_per_image / 1e9:>12.2f} {r.activation_bytes_per_image / 2**20:>12.2f}"
        )
    return "\n".join(lines)
