"""Importance-weighted log-likelihood and the ELBO of a VAE, as pure functions of tensors and callables.

Observation model: p(x|z) = N(x; D(z), sigma^2 I) with sigma^2 = 1 / (2 beta_rec), so that

    -log p(x|z) = beta_rec ||x - D(z)||^2 + (d/2) log(pi / beta_rec)

The first term is exactly the training objective's beta_rec-weighted summed squared error
(`sivae.core.elbo.reconstruction_error`); the constant (d/2) log(2 pi sigma^2) = (d/2) log(pi / beta_rec),
d = C*H*W, is included so that the estimates are log-densities of x in the [-1, 1] pixel scale, in nats.
Prior p(z) = N(0, I); q(z|x) = N(mu, diag(exp(logvar))) from the encoder.

With z_k = mu + exp(logvar / 2) eps_k, k = 1..K, and log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x):

    log p(x) ~ IW_K  = logsumexp_k(log w_k) - log K      (a lower bound in expectation, tight as K grows)
    ELBO_K           = mean_k(log w_k)                   (the same samples: IW_K >= ELBO_K always)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sivae.core.elbo import reconstruction_error

Encode = Callable[[Tensor], tuple[Tensor, Tensor]]
Decode = Callable[[Tensor], Tensor]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_observation_constant(data_dim: int, beta_rec: float) -> float:
    """(d/2) log(pi / beta_rec): what -log p(x|z) adds to beta_rec ||x - D(z)||^2."""
    if beta_rec <= 0:
        raise ValueError(f"beta_rec must be > 0 for a Gaussian observation model, got {beta_rec}")
    return 0.5 * data_dim * math.log(math.pi / beta_rec)


def log_weights(x: Tensor, mu: Tensor, logvar: Tensor, noise: Tensor, decode: Decode, *, beta_rec: float,
                decode_batch: int = 256) -> Tensor:
    """log w_k per sample and draw -> [B, K] (float64), decoding at most `decode_batch` latents at once.

    x: [B, ...] data; mu, logvar: [B, L] from the encoder; noise: [B, K, L] standard normal draws.
    """
    batch, draws, latent = noise.shape
    data_dim = x[0].numel()
    mu, logvar, noise = mu.double(), logvar.double(), noise.to(mu.device, torch.float64)
    z = mu[:, None, :] + (0.5 * logvar).exp()[:, None, :] * noise  # [B, K, L]
    log_prior = -0.5 * (z.pow(2).sum(-1) + latent * _LOG_2PI)
    log_posterior = -0.5 * (noise.pow(2).sum(-1) + logvar.sum(-1, keepdim=True) + latent * _LOG_2PI)

    flat_z = z.reshape(batch * draws, latent)
    rows = torch.arange(batch, device=x.device).repeat_interleave(draws)
    squared = torch.empty(batch * draws, dtype=torch.float64, device=x.device)
    for start in range(0, batch * draws, decode_batch):
        part = slice(start, start + decode_batch)
        decoded = decode(flat_z[part].to(x.dtype if x.is_floating_point() else torch.float32))
        squared[part] = reconstruction_error(x[rows[part]], decoded).double()
    log_likelihood = -beta_rec * squared.reshape(batch, draws) - gaussian_observation_constant(data_dim, beta_rec)
    return log_likelihood + log_prior - log_posterior


def importance_weighted_bounds(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """(IW_K, ELBO_K) per sample from log weights [B, K]."""
    draws = log_w.shape[-1]
    return torch.logsumexp(log_w, dim=-1) - math.log(draws), log_w.mean(dim=-1)


def log_likelihood_estimates(x: Tensor, encode: Encode, decode: Decode, noise: Tensor, *, beta_rec: float,
                             decode_batch: int = 256) -> tuple[Tensor, Tensor]:
    """(IW_K estimate of log p(x), ELBO_K) per sample, in nats, for noise [B, K, L]."""
    mu, logvar = encode(x)
    return importance_weighted_bounds(log_weights(x, mu, logvar, noise, decode, beta_rec=beta_rec,
                                                 decode_batch=decode_batch))
