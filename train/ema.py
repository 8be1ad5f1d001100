"""Exponential moving average of the networks, with a half-life counted in images."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch_images: int, halflife_kimg: float) -> float:
    """Per-update decay so that an image's weight halves after `halflife_kimg` thousand images."""
    if halflife_kimg <= 0:
        return 0.0
    return 0.5 ** (batch_images / (halflife_kimg * 1000.0))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers (running stats, the
    tracked average w) are copied. The EMA keeps its own dtype (fp32 when DeepSpeed's fp16 mode
    holds the model's weights in fp16)."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if ema_params:
        torch._foreach_lerp_(ema_params, [p.detach().to(e.dtype) for e, p in zip(ema_params, params)], 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
