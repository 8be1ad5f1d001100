"""One training iteration per objective, written once for every backend and architecture.

Each step draws its own prior samples, runs the forward passes through `backend.encode`,
`backend.decode` and `backend.generate` (prior samples; these apply the current level, device
and precision), computes the loss with
the pure functions of train.objectives, and calls `backend.update`. It returns the detached
loss terms for logging (no host sync here: the loop decides when to read them).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from train.backend import Backend
from train.objectives import (
    intro_decoder_loss,
    intro_encoder_loss,
    kl_divergence,
    reconstruction_error,
    soft_intro_decoder_loss,
    soft_intro_encoder_loss,
    vae_loss,
)
from train.schema import ObjectiveConfig

Stats = dict[str, Tensor]


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + eps * exp(logvar / 2), eps ~ N(0, I)."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def _prior(backend: Backend, x: Tensor) -> Tensor:
    return torch.randn(x.shape[0], backend.latent_dim, device=x.device)


def _detached(*term_dicts: Stats) -> Stats:
    return {k: v.detach() for terms in term_dicts for k, v in terms.items()}


def soft_intro_step(backend: Backend, x: Tensor, cfg: ObjectiveConfig, scale: float) -> Stats:
    """Soft-IntroVAE, DESIGN.md 2.1: encoder update, then decoder update, same prior samples."""
    err = functools.partial(reconstruction_error, kind=cfg.reconstruction)
    z_prior = _prior(backend, x)

    # Encoder step: the decoder is frozen, but the exp terms reach the encoder through it.
    with backend.train_only("encoder"):
        fake = backend.generate(z_prior)
        mu, logvar = backend.encode(x)
        z = reparameterize(mu, logvar)
        rec = backend.decode(z)
        mu_rec, logvar_rec = backend.encode(rec.detach())
        rec_rec = backend.decode(reparameterize(mu_rec, logvar_rec))
        mu_fake, logvar_fake = backend.encode(fake.detach())
        rec_fake = backend.decode(reparameterize(mu_fake, logvar_fake))
        loss_e, terms_e = soft_intro_encoder_loss(
            err(x, rec), kl_divergence(mu, logvar),
            err(rec, rec_rec), kl_divergence(mu_rec, logvar_rec),
            err(fake, rec_fake), kl_divergence(mu_fake, logvar_fake),
            scale=scale, beta_rec=cfg.beta_rec, beta_kl=cfg.beta_kl, beta_neg=cfg.beta_neg,
        )
        backend.update("encoder", loss_e)

    # Decoder step: the encoder is frozen, but gradients flow through it into the decoder.
    with backend.train_only("decoder"):
        fake = backend.generate(z_prior)
        rec = backend.decode(z.detach())
        mu_rec, logvar_rec = backend.encode(rec)
        mu_fake, logvar_fake = backend.encode(fake)
        rec_rec = backend.decode(reparameterize(mu_rec, logvar_rec).detach())
        rec_fake = backend.decode(reparameterize(mu_fake, logvar_fake).detach())
        loss_d, terms_d = soft_intro_decoder_loss(
            err(x, rec), kl_divergence(mu_rec, logvar_rec), kl_divergence(mu_fake, logvar_fake),
            err(rec.detach(), rec_rec), err(fake.detach(), rec_fake),
            scale=scale, beta_rec=cfg.beta_rec, beta_kl=cfg.beta_kl, gamma_r=cfg.gamma_r,
        )
        backend.update("decoder", loss_d)
    return _detached(terms_e, terms_d)


def intro_step(backend: Backend, x: Tensor, cfg: ObjectiveConfig, scale: float = 1.0) -> Stats:
    """IntroVAE, DESIGN.md 2.2: hinge on the KL of detached reconstructions and samples."""
    err = functools.partial(reconstruction_error, kind=cfg.reconstruction)
    z_prior = _prior(backend, x)

    with backend.train_only("encoder"):
        fake = backend.generate(z_prior)
        mu, logvar = backend.encode(x)
        z = reparameterize(mu, logvar)
        rec = backend.decode(z)
        mu_rec, logvar_rec = backend.encode(rec.detach())
        mu_fake, logvar_fake = backend.encode(fake.detach())
        loss_e, terms_e = intro_encoder_loss(
            err(x, rec), kl_divergence(mu, logvar),
            kl_divergence(mu_rec, logvar_rec), kl_divergence(mu_fake, logvar_fake),
            margin=cfg.margin, alpha=cfg.alpha, beta_rec=cfg.beta_rec, beta_kl=cfg.beta_kl,
        )
        backend.update("encoder", loss_e)

    with backend.train_only("decoder"):
        fake = backend.generate(z_prior)
        rec = backend.decode(z.detach())
        mu_rec, logvar_rec = backend.encode(rec)
        mu_fake, logvar_fake = backend.encode(fake)
        loss_d, terms_d = intro_decoder_loss(
            err(x, rec), kl_divergence(mu_rec, logvar_rec), kl_divergence(mu_fake, logvar_fake),
            alpha=cfg.alpha, beta_rec=cfg.beta_rec,
        )
        backend.update("decoder", loss_d)
    return _detached(terms_e, terms_d)


def vae_step(backend: Backend, x: Tensor, cfg: ObjectiveConfig, scale: float = 1.0) -> Stats:
    """The plain VAE (and the warm-up of the adversarial objectives): both nets, one ELBO."""
    with backend.train_only("both"):
        mu, logvar = backend.encode(x)
        rec = backend.decode(reparameterize(mu, logvar))
        loss, terms = vae_loss(
            reconstruction_error(x, rec, cfg.reconstruction), kl_divergence(mu, logvar),
            beta_rec=cfg.beta_rec, beta_kl=cfg.beta_kl,
        )
        backend.update("both", loss)
    return _detached(terms)


STEPS = {"soft-intro": soft_intro_step, "intro": intro_step, "vae": vae_step}


def training_step(backend: Backend, x: Tensor, cfg: ObjectiveConfig, scale: float, warmup: bool) -> Stats:
    """The step of `cfg.name`, or the plain VAE step while warming up."""
    step = vae_step if warmup else STEPS[cfg.name]
    return step(backend, x, cfg, scale)
