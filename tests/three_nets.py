"""A model of three networks and an objective of three phases, registered like the built-in ones as
`model.arch: three-nets` and `objective.name: three-phase`, so that the trainer builds and trains them
from a run config through every backend.

The model: two MLP encoders, each giving half of the latent code (its mu and logvar), and an MLP
decoder of the concatenated code. The objective: the VAE's negative ELBO, minimised by each network
in its own phase (encoder_a, encoder_b, decoder), the other two frozen; the encoders' phases reach
them through the frozen decoder.

Run as a script it is tests/train_driver.py (`sivae` with the test instrumentation) in a process that
knows them: multi-process tests start it as each rank's program.
"""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import torch
from torch import Tensor, nn

from sivae.core.elbo import kl_divergence, reconstruction_error
from sivae.models import Model, register_architecture
from sivae.models.config import ModelConfig
from sivae.train.objectives import vae_loss
from sivae.train.phases import Phase, register_objective
from sivae.train.steps import reparameterize

ARCH, OBJECTIVE = "three-nets", "three-phase"
NETWORKS = ("encoder_a", "encoder_b", "decoder")


def mlp(in_dim: int, out_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class HalfEncoder(nn.Module):
    """An image -> (mu, logvar) of its half of the latent code."""

    def __init__(self, data_dim: int, half_latent: int, hidden: int):
        super().__init__()
        self.net = mlp(data_dim, 2 * half_latent, hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar


class ThreeNets(Model):
    networks = NETWORKS

    def __init__(self, cfg: ModelConfig):
        side = cfg.max_resolution
        super().__init__(latent_dim=cfg.latent_dim, data_shape=(cfg.image_channels, side, side), max_lod=cfg.max_lod)
        data_dim, half = math.prod(self.data_shape), cfg.latent_dim // 2
        self.encoder_a = HalfEncoder(data_dim, half, cfg.hidden)
        self.encoder_b = HalfEncoder(data_dim, cfg.latent_dim - half, cfg.hidden)
        self.decoder = nn.Sequential(mlp(cfg.latent_dim, data_dim, cfg.hidden), nn.Unflatten(1, self.data_shape))

    # what the trainer's sample grids call (the image VAE's interface); levels do not apply
    def encode(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> tuple[Tensor, Tensor]:
        (mu_a, logvar_a), (mu_b, logvar_b) = self.encoder_a(x), self.encoder_b(x)
        return torch.cat([mu_a, mu_b], 1), torch.cat([logvar_a, logvar_b], 1)

    def decode(self, z: Tensor, lod: int | None = None, blend: float = 1.0, mixing: bool = False) -> Tensor:
        return self.decoder(z)


def negative_elbo(backend, x: Tensor, cfg) -> tuple[Tensor, dict[str, Tensor]]:
    """Through the backend: each network wrapped when its phase trains it, bare when frozen."""
    (mu_a, logvar_a), (mu_b, logvar_b) = backend.forward("encoder_a", x), backend.forward("encoder_b", x)
    mu, logvar = torch.cat([mu_a, mu_b], 1), torch.cat([logvar_a, logvar_b], 1)
    rec = backend.forward("decoder", reparameterize(mu, logvar))
    return vae_loss(reconstruction_error(x, rec, cfg.reconstruction), kl_divergence(mu, logvar),
                    beta_rec=cfg.beta_rec, beta_kl=cfg.beta_kl)  # fmt: skip


def phase_of(network: str) -> Phase:
    """The phase in which `network` alone minimises the negative ELBO."""

    def run(backend, x: Tensor, z_prior: Tensor, carried, cfg, scale: float):
        loss, _ = negative_elbo(backend, x, cfg)
        return loss, {f"loss_{network}": loss}, None

    return Phase(network, (network,), run)


register_architecture(ARCH, ThreeNets)
register_objective(OBJECTIVE, [phase_of(name) for name in NETWORKS])

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("train_driver.py")), run_name="__main__")
