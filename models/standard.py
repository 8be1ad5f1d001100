"""IntroVAE's residual "standard" architecture, in the form Soft-IntroVAE trained it (CIFAR-10, CelebA, ...).

Encoder: conv 5x5 - BN - leaky ReLU - 2x2 average pooling, then per further channel entry a
residual block and 2x2 pooling, a last residual block at 4px, and a linear layer to (mu, logvar).
Decoder: linear layer from z to 4x4 features with ReLU, then per channel entry (from the last) a
residual block and nearest-neighbour x2 upsampling, a last residual block, and a 5x5 convolution
to the image with no output activation. `channels` lists the widths from the highest resolution
down; images are 4 * 2^len(channels) pixels. Not progressive: lod and blend are ignored.

BatchNorm makes the output of a sample depend on its batch in training mode: sample and evaluate
in eval mode.
"""

from __future__ import annotations

import itertools

from torch import Tensor, nn

from sivae.models.config import ModelConfig


class ResidualBlock(nn.Module):
    """conv3x3-BN-LReLU-conv3x3-BN, plus the input (1x1-projected when the width changes), then LReLU.

    (Soft-IntroVAE's variant: the second BN is applied before the sum, IntroVAE applied it after.)
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.project = nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.project is None else self.project(x)
        return self.activation(self.body(x) + identity)


class ResidualEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        channels = cfg.channels
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.image_channels, channels[0], 5, padding=2, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.LeakyReLU(0.2),
            nn.AvgPool2d(2),
        ]
        for c_in, c_out in itertools.pairwise(channels):
            layers += [ResidualBlock(c_in, c_out), nn.AvgPool2d(2)]
        layers.append(ResidualBlock(channels[-1], channels[-1]))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels[-1] * 4 * 4, 2 * cfg.latent_dim)

    def forward(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> tuple[Tensor, Tensor]:
        mu, logvar = self.fc(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


class ResidualDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        channels = cfg.channels
        self.fc = nn.Sequential(nn.Linear(cfg.latent_dim, channels[-1] * 4 * 4), nn.ReLU())
        layers: list[nn.Module] = []
        widths = [channels[-1], *channels[::-1]]
        for c_in, c_out in itertools.pairwise(widths):
            layers += [ResidualBlock(c_in, c_out), nn.Upsample(scale_factor=2.0, mode="nearest")]
        layers += [ResidualBlock(channels[0], channels[0]), nn.Conv2d(channels[0], cfg.image_channels, 5, padding=2)]
        self.features = nn.Sequential(*layers)
        self.top_channels = channels[-1]

    def forward(self, z: Tensor, lod: int | None = None, blend: float = 1.0, mixing: bool = False) -> Tensor:
        return self.features(self.fc(z).view(z.shape[0], self.top_channels, 4, 4))
