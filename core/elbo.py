"""The two terms of the ELBO, per sample: shared by the training objectives (sivae.train.objectives)
and by eval's likelihood estimates, so that both measure the same model."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from sivae.core.points import chamfer_distance

ReconstructionKind = Literal["mse", "bce", "chamfer"]

_BCE_EPS = 1e-6


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over latent dims -> [B]."""
    mu, logvar = mu.float().flatten(1), logvar.float().flatten(1)
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def reconstruction_error(x: Tensor, x_rec: Tensor, kind: ReconstructionKind = "mse") -> Tensor:
    """Per-sample reconstruction error, *summed* over all data dims -> [B].

    mse: sum of squared errors (a Gaussian negative log-likelihood up to constants).
    bce: Bernoulli negative log-likelihood with data in [-1, 1] read as probabilities
         (x + 1) / 2; the reconstruction is clamped into the open interval first.
    chamfer: point clouds [B, N, 3]: the Chamfer distance summed over the points of both clouds
         (the reference's point-cloud loss; core.points).
    """
    if kind == "chamfer":
        return chamfer_distance(x, x_rec, reduce="sum")
    x, x_rec = x.float().flatten(1), x_rec.float().flatten(1)
    if kind == "mse":
        return (x_rec - x).pow(2).sum(dim=1)
    if kind == "bce":
        target = (x + 1.0) * 0.5
        p = ((x_rec + 1.0) * 0.5).clamp(_BCE_EPS, 1.0 - _BCE_EPS)
        return -(target * p.log() + (1.0 - target) * (1.0 - p).log()).sum(dim=1)
    raise ValueError(f"unknown reconstruction loss {kind!r}; expected 'mse', 'bce' or 'chamfer'")
