"""The style encoder (ALAE lineage): per-block channel statistics summed into w, then w -> (mu, logvar).

Block `l` takes the features at level l (resolution 4 * 2^l) to level l - 1: a 3x3 convolution,
blur, a downsampling 3x3 convolution (fused from `fused_resample_from` px up); after each
convolution the per-channel mean and standard deviation over the pixels go through a linear layer
to the latent width, and the features are instance-normalised. The block at 4px also downsamples
(to 2x2), as in the reference. w is the sum of all blocks' style vectors; a 3-layer mapping
network turns w into (mu, logvar).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sivae.models.config import ModelConfig
from sivae.models.equalized import EqualizedConv2d, EqualizedLinear
from sivae.models.mapping import MappingNetwork
from sivae.models.progressive import downsample, parameters_unused_at, resolution_of
from sivae.models.style_layers import LEAK, Blur, FromRGB, channel_statistics, clamp_fp16

INSTANCE_NORM_EPS = 1e-5


class EncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, latent_dim: int, *, fused: bool,
                 fp16_clamp: float | None):
        super().__init__()
        self.conv1 = EqualizedConv2d(in_channels, in_channels, 3, bias=False)
        self.bias1 = nn.Parameter(torch.zeros(1, in_channels, 1, 1))
        self.style1 = EqualizedLinear(2 * in_channels, latent_dim)
        self.blur = Blur(in_channels)
        self.conv2 = EqualizedConv2d(in_channels, out_channels, 3, bias=False, resample="down" if fused else None)
        self.bias2 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.style2 = EqualizedLinear(2 * out_channels, latent_dim)
        self.fused = fused
        self.fp16_clamp = fp16_clamp

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features at the next level down, and this block's contribution to w."""
        x = F.leaky_relu(clamp_fp16(self.conv1(x), self.fp16_clamp) + self.bias1, LEAK)
        w = self.style1(channel_statistics(x))
        x = F.instance_norm(x, eps=INSTANCE_NORM_EPS)
        x = self.conv2(self.blur(x))
        if not self.fused:
            x = downsample(x)
        x = F.leaky_relu(clamp_fp16(x, self.fp16_clamp) + self.bias2, LEAK)
        w = w + self.style2(channel_statistics(x))
        return F.instance_norm(x, eps=INSTANCE_NORM_EPS), w


class StyleEncoder(nn.Module):
    """x at level `lod` -> (mu, logvar); lod=None is the top level. Only blocks 0..lod run."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_lod = cfg.max_lod
        self.image_channels = cfg.image_channels
        levels = range(cfg.max_lod + 1)
        self.from_rgb = nn.ModuleList(FromRGB(cfg.image_channels, cfg.channels_at(lod)) for lod in levels)
        self.blocks = nn.ModuleList(
            EncoderBlock(
                cfg.channels_at(lod),
                cfg.channels_at(lod - 1),
                cfg.latent_dim,
                fused=resolution_of(lod) >= cfg.fused_resample_from,
                fp16_clamp=cfg.fp16_clamp if resolution_of(lod) >= cfg.fp16_clamp_from else None,
            )
            for lod in levels
        )
        self.to_latent = MappingNetwork(
            cfg.latent_dim, cfg.latent_dim, 2 * cfg.latent_dim, cfg.encoder_mapping_layers,
            lr_mult=cfg.mapping_lr_mult, normalize_input=False,
        )

    def parameters_unused_at(self, lod: int | None, blend: float) -> set[str]:
        """The parameters a forward pass at (lod, blend) gives no gradient (for data parallelism)."""
        return parameters_unused_at(self, self.max_lod if lod is None else lod, blend, blocks="blocks", rgb="from_rgb")

    def forward(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> tuple[Tensor, Tensor]:
        lod = self.max_lod if lod is None else lod
        if not 0 <= lod <= self.max_lod:
            raise ValueError(f"level {lod} is outside 0..{self.max_lod}")
        expected = (self.image_channels, resolution_of(lod), resolution_of(lod))
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"level {lod} encodes images of shape {expected}, got {tuple(x.shape[1:])}")

        h, w = self.blocks[lod](self.from_rgb[lod](x))
        if lod > 0 and blend < 1.0:
            # fade-in: the new block's output and style enter scaled by blend; at blend = 0 the rest of
            # the network sees exactly what the previous level fed it
            h = torch.lerp(self.from_rgb[lod - 1](downsample(x)).to(h.dtype), h, blend)
            w = w * blend
        for level in range(lod - 1, -1, -1):
            h, w_level = self.blocks[level](h)
            w = w + w_level
        mu, logvar = self.to_latent(w).chunk(2, dim=1)
        return mu, logvar
