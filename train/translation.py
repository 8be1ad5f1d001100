"""The translation model's objectives: Soft-IntroVAE with the two encoders as one discriminator, and the VAE.

Both are the image objectives' phases (train.steps) over a view of the model in which the encoder is
the class and content encoders side by side (z = [class code, content code]) and the KL weighs each
part of z by its own weight (`model.class_kl_weight`, `model.content_kl_weight`). Soft-IntroVAE's
encoder phase updates both encoders together, its decoder phase the decoder; the VAE (and the
warm-up of Soft-IntroVAE) updates all three at once.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from sivae.train.backend import Backend
from sivae.train.objectives import weighted_kl_divergence
from sivae.train.phases import register_objective
from sivae.train.steps import Nets, soft_intro_phases, vae_phase

ENCODERS = ("class_encoder", "content_encoder")
DECODER = "decoder"


def translation_nets(backend: Backend) -> Nets:
    def encode(x: Tensor) -> tuple[Tensor, Tensor]:
        (mu_class, logvar_class) = backend.forward("class_encoder", x)
        (mu_content, logvar_content) = backend.forward("content_encoder", x)
        return torch.cat([mu_class, mu_content], 1), torch.cat([logvar_class, logvar_content], 1)

    def decode(z: Tensor) -> Tensor:
        return backend.forward(DECODER, z)

    kl = functools.partial(weighted_kl_divergence, weights=backend.model.kl_weights)
    return Nets(encode, decode, decode, kl)


register_objective("translation-vae", [vae_phase(translation_nets, (*ENCODERS, DECODER))], warmup="translation-vae")
register_objective("translation-soft-intro", soft_intro_phases(translation_nets, ENCODERS, (DECODER,)),
                   warmup="translation-vae")  # fmt: skip
