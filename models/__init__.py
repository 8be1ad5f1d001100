"""Architectures behind one interface (`models.base.Model`; the image models are `VAE`s), built from a ModelConfig."""


from sivae.models.base import VAE, Model
from sivae.models.build import build_model
from sivae.models.config import ModelConfig
from sivae.models.mlp import mlp_vae
from sivae.models.progressive import fade_real_images, lod_of, resolution_of
from sivae.models.registry import register_architecture

__all__ = ["VAE", "Model", "ModelConfig", "build_model", "fade_real_images", "lod_of", "mlp_vae",
           "register_architecture", "resolution_of"]

# Importable only as sivae.models: a second copy under the folder's name (from the repository root) would
# hold its own classes and registries.
if __name__ != "sivae.models":
    raise ModuleNotFoundError(f"No module named {__name__!r} (the package is sivae.models)", name=__name__)

