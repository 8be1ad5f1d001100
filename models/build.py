"""`build_model`: a ModelConfig -> the model its architecture names; the built-in architectures."""

from __future__ import annotations

from sivae.models.base import VAE, Model
from sivae.models.config import ModelConfig
from sivae.models.mlp import mlp_vae
from sivae.models.progressive import resolution_of
from sivae.models.registry import ARCHITECTURES, register_architecture


def build_model(cfg: ModelConfig) -> Model:
    """Construct (on the current default device; use `with torch.device("meta"):` to size a model
    without allocating it) the model that `cfg.arch` names."""
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.arch!r}")
    return ARCHITECTURES[cfg.arch](cfg)


def _image_vae(cfg: ModelConfig, encoder, decoder) -> VAE:
    side = resolution_of(cfg.max_lod)
    return VAE(encoder, decoder, latent_dim=cfg.latent_dim, data_shape=(cfg.image_channels, side, side),
               max_lod=cfg.max_lod)


def _style(cfg: ModelConfig) -> VAE:
    from sivae.models.style_decoder import StyleDecoder
    from sivae.models.style_encoder import StyleEncoder

    return _image_vae(cfg, StyleEncoder(cfg), StyleDecoder(cfg))


def _standard(cfg: ModelConfig) -> VAE:
    from sivae.models.standard import ResidualDecoder, ResidualEncoder

    return _image_vae(cfg, ResidualEncoder(cfg), ResidualDecoder(cfg))


def _translation(cfg: ModelConfig) -> Model:
    from sivae.models.translation import TranslationModel

    return TranslationModel(cfg)


register_architecture("style", _style)
register_architecture("standard", _standard)
register_architecture("translation", _translation)


def _pointcloud(cfg: ModelConfig) -> VAE:
    from sivae.models.pointcloud import pointcloud_vae

    return pointcloud_vae(cfg)


register_architecture("pointcloud", _pointcloud)
register_architecture("mlp", lambda cfg: mlp_vae(cfg.data_dim, cfg.latent_dim, cfg.hidden, cfg.hidden_layers))
