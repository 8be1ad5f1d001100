"""Settings that make the same arithmetic run faster: CUDA's TF32 and cuDNN autotuning, and torch.compile
level by level.

A compiled network is specialised to what its forward pass branches on: the level, whether it fades in,
style mixing, and which parameters require gradients (they flip between the phases). That is up to ~18
graphs per level (measured on the style model over warm-up, fade-in and stable phases). torch's default
recompile limit (8 per code object) would send every level after the first back to eager without a
word, so each level starts from an empty cache with a limit that its graphs fit in; the previous level's
graphs are never called again.
"""

from __future__ import annotations

import torch
import torch._dynamo

from sivae.models.base import Model

RECOMPILE_LIMIT_PER_LEVEL = 64  # headroom over the ~18 graphs of a level


def use_fast_cuda_math() -> None:
    """TF32 matmuls and convolutions (10-bit mantissa inputs, fp32 accumulation) and cuDNN's autotuner,
    which pays off as every level keeps its shapes for thousands of iterations."""
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def compile_networks(model: Model, backend: str) -> None:
    """Compile every network of `model` in place (`backend`: a torch.compile backend, "inductor" normally)."""
    for name in model.networks:
        model.network(name).compile(backend=backend)


def start_level_compilation() -> None:
    """Forget the compiled graphs of the previous level and allow the new level all of its own."""
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT_PER_LEVEL)
