"""The typed schema of training configs (validated by train.config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from train.config import require

ObjectiveName = Literal["soft-intro", "intro", "vae"]


@dataclass
class ObjectiveConfig:
    """Loss weights. Soft-IntroVAE uses beta_rec, beta_kl, beta_neg, gamma_r and scale;
    IntroVAE uses beta_rec (its beta), beta_kl (weight of the real KL), margin and alpha;
    the VAE (and the VAE warm-up of the others) uses beta_rec and beta_kl."""

    name: ObjectiveName = "soft-intro"
    reconstruction: Literal["mse", "bce"] = "mse"
    beta_rec: float = 1.0
    beta_kl: float = 1.0
    beta_neg: float = 1.0
    gamma_r: float = 1e-8
    # s of DESIGN.md 2: null means 1 / input_dim (C*H*W) of the data the model sees.
    scale: float | None = None
    margin: float = 120.0
    alpha: float = 0.25

    def __post_init__(self) -> None:
        for key in ("beta_rec", "beta_kl", "beta_neg", "gamma_r", "alpha", "margin"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(self.scale is None or self.scale > 0, "scale", "must be > 0 (or null for 1/input_dim)")
