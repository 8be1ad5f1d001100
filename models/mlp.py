"""The fully-connected encoder/decoder of the 2D toy study (and any flat data)."""

from __future__ import annotations

from torch import Tensor, nn

from sivae.models.base import VAE


def _mlp(in_dim: int, out_dim: int, hidden: int, hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.ReLU()]
    for _ in range(hidden_layers):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, hidden: int = 256, hidden_layers: int = 3):
        super().__init__()
        self.net = _mlp(data_dim, 2 * latent_dim, hidden, hidden_layers)

    def forward(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, hidden: int = 256, hidden_layers: int = 3):
        super().__init__()
        self.net = _mlp(latent_dim, data_dim, hidden, hidden_layers)

    def forward(self, z: Tensor, lod: int | None = None, blend: float = 1.0, mixing: bool = False) -> Tensor:
        return self.net(z)


def mlp_vae(data_dim: int = 2, latent_dim: int = 2, hidden: int = 256, hidden_layers: int = 3) -> VAE:
    """Input layer, `hidden_layers` hidden layers of width `hidden` with ReLU, linear output
    (the reference 2D networks: 3 hidden layers of 256)."""
    return VAE(
        MLPEncoder(data_dim, latent_dim, hidden, hidden_layers),
        MLPDecoder(data_dim, latent_dim, hidden, hidden_layers),
        latent_dim=latent_dim,
        data_shape=(data_dim,),
    )
