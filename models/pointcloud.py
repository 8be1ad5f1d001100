"""The point-cloud VAE of the reference's 3D experiment (built on 3D-AAE): a PointNet encoder and a fully
connected decoder, for clouds [B, N, 3].

Encoder: 1x1 convolutions over the points (3 -> 64 -> 128 -> 256 -> 256 -> 512 by default), each followed by
ReLU and batch norm as in the reference, a max-pool over the points (so the order of the points does not
matter), a hidden layer, then linear heads for mu and logvar. Decoder: z -> 64 -> 128 -> 512 -> 1024 (ReLU)
-> N x 3 coordinates.

The prior N(0, prior_std^2 I) (the reference's 0.2) without touching the objectives: the heads give mu and
logvar of z, and the model hands the objectives u = z / prior_std, whose prior is N(0, I):
KL(N(mu, s^2) || N(0, prior_std^2)) = KL(N(mu / prior_std, s^2 / prior_std^2) || N(0, I)), and the decoder
decodes z = prior_std * u. Every loss value and gradient is the reference's.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from sivae.models.base import VAE


class PointNetEncoder(nn.Module):
    def __init__(self, latent_dim: int, channels: list[int], hidden: int, prior_std: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for out in channels:
            layers += [nn.Conv1d(width, out, kernel_size=1, bias=False), nn.ReLU(), nn.BatchNorm1d(out)]
            width = out
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.prior_std = prior_std

    def forward(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> tuple[Tensor, Tensor]:
        features = self.conv(x.transpose(1, 2)).max(dim=2).values  # [B, N, 3] -> [B, 3, N] -> [B, C]
        hidden = self.fc(features)
        mu, logvar = self.mu(hidden), self.logvar(hidden)
        return mu / self.prior_std, logvar - 2.0 * math.log(self.prior_std)


class PointDecoder(nn.Module):
    def __init__(self, latent_dim: int, widths: list[int], points: int, prior_std: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for out in widths:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        layers.append(nn.Linear(width, points * 3))
        self.net = nn.Sequential(*layers)
        self.points, self.prior_std = points, prior_std

    def forward(self, u: Tensor, lod: int | None = None, blend: float = 1.0, mixing: bool = False) -> Tensor:
        return self.net(u * self.prior_std).view(len(u), self.points, 3)


def pointcloud_vae(cfg) -> VAE:
    """The model of a `model:` section with arch pointcloud (models.config.ModelConfig)."""
    return VAE(
        PointNetEncoder(cfg.latent_dim, list(cfg.point_encoder_channels), cfg.point_encoder_hidden, cfg.prior_std),
        PointDecoder(cfg.latent_dim, list(cfg.point_decoder_widths), cfg.points, cfg.prior_std),
        latent_dim=cfg.latent_dim,
        data_shape=(cfg.points, 3),
    )
