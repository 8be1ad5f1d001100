"""The interfaces every architecture implements, so trainer and eval never special-case one.

A `Model` names its trainable networks (`networks`, each an attribute nn.Module): the trainer makes an
optimizer per network, the backends wrap, freeze, checkpoint and average each of them, snapshots store
them by name. `VAE` is the image models' model: an encoder and a decoder.

An encoder maps (x, lod, blend) -> (mu, logvar); a decoder maps (z, lod, blend, mixing) -> x.
`lod` is the level of detail of progressive growing (0 = 4px) and `blend` the fade-in of
that level in [0, 1]; architectures that do not grow ignore both. `mixing=True` marks z as a
prior sample: a style-based decoder in training mode may then apply style mixing (reconstructions
are decoded with mixing=False); other architectures ignore it.

Levels map to resolutions as 4 * 2**lod (models.progressive); `lod=None` is the top level,
`max_lod`. Non-progressive image models have max_lod = log2(resolution) - 2 and ignore lod and
blend; the mlp has max_lod = 0.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn


class Model(nn.Module):
    """Named networks held together: the unit that checkpoints, the EMA and eval handle. Subclasses set
    `networks` and assign each name as a submodule; parameters outside them are not trained."""

    networks: tuple[str, ...] = ()

    def __init__(self, *, latent_dim: int, data_shape: tuple[int, ...], max_lod: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        self.data_shape = tuple(data_shape)
        self.max_lod = max_lod

    @functools.cached_property
    def per_sample(self) -> bool:
        """Whether a sample's output is independent of the rest of its batch (no batch normalisation), so
        that two batches may go through a network in one call with the same result."""
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())

    def network(self, name: str) -> nn.Module:
        if name not in self.networks:
            raise KeyError(f"{type(self).__name__} has no network {name!r} (it has {', '.join(self.networks)})")
        return getattr(self, name)

    def data_shape_at(self, lod: int | None = None) -> tuple[int, ...]:
        """Shape of one sample at level `lod` (images halve per level below the top)."""
        if lod is None or len(self.data_shape) != 3:
            return self.data_shape
        channels, height, width = self.data_shape
        shrink = 2 ** (self.max_lod - lod)
        return (channels, height // shrink, width // shrink)

    def input_dim(self, lod: int | None = None) -> int:
        return math.prod(self.data_shape_at(lod))


class VAE(Model):
    """An encoder and a decoder."""

    networks = ("encoder", "decoder")

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        latent_dim: int,
        data_shape: tuple[int, ...],
        max_lod: int = 0,
    ):
        super().__init__(latent_dim=latent_dim, data_shape=data_shape, max_lod=max_lod)
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> tuple[Tensor, Tensor]:
        return self.encoder(x, lod, blend)

    def decode(self, z: Tensor, lod: int | None = None, blend: float = 1.0, mixing: bool = False) -> Tensor:
        return self.decoder(z, lod, blend, mixing)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        lod: int | None = None,
        blend: float = 1.0,
        *,
        truncation_psi: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Decode `n` prior samples at level `lod` (None: the top level), without style mixing.

        `truncation_psi` (style decoder only) pulls the styles toward the decoder's tracked average w:
        w_avg + psi * (w - w_avg) on the first `truncation_cutoff` style slots; None or 1.0 means none.
        Call it in eval mode (BatchNorm and the w_avg update depend on the mode).
        """
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        if truncation_psi is None:
            return self.decode(z, lod, blend)
        if not getattr(self.decoder, "supports_truncation", False):
            raise ValueError(f"{type(self.decoder).__name__} has no average w to truncate toward")
        return self.decoder(z, lod, blend, False, truncation_psi=truncation_psi)
