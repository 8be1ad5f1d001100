"""The `model:` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from train.config import require

Architecture = Literal["style", "standard", "mlp"]


@dataclass
class ModelConfig:
    arch: Architecture = "style"
    max_resolution: int = 256  # images are max_resolution x max_resolution (ignored by mlp)
    image_channels: int = 3
    latent_dim: int = 512
    # style: channels per level are min(max_channels, start_channels * 2^k), k counted down from the top
    start_channels: int = 64
    max_channels: int = 512
    mapping_layers: int = 8  # z -> w
    encoder_mapping_layers: int = 3  # w -> (mu, logvar)
    mapping_lr_mult: float = 0.1
    style_mixing_prob: float = 0.9
    truncation_psi: float = 0.7
    truncation_cutoff: int = 8
    w_avg_beta: float = 0.995
    # standard (IntroVAE residual): channels from the highest resolution down
    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 512, 512])
    # mlp
    data_dim: int = 2
    hidden: int = 256
    hidden_layers: int = 3

    def __post_init__(self) -> None:
        require(self.latent_dim > 0, "latent_dim", "must be > 0")
        if self.arch != "mlp":
            r = self.max_resolution
            require(4 <= r <= 1024 and r & (r - 1) == 0, "max_resolution", "must be a power of two in [4, 1024]")
        require(self.image_channels > 0, "image_channels", "must be > 0")
        require(0.0 <= self.style_mixing_prob <= 1.0, "style_mixing_prob", "must be in [0, 1]")
