"""The fully-connected mapping networks of the style architecture: z -> w (decoder) and w -> (mu, logvar) (encoder)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sivae.models.equalized import EqualizedLinear


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each row to unit mean square: the prior sample's length no longer matters, only its direction."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


class MappingNetwork(nn.Module):
    """`layers` equalised linear layers of width `hidden`, each followed by leaky ReLU(0.2).

    The reference applies the activation after the last layer too, also in the encoder's
    w -> (mu, logvar) mapping; we keep that, since the published results were trained with it.
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, layers: int, *, lr_mult: float,
                 normalize_input: bool):
        super().__init__()
        widths = [in_features] + [hidden] * (layers - 1) + [out_features]
        self.layers = nn.ModuleList(
            EqualizedLinear(a, b, lr_mult=lr_mult) for a, b in itertools.pairwise(widths)
        )
        self.normalize_input = normalize_input

    def forward(self, x: Tensor) -> Tensor:
        if self.normalize_input:
            x = pixel_norm(x)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
        return x
