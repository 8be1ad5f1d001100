"""Encoder/decoder architectures behind one interface (`models.base.VAE`), built from a ModelConfig."""


from sivae.models.base import VAE
from sivae.models.build import build_model
from sivae.models.config import ModelConfig
from sivae.models.mlp import mlp_vae
from sivae.models.progressive import fade_real_images, lod_of, resolution_of

__all__ = ["VAE", "ModelConfig", "build_model", "fade_real_images", "lod_of", "mlp_vae", "resolution_of"]

# Importable only as sivae.models: a second copy under the folder's name (from the repository root) would
# hold its own classes and registries.
if __name__ != "sivae.models":
    raise ModuleNotFoundError(f"No module named {__name__!r} (the package is sivae.models)", name=__name__)

