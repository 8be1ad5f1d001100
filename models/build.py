"""`build_model`: a ModelConfig -> the VAE of its architecture, all behind the `models.base.VAE` interface."""

from __future__ import annotations

from sivae.models.base import VAE
from sivae.models.config import ModelConfig
from sivae.models.mlp import mlp_vae
from sivae.models.progressive import resolution_of


def build_model(cfg: ModelConfig) -> VAE:
    """Construct (on the current default device; use `with torch.device("meta"):` to size a model
    without allocating it) the encoder/decoder pair that `cfg.arch` names."""
    if cfg.arch == "mlp":
        return mlp_vae(cfg.data_dim, cfg.latent_dim, cfg.hidden, cfg.hidden_layers)
    if cfg.arch == "style":
        from sivae.models.style_decoder import StyleDecoder
        from sivae.models.style_encoder import StyleEncoder

        encoder, decoder = StyleEncoder(cfg), StyleDecoder(cfg)
    elif cfg.arch == "standard":
        from sivae.models.standard import ResidualDecoder, ResidualEncoder

        encoder, decoder = ResidualEncoder(cfg), ResidualDecoder(cfg)
    else:
        raise ValueError(f"unknown architecture {cfg.arch!r}")
    side = resolution_of(cfg.max_lod)
    return VAE(encoder, decoder, latent_dim=cfg.latent_dim, data_shape=(cfg.image_channels, side, side),
               max_lod=cfg.max_lod)
