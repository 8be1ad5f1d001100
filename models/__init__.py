"""Encoder/decoder architectures behind one interface (`models.base.VAE`), built from a ModelConfig."""

from models.base import VAE
from models.build import build_model
from models.config import ModelConfig
from models.mlp import mlp_vae
from models.progressive import fade_real_images, lod_of, resolution_of

__all__ = ["VAE", "ModelConfig", "build_model", "fade_real_images", "lod_of", "mlp_vae", "resolution_of"]
