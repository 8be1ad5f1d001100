"""One training iteration of any objective, written once for every backend and architecture; the
built-in objectives.

An objective is a sequence of phases (train.phases), each updating some of the model's networks:
Soft-IntroVAE and IntroVAE update the encoder, then the decoder; the VAE updates both at once. A
phase function computes one micro-batch's loss through a `Nets` view of the backend (the image VAE's:
`backend.encode` / `decode` / `generate`, which apply the current level, device and precision; the
translation model's: its two encoders as one, through `backend.forward`) with the pure functions of
train.objectives, and passes a value (the encoder's z) on to the next phase.
`training_step` runs the phases, accumulating gradients over the micro-batches of one global batch
before each update. Stats come back as detached tensors (no host sync here: the loop decides when
to read them).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sivae.core.elbo import kl_divergence, reconstruction_error
from sivae.train.backend import Backend
from sivae.train.objectives import (
    intro_decoder_loss,
    intro_encoder_loss,
    soft_intro_decoder_loss,
    soft_intro_encoder_loss,
    vae_loss,
    weighted_kl_divergence,
)
from sivae.train.phases import Phase, Stats, objective_phases, register_objective, warmup_objective
from sivae.train.schema import ObjectiveConfig


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + eps * exp(logvar / 2), eps ~ N(0, I)."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


@dataclass(frozen=True)
class Nets:
    """How a phase reaches the model's networks through the backend: x -> posterior (mu, logvar), z -> x for
    codes (`decode`) and prior samples (`generate`), and the per-sample KL of a posterior. `joint`: the
    networks are per sample (models.base.Model.per_sample), so two batches may share one call."""

    encode: Callable[[Tensor], tuple[Tensor, Tensor]]
    decode: Callable[[Tensor], Tensor]
    generate: Callable[[Tensor], Tensor]
    kl: Callable[[Tensor, Tensor], Tensor] = kl_divergence
    joint: bool = False


def image_nets(backend: Backend) -> Nets:
    """The image VAE's encoder and decoder."""
    return Nets(backend.encode, backend.decode, backend.generate, joint=backend.model.per_sample)


# Two batches through one network call where the networks are per sample: the same result, in fewer and
# larger kernels (a 512-channel 3x3 convolution's forward and backward on batch 16 took 0.61x the time of
# two on batch 8 at 4px and 0.83x at 16px, 2 CPU threads). With batch statistics, two calls.
def encode_both(nets: Nets, a: Tensor, b: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    if not nets.joint:
        return nets.encode(a), nets.encode(b)
    (mu_a, mu_b), (logvar_a, logvar_b) = (t.split([len(a), len(b)]) for t in nets.encode(torch.cat([a, b])))
    return (mu_a, logvar_a), (mu_b, logvar_b)


def decode_both(nets: Nets, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, Tensor]:
    if not nets.joint:
        return nets.decode(z_a), nets.decode(z_b)
    x_a, x_b = nets.decode(torch.cat([z_a, z_b])).split([len(z_a), len(z_b)])
    return x_a, x_b


NetsOf = Callable[[Backend], Nets]


def soft_intro_phases(nets_of: NetsOf, encoders: tuple[str, ...], decoders: tuple[str, ...]) -> list[Phase]:
    """Soft-IntroVAE's encoder phase (updating `encoders`, the discriminator) and decoder phase (`decoders`)."""

    def encoder_phase(backend: Backend, x: Tensor, z_prior: Tensor, _, cfg: ObjectiveConfig, scale: float):
        """The decoder is frozen, but the exp terms reach the encoder through it."""
        nets, err = nets_of(backend), functools.partial(reconstruction_error, kind=cfg.reconstruction)
        fake = nets.generate(z_prior)
        mu, logvar = nets.encode(x)
        z = reparameterize(mu, logvar)
        rec = nets.decode(z)
        (mu_rec, logvar_rec), (mu_fake, logvar_fake) = encode_both(nets, rec.detach(), fake.detach())
        rec_rec, rec_fake = decode_both(nets, reparameterize(mu_rec, logvar_rec), reparameterize(mu_fake, logvar_fake))
        loss, stats = soft_intro_encoder_loss(
            err(x, rec), nets.kl(mu, logvar),
            err(rec, rec_rec), nets.kl(mu_rec, logvar_rec),
            err(fake, rec_fake), nets.kl(mu_fake, logvar_fake),
            scale=scale, beta_rec=cfg.beta_rec, beta_kl=cfg.beta_kl, beta_neg=cfg.beta_neg,
        )
        return loss, stats, z.detach()

    def decoder_phase(backend: Backend, x: Tensor, z_prior: Tensor, z: Tensor, cfg: ObjectiveConfig, scale: float):
        """The encoder is frozen, but gradients flow through it into the decoder."""
        nets, err = nets_of(backend), functools.partial(reconstruction_error, kind=cfg.reconstruction)
        fake = nets.generate(z_prior)
        rec = nets.decode(z)
        (mu_rec, logvar_rec), (mu_fake, logvar_fake) = encode_both(nets, rec, fake)
        rec_rec, rec_fake = decode_both(nets, reparameterize(mu_rec, logvar_rec).detach(),
                                        reparameterize(mu_fake, logvar_fake).detach())
        loss, stats = soft_intro_decoder_loss(
            err(x, rec), nets.kl(mu_rec, logvar_rec), nets.kl(mu_fake, logvar_fake),
            err(rec.detach(), rec_rec), err(fake.detach(), rec_fake),
            scale=scale, beta_rec=cfg.beta_rec, beta_kl=cfg.beta_kl, gamma_r=cfg.gamma_r,
        )
        return loss, stats, None

    return [Phase("encoder", encoders, encoder_phase), Phase("decoder", decoders, decoder_phase)]


def intro_encoder(backend: Backend, x: Tensor, z_prior: Tensor, _, cfg: ObjectiveConfig, scale: float):
    """IntroVAE encoder phase: hinge on the KL of the detached reconstruction and sample."""
    fake = backend.generate(z_prior)
    mu, logvar = backend.encode(x)
    z = reparameterize(mu, logvar)
    rec = backend.decode(z)
    mu_rec, logvar_rec = backend.encode(rec.detach())
    mu_fake, logvar_fake = backend.encode(fake.detach())
    loss, stats = intro_encoder_loss(
        reconstruction_error(x, rec, cfg.reconstruction), kl_divergence(mu, logvar),
        kl_divergence(mu_rec, logvar_rec), kl_divergence(mu_fake, logvar_fake),
        margin=cfg.margin, alpha=cfg.alpha, beta_rec=cfg.beta_rec, beta_kl=cfg.beta_kl,
    )
    return loss, stats, z.detach()


def intro_decoder(backend: Backend, x: Tensor, z_prior: Tensor, z: Tensor, cfg: ObjectiveConfig, scale: float):
    """IntroVAE decoder phase: make the frozen encoder give low KL to reconstructions and samples."""
    fake = backend.generate(z_prior)
    rec = backend.decode(z)
    mu_rec, logvar_rec = backend.encode(rec)
    mu_fake, logvar_fake = backend.encode(fake)
    loss, stats = intro_decoder_loss(
        reconstruction_error(x, rec, cfg.reconstruction),
        kl_divergence(mu_rec, logvar_rec), kl_divergence(mu_fake, logvar_fake),
        alpha=cfg.alpha, beta_rec=cfg.beta_rec,
    )
    return loss, stats, None


def vae_phase(nets_of: NetsOf, networks: tuple[str, ...]) -> Phase:
    """The plain VAE (and the warm-up of the adversarial objectives): one ELBO, every network at once."""

    def run(backend: Backend, x: Tensor, z_prior: Tensor, _, cfg: ObjectiveConfig, scale: float):
        nets = nets_of(backend)
        mu, logvar = nets.encode(x)
        rec = nets.decode(reparameterize(mu, logvar))
        loss, stats = vae_loss(
            reconstruction_error(x, rec, cfg.reconstruction), nets.kl(mu, logvar),
            beta_rec=cfg.beta_rec, beta_kl=cfg.beta_kl,
        )
        return loss, stats, None

    return Phase("vae", networks, run)


register_objective("soft-intro", soft_intro_phases(image_nets, ("encoder",), ("decoder",)))
register_objective("intro", [Phase("encoder", ("encoder",), intro_encoder),
                              Phase("decoder", ("decoder",), intro_decoder)])  # fmt: skip
# also the warm-up of the adversarial objectives
register_objective("vae", [vae_phase(image_nets, ("encoder", "decoder"))])


def translation_nets(backend: Backend) -> Nets:
    """The translation model (models.translation) seen as one VAE: its encoder is the class and content
    encoders side by side (z = [class code, content code]) and its KL weighs each code by its own weight."""

    def encode(x: Tensor) -> tuple[Tensor, Tensor]:
        (mu_class, logvar_class), (mu_content, logvar_content) = (
            backend.forward("class_encoder", x), backend.forward("content_encoder", x))
        return torch.cat([mu_class, mu_content], 1), torch.cat([logvar_class, logvar_content], 1)

    def decode(z: Tensor) -> Tensor:
        return backend.forward("decoder", z)

    return Nets(encode, decode, decode, functools.partial(weighted_kl_divergence, weights=backend.model.kl_weights))


TRANSLATION_ENCODERS = ("class_encoder", "content_encoder")
# Soft-IntroVAE with the two encoders updated together as the discriminator; the VAE updates all three networks
register_objective("translation-soft-intro", soft_intro_phases(translation_nets, TRANSLATION_ENCODERS, ("decoder",)),
                   warmup="translation-vae")  # fmt: skip
register_objective("translation-vae", [vae_phase(translation_nets, (*TRANSLATION_ENCODERS, "decoder"))],
                   warmup="translation-vae")  # fmt: skip


def training_step(
    backend: Backend, batch: Tensor | Sequence[Tensor], cfg: ObjectiveConfig, scale: float, warmup: bool = False
) -> Stats:
    """One iteration over a global batch given as one tensor or as equal micro-batches.

    Each phase accumulates gradients over all micro-batches, then updates its networks once; the
    prior samples of a micro-batch are shared by its phases, as in the reference.
    """
    micro_batches = [batch] if isinstance(batch, Tensor) else list(batch)
    n = len(micro_batches)
    # one draw for the global batch, split: the prior samples do not depend on the micro-batching
    sizes = [len(x) for x in micro_batches]
    z_priors = torch.randn(sum(sizes), backend.latent_dim, device=micro_batches[0].device).split(sizes)
    carried: list[Tensor | None] = [None] * n
    totals: Stats = {}
    for phase in objective_phases(warmup_objective(cfg.name) if warmup else cfg.name):
        with backend.train_only(phase):
            for i, x in enumerate(micro_batches):
                with backend.accumulating(last=i == n - 1):
                    loss, stats, carried[i] = phase.run(backend, x, z_priors[i], carried[i], cfg, scale)
                    backend.backward(phase.name, loss / n)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value.detach() / n
            backend.step(phase.name)
    return totals


def soft_intro_step(backend: Backend, x: Tensor, cfg: ObjectiveConfig, scale: float) -> Stats:
    return training_step(backend, x, dataclasses.replace(cfg, name="soft-intro"), scale)


def intro_step(backend: Backend, x: Tensor, cfg: ObjectiveConfig, scale: float = 1.0) -> Stats:
    return training_step(backend, x, dataclasses.replace(cfg, name="intro"), scale)


def vae_step(backend: Backend, x: Tensor, cfg: ObjectiveConfig, scale: float = 1.0) -> Stats:
    return training_step(backend, x, cfg, scale, warmup=True)
