"""Encoder/decoder architectures behind one interface (`models.base.VAE`)."""

from models.base import VAE
from models.mlp import mlp_vae

__all__ = ["VAE", "mlp_vae"]
