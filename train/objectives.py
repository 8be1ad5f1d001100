"""The objectives of Soft-IntroVAE, IntroVAE and the plain VAE, as pure functions.

Every function here works on per-sample terms (shape [B]) or on network outputs, computes in
fp32 whatever precision the networks ran in, and does no I/O. The losses are *minimised*:
the negative of the paper's objectives, in the form of the reference implementation
(Daniel & Tamar 2021, eqs. 4-6; IntroVAE, Huang et al. 2018). The ELBO's two terms,
`kl_divergence` and `reconstruction_error`, live in sivae.core.elbo: eval's likelihoods use them too.
"""

from __future__ import annotations

import torch
from torch import Tensor


def elbo(rec_error: Tensor, kl: Tensor, beta_rec: float = 1.0, beta_kl: float = 1.0) -> Tensor:
    """ELBO(x) = -(beta_rec * rec + beta_kl * KL), per sample."""
    return -(beta_rec * rec_error.float() + beta_kl * kl.float())


def exp_elbo(rec_error: Tensor, kl: Tensor, *, scale: float, beta_rec: float, beta_neg: float) -> Tensor:
    """mean_i exp(2 s ELBO_i) with the negative-sample weights, in fp32.

    The exponent -2 s (beta_rec r_i + beta_neg kl_i) is <= 0 for non-negative r and KL, so each
    term lies in [0, 1]: a very poor ELBO underflows to 0 with a zero gradient and never
    overflows. In fp16 the same sum would already overflow at |ELBO| > 65504, hence fp32.
    """
    exponent = -2.0 * scale * (beta_rec * rec_error.float() + beta_neg * kl.float())
    return exponent.exp().mean()


def soft_intro_encoder_loss(
    rec_real: Tensor,
    kl_real: Tensor,
    rec_rec: Tensor,
    kl_rec: Tensor,
    rec_fake: Tensor,
    kl_fake: Tensor,
    *,
    scale: float,
    beta_rec: float,
    beta_kl: float,
    beta_neg: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L_E = s (beta_rec L_rec + beta_kl KL_real) + 0.25 (expELBO_rec + expELBO_fake).

    rec_real/kl_real: the real batch; rec_rec/kl_rec: the re-encoded reconstructions;
    rec_fake/kl_fake: the encoded prior samples (all per sample). Returns the loss and its terms.
    """
    rec_real_mean, kl_real_mean = rec_real.float().mean(), kl_real.float().mean()
    exp_rec = exp_elbo(rec_rec, kl_rec, scale=scale, beta_rec=beta_rec, beta_neg=beta_neg)
    exp_fake = exp_elbo(rec_fake, kl_fake, scale=scale, beta_rec=beta_rec, beta_neg=beta_neg)
    loss = scale * (beta_rec * rec_real_mean + beta_kl * kl_real_mean) + 0.25 * (exp_rec + exp_fake)
    kl_fake_mean = kl_fake.float().mean()
    terms = {
        "rec": rec_real_mean,
        "kl_real": kl_real_mean,
        "kl_rec": kl_rec.float().mean(),
        "kl_fake": kl_fake_mean,
        "exp_elbo_rec": exp_rec,
        "exp_elbo_fake": exp_fake,
        "diff_kl": kl_fake_mean - kl_real_mean,
        "loss_encoder": loss,
    }
    return loss, terms


def soft_intro_decoder_loss(
    rec_real: Tensor,
    kl_rec: Tensor,
    kl_fake: Tensor,
    rec_rec: Tensor,
    rec_fake: Tensor,
    *,
    scale: float,
    beta_rec: float,
    beta_kl: float,
    gamma_r: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L_D = s (beta_rec L_rec + 0.5 beta_kl (KL_rec + KL_fake) + 0.5 gamma_r beta_rec (L_rr + L_rf)).

    KL_rec/KL_fake come from the frozen encoder applied to the decoder's own outputs (gradient
    flows through it); L_rr/L_rf compare those outputs with their re-decodings.
    """
    rec_mean = rec_real.float().mean()
    kl_rec_mean, kl_fake_mean = kl_rec.float().mean(), kl_fake.float().mean()
    rec_rec_mean, rec_fake_mean = rec_rec.float().mean(), rec_fake.float().mean()
    loss = scale * (
        beta_rec * rec_mean
        + 0.5 * beta_kl * (kl_rec_mean + kl_fake_mean)
        + 0.5 * gamma_r * beta_rec * (rec_rec_mean + rec_fake_mean)
    )
    terms = {
        "decoder_kl_rec": kl_rec_mean,
        "decoder_kl_fake": kl_fake_mean,
        "rec_rec": rec_rec_mean,
        "rec_fake": rec_fake_mean,
        "loss_decoder": loss,
    }
    return loss, terms


def intro_encoder_loss(
    rec_real: Tensor,
    kl_real: Tensor,
    kl_rec: Tensor,
    kl_fake: Tensor,
    *,
    margin: float,
    alpha: float,
    beta_rec: float,
    beta_kl: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """IntroVAE: L_E = beta_kl KL(z) + alpha ([m - KL(z_r)]^+ + [m - KL(z_pp)]^+) + beta_rec L_AE.

    The hinge acts on batch-mean KLs, as in IntroVAE's reference implementation.
    """
    rec_mean, kl_real_mean = rec_real.float().mean(), kl_real.float().mean()
    kl_rec_mean, kl_fake_mean = kl_rec.float().mean(), kl_fake.float().mean()
    hinge = torch.relu(margin - kl_rec_mean) + torch.relu(margin - kl_fake_mean)
    loss = beta_kl * kl_real_mean + alpha * hinge + beta_rec * rec_mean
    terms = {
        "rec": rec_mean,
        "kl_real": kl_real_mean,
        "kl_rec": kl_rec_mean,
        "kl_fake": kl_fake_mean,
        "diff_kl": kl_fake_mean - kl_real_mean,
        "loss_encoder": loss,
    }
    return loss, terms


def intro_decoder_loss(
    rec_real: Tensor, kl_rec: Tensor, kl_fake: Tensor, *, alpha: float, beta_rec: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """IntroVAE: L_G = alpha (KL(z_r) + KL(z_pp)) + beta_rec L_AE (encoder frozen)."""
    rec_mean = rec_real.float().mean()
    kl_rec_mean, kl_fake_mean = kl_rec.float().mean(), kl_fake.float().mean()
    loss = alpha * (kl_rec_mean + kl_fake_mean) + beta_rec * rec_mean
    terms = {"decoder_kl_rec": kl_rec_mean, "decoder_kl_fake": kl_fake_mean, "loss_decoder": loss}
    return loss, terms


def vae_loss(
    rec_real: Tensor, kl_real: Tensor, *, beta_rec: float, beta_kl: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """The negative ELBO, batch mean: beta_rec L_rec + beta_kl KL (not scaled by s)."""
    rec_mean, kl_mean = rec_real.float().mean(), kl_real.float().mean()
    loss = beta_rec * rec_mean + beta_kl * kl_mean
    return loss, {"rec": rec_mean, "kl_real": kl_mean, "loss_vae": loss}


def weighted_kl_divergence(mu: Tensor, logvar: Tensor, weights: Tensor) -> Tensor:
    """sum_d w_d KL(N(mu_d, exp(logvar_d)) || N(0, 1)) per sample -> [B]: the KL of a code made of parts
    regularised with different weights (the translation model's class and content codes)."""
    mu, logvar = mu.float().flatten(1), logvar.float().flatten(1)
    return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()) * weights.float()).sum(dim=1)
