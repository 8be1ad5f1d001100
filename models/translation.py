"""The `translation` family: a class encoder and a content encoder, one decoder on their concatenated codes.

The two-encoder design of LORD (Gabbay & Hoshen), as the Soft-IntroVAE paper trains it for unsupervised
image translation: each encoder is variational with its own code size and KL weight
(`class_latent_dim` / `class_kl_weight`, `content_latent_dim` / `content_kl_weight`), the decoder
takes z = [class code, content code], and a translation decodes the class code of one image with
the content code of another. Nothing tells the encoders which factor is which: the asymmetry of
their bottlenecks (a small, strongly regularised content code) decides what each one keeps.

The networks are IntroVAE's residual "standard" nets (models.standard) on `channels`: two encoders of
that form and its decoder on the concatenation (not progressive: levels are ignored). BatchNorm makes
an output depend on its batch in training mode: translate and evaluate in eval mode.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from sivae.models.base import Model
from sivae.models.config import ModelConfig
from sivae.models.progressive import resolution_of
from sivae.models.standard import ResidualDecoder, ResidualEncoder

Posterior = tuple[Tensor, Tensor]  # (mu, logvar)


class TranslationModel(Model):
    networks = ("class_encoder", "content_encoder", "decoder")

    def __init__(self, cfg: ModelConfig):
        side = resolution_of(cfg.max_lod)
        super().__init__(latent_dim=cfg.class_latent_dim + cfg.content_latent_dim,
                         data_shape=(cfg.image_channels, side, side), max_lod=cfg.max_lod)  # fmt: skip
        self.class_dim, self.content_dim = cfg.class_latent_dim, cfg.content_latent_dim
        # each encoder is a standard-architecture encoder of its own code size
        self.class_encoder = ResidualEncoder(dataclasses.replace(cfg, arch="standard", latent_dim=self.class_dim))
        self.content_encoder = ResidualEncoder(dataclasses.replace(cfg, arch="standard", latent_dim=self.content_dim))
        self.decoder = ResidualDecoder(cfg)
        # per latent dimension: the weight of its KL term (class dims first, as in z)
        weights = torch.cat([torch.full((self.class_dim,), cfg.class_kl_weight),
                             torch.full((self.content_dim,), cfg.content_kl_weight)])  # fmt: skip
        self.register_buffer("kl_weights", weights, persistent=False)

    def encode(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> Posterior:
        """The posterior of z = [class code, content code]."""
        (mu_class, logvar_class), (mu_content, logvar_content) = self.class_encoder(x), self.content_encoder(x)
        return torch.cat([mu_class, mu_content], 1), torch.cat([logvar_class, logvar_content], 1)

    def decode(self, z: Tensor, lod: int | None = None, blend: float = 1.0, mixing: bool = False) -> Tensor:
        return self.decoder(z)

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z -> (class code, content code)."""
        return z[:, : self.class_dim], z[:, self.class_dim :]

    @torch.no_grad()
    def translate(self, class_source: Tensor, content_source: Tensor) -> Tensor:
        """The class of each `class_source` image in the content of the matching `content_source` image
        (posterior means)."""
        class_code = self.class_encoder(class_source)[0]
        content_code = self.content_encoder(content_source)[0]
        return self.decoder(torch.cat([class_code, content_code], 1))
