"""The style-based decoder (StyleGAN lineage): z -> w -> per-level blocks modulated by w -> image.

A mapping network turns z into w. Two style slots per level (one per convolution) each receive w;
style mixing replaces the slots from a random cut-off onwards by the w of a second prior sample.
Block `l` produces level l (resolution 4 * 2^l): block 0 starts from a learned 4x4 constant; the
others upsample (fused into a transposed convolution from `fused_resample_from` px up) and blur.
Each convolution is followed by noise, bias, leaky ReLU, instance norm and AdaIN modulation
x * (1 + scale(w)) + shift(w). ToRGB at every level turns features into an image.

The decoder tracks the average w of prior samples (buffer `w_avg`, updated in training mode when
it decodes prior samples) so that samples can be truncated toward it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sivae.models.config import ModelConfig
from sivae.models.equalized import EqualizedConv2d, EqualizedLinear
from sivae.models.mapping import MappingNetwork
from sivae.models.progressive import parameters_unused_at, resolution_of, upsample
from sivae.models.style_layers import LEAK, Blur, NoiseInjection, ToRGB, clamp_fp16

INSTANCE_NORM_EPS = 1e-8


class StyleModulation(nn.Module):
    """AdaIN: per-channel scale and shift of the (instance-normalised) features, computed from w."""

    def __init__(self, latent_dim: int, channels: int):
        super().__init__()
        self.affine = EqualizedLinear(latent_dim, 2 * channels, gain=1.0)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        scale, shift = self.affine(w).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (scale + 1.0) + shift


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, latent_dim: int, *, level: int, fused: bool,
                 fp16_clamp: float | None):
        super().__init__()
        self.first = level == 0
        self.fused = fused
        if not self.first:
            self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, bias=False, resample="up" if fused else None)
            self.blur = Blur(out_channels)
        self.noise1 = NoiseInjection(out_channels, const_seed=2 * level)
        self.bias1 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.style1 = StyleModulation(latent_dim, out_channels)
        self.conv2 = EqualizedConv2d(out_channels, out_channels, 3, bias=False)
        self.noise2 = NoiseInjection(out_channels, const_seed=2 * level + 1)
        self.bias2 = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.style2 = StyleModulation(latent_dim, out_channels)
        self.fp16_clamp = fp16_clamp

    def forward(self, x: Tensor, w1: Tensor, w2: Tensor, noise: bool | str) -> Tensor:
        if not self.first:
            if not self.fused:
                x = upsample(x)
            x = self.blur(self.conv1(x))
        x = F.leaky_relu(clamp_fp16(self.noise1(x, noise), self.fp16_clamp) + self.bias1, LEAK)
        x = self.style1(F.instance_norm(x, eps=INSTANCE_NORM_EPS), w1)
        x = self.noise2(self.conv2(x), noise)
        x = F.leaky_relu(clamp_fp16(x, self.fp16_clamp) + self.bias2, LEAK)
        return self.style2(F.instance_norm(x, eps=INSTANCE_NORM_EPS), w2)


class StyleDecoder(nn.Module):
    """z -> image at level `lod` (None: the top level). Only blocks 0..lod run.

    forward(z, lod, blend, mixing, *, truncation_psi=None, noise=True):
    - mixing=True marks z as prior samples: in training mode the tracked average w moves toward
      their mean and, with probability `style_mixing_prob` per sample, style mixing applies.
    - truncation_psi: pull the first `truncation_cutoff` style slots toward the average w by
      w_avg + psi * (w - w_avg) (psi = 1: none; eval's truncated samples use e.g. 0.7).
    - noise=False drops the per-pixel noise, noise="const" uses each layer's fixed map (either way a
      deterministic decoder: an image depends on its z alone).
    """

    supports_truncation = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_lod = cfg.max_lod
        self.latent_dim = cfg.latent_dim
        self.style_mixing_prob = cfg.style_mixing_prob
        self.truncation_cutoff = cfg.truncation_cutoff
        self.w_avg_beta = cfg.w_avg_beta
        self.mapping = MappingNetwork(
            cfg.latent_dim, cfg.latent_dim, cfg.latent_dim, cfg.mapping_layers,
            lr_mult=cfg.mapping_lr_mult, normalize_input=True,
        )
        self.const = nn.Parameter(torch.ones(1, cfg.channels_at(0), 4, 4))
        self.blocks = nn.ModuleList(
            DecoderBlock(
                cfg.channels_at(max(lod - 1, 0)),
                cfg.channels_at(lod),
                cfg.latent_dim,
                level=lod,
                fused=resolution_of(lod) >= cfg.fused_resample_from,
                fp16_clamp=cfg.fp16_clamp if resolution_of(lod) >= cfg.fp16_clamp_from else None,
            )
            for lod in range(cfg.max_lod + 1)
        )
        self.to_rgb = nn.ModuleList(ToRGB(cfg.channels_at(lod), cfg.image_channels) for lod in range(cfg.max_lod + 1))
        self.register_buffer("w_avg", torch.zeros(cfg.latent_dim))

    def styles(self, z: Tensor, lod: int, mixing: bool, truncation_psi: float | None) -> Tensor:
        """The per-slot w, shape (B, 2 * (lod + 1), latent)."""
        slots = 2 * (lod + 1)
        w = self.mapping(z)
        if mixing and self.training:
            with torch.no_grad():
                self.w_avg.lerp_(w.detach().float().mean(dim=0), 1.0 - self.w_avg_beta)
        styles = w.unsqueeze(1).expand(-1, slots, -1)
        if mixing and self.training and self.style_mixing_prob > 0:
            # per sample: with probability p, slots from a random cut-off in [1, slots] on take a
            # second sample's w (a cut-off of `slots` leaves the sample unmixed, as in the reference)
            w2 = self.mapping(torch.randn_like(z))
            batch = z.shape[0]
            cutoff = torch.randint(1, slots + 1, (batch, 1, 1), device=z.device)
            mixed = torch.rand(batch, 1, 1, device=z.device) < self.style_mixing_prob
            slot = torch.arange(slots, device=z.device).view(1, slots, 1)
            styles = torch.where(mixed & (slot >= cutoff), w2.unsqueeze(1), styles)
        return styles if truncation_psi is None else self.truncate(styles, truncation_psi)

    def truncate(self, styles: Tensor, psi: float, cutoff: int | None = None) -> Tensor:
        """Per-slot w (B, slots, latent) pulled toward the average w on the first `cutoff` slots
        (None: the config's `truncation_cutoff`)."""
        weight = torch.full((1, styles.shape[1], 1), float(psi), device=styles.device)
        weight[:, self.truncation_cutoff if cutoff is None else cutoff:] = 1.0
        return torch.lerp(self.w_avg.to(styles.dtype), styles, weight.to(styles.dtype))

    def parameters_unused_at(self, lod: int | None, blend: float) -> set[str]:
        """The parameters a forward pass at (lod, blend) gives no gradient (for data parallelism)."""
        return parameters_unused_at(self, self.max_lod if lod is None else lod, blend, blocks="blocks", rgb="to_rgb")

    def forward(self, z: Tensor, lod: int | None = None, blend: float = 1.0, mixing: bool = False, *,
                truncation_psi: float | None = None, noise: bool | str = True) -> Tensor:
        lod = self.max_lod if lod is None else lod
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (batch, {self.latent_dim}), got {tuple(z.shape)}")
        return self.synthesize(self.styles(z, lod, mixing, truncation_psi), lod, blend, noise=noise)

    def synthesize(self, styles: Tensor, lod: int | None = None, blend: float = 1.0, *,
                   noise: bool | str = True) -> Tensor:
        """The image of per-slot w `styles` (B, >= 2 * (lod + 1), latent): the decoder after its mapping
        network, for the tools that edit w directly (style mixing grids, inversion in w)."""
        lod = self.max_lod if lod is None else lod
        if not 0 <= lod <= self.max_lod:
            raise ValueError(f"level {lod} is outside 0..{self.max_lod}")
        if styles.dim() != 3 or styles.shape[1] < 2 * (lod + 1) or styles.shape[2] != self.latent_dim:
            raise ValueError(f"styles must have shape (batch, >= {2 * (lod + 1)}, {self.latent_dim}), "
                             f"got {tuple(styles.shape)}")
        x = self.const.expand(styles.shape[0], -1, -1, -1)
        for level in range(lod):
            x = self.blocks[level](x, styles[:, 2 * level], styles[:, 2 * level + 1], noise)
        image = self.to_rgb[lod](self.blocks[lod](x, styles[:, 2 * lod], styles[:, 2 * lod + 1], noise))
        if lod > 0 and blend < 1.0:
            # fade-in: at blend = 0 the output is the previous level's image, upsampled
            image = torch.lerp(upsample(self.to_rgb[lod - 1](x)).to(image.dtype), image, blend)
        return image
