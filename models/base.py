"""The one interface every architecture implements, so trainer and eval never special-case one.

An encoder maps (x, lod, blend) -> (mu, logvar); a decoder maps (z, lod, blend, mixing) -> x.
`lod` is the level of detail of progressive growing (0 = 4px) and `blend` the fade-in of
that level in [0, 1]; architectures that do not grow ignore both. `mixing=True` marks z as a
prior sample: a style-based decoder in training mode may then apply style mixing (reconstructions
are decoded with mixing=False); other architectures ignore it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class VAE(nn.Module):
    """An encoder and a decoder held together: the unit that checkpoints and eval handle."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        latent_dim: int,
        data_shape: tuple[int, ...],
        max_lod: int = 0,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.data_shape = tuple(data_shape)
        self.max_lod = max_lod

    def encode(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> tuple[Tensor, Tensor]:
        return self.encoder(x, lod, blend)

    def decode(self, z: Tensor, lod: int | None = None, blend: float = 1.0, mixing: bool = False) -> Tensor:
        return self.decoder(z, lod, blend, mixing)

    def data_shape_at(self, lod: int | None = None) -> tuple[int, ...]:
        """Shape of one sample at level `lod` (images halve per level below the top)."""
        if lod is None or len(self.data_shape) != 3:
            return self.data_shape
        channels, height, width = self.data_shape
        shrink = 2 ** (self.max_lod - lod)
        return (channels, height // shrink, width // shrink)

    def input_dim(self, lod: int | None = None) -> int:
        return math.prod(self.data_shape_at(lod))

    @torch.no_grad()
    def sample(self, n: int, lod: int | None = None, blend: float = 1.0, generator=None) -> Tensor:
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.decode(z, lod, blend)
