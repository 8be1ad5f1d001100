"""The objectives against values worked out by hand (the paper's eqs. and the reference code's minimised form)."""

import math

import pytest
import torch

from sivae.core.elbo import kl_divergence, reconstruction_error
from sivae.train.objectives import (
    elbo,
    exp_elbo,
    intro_decoder_loss,
    intro_encoder_loss,
    soft_intro_decoder_loss,
    soft_intro_encoder_loss,
    vae_loss,
)

t = torch.tensor


def test_kl_of_standard_normal_is_zero():
    assert kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)).tolist() == [0.0, 0.0, 0.0]


def test_kl_hand_computed():
    # dim 1: mu=1, logvar=0 -> -0.5 (1 + 0 - 1 - 1) = 0.5
    # dim 2: mu=0, logvar=ln 2 -> -0.5 (1 + ln2 - 0 - 2) = 0.5 - ln2/2
    kl = kl_divergence(t([[1.0, 0.0]]), t([[0.0, math.log(2.0)]]))
    assert kl.item() == pytest.approx(1.0 - math.log(2.0) / 2, abs=1e-6)


def test_kl_is_per_sample():
    mu = t([[1.0, 1.0], [2.0, 0.0]])
    kl = kl_divergence(mu, torch.zeros(2, 2))
    assert kl.tolist() == pytest.approx([1.0, 2.0])  # 0.5 * sum(mu^2)


def test_mse_is_summed_over_dims_per_sample():
    x = t([[1.0, 2.0], [0.0, 0.0]])
    rec = t([[0.0, 0.0], [1.0, 1.0]])
    assert reconstruction_error(x, rec, "mse").tolist() == [5.0, 2.0]


def test_mse_sums_over_image_dims():
    x = torch.zeros(2, 3, 4, 4)
    rec = torch.full((2, 3, 4, 4), 0.5)
    assert reconstruction_error(x, rec).tolist() == [12.0, 12.0]  # 48 pixels * 0.25


def test_bce_hand_computed():
    # targets (x+1)/2 = [1, 0]; predictions (0+1)/2 = 0.5 each: -(ln .5 + ln .5) = 2 ln 2
    bce = reconstruction_error(t([[1.0, -1.0]]), t([[0.0, 0.0]]), "bce")
    assert bce.item() == pytest.approx(2 * math.log(2.0), rel=1e-6)
    # a perfect, saturated reconstruction costs ~0
    assert reconstruction_error(t([[1.0, -1.0]]), t([[1.0, -1.0]]), "bce").item() < 1e-4


def test_unknown_reconstruction_kind():
    with pytest.raises(ValueError, match="unknown reconstruction"):
        reconstruction_error(torch.zeros(1, 2), torch.zeros(1, 2), "l1")


def test_elbo_weights():
    assert elbo(t([2.0]), t([3.0]), beta_rec=0.5, beta_kl=2.0).item() == -(1.0 + 6.0)


# Shared per-sample terms for the Soft-IntroVAE losses, B = 2.
REC_REAL, KL_REAL = t([2.0, 4.0]), t([1.0, 3.0])  # means 3 and 2
REC_REC, KL_REC = t([1.0, 3.0]), t([0.5, 0.5])
REC_FAKE, KL_FAKE = t([2.0, 2.0]), t([1.0, 1.0])


def test_soft_intro_encoder_loss_hand_computed():
    s, b_rec, b_kl, b_neg = 0.5, 0.2, 0.3, 0.9
    loss, terms = soft_intro_encoder_loss(
        REC_REAL, KL_REAL, REC_REC, KL_REC, REC_FAKE, KL_FAKE,
        scale=s, beta_rec=b_rec, beta_kl=b_kl, beta_neg=b_neg,
    )
    # real part: s (0.2 * 3 + 0.3 * 2) = 0.5 * 1.2 = 0.6
    # exp_rec: exponents -2 * 0.5 * (0.2 * r + 0.9 * 0.5) = -0.65 and -1.05
    # exp_fake: -(0.2 * 2 + 0.9 * 1) = -1.3 for both samples
    exp_rec = (math.exp(-0.65) + math.exp(-1.05)) / 2
    exp_fake = math.exp(-1.3)
    assert terms["exp_elbo_rec"].item() == pytest.approx(exp_rec, rel=1e-6)
    assert terms["exp_elbo_fake"].item() == pytest.approx(exp_fake, rel=1e-6)
    assert loss.item() == pytest.approx(0.6 + 0.25 * (exp_rec + exp_fake), rel=1e-6)
    assert terms["diff_kl"].item() == pytest.approx(1.0 - 2.0)


def test_soft_intro_decoder_loss_hand_computed():
    loss, terms = soft_intro_decoder_loss(
        REC_REAL, KL_REC, KL_FAKE, REC_REC, REC_FAKE,
        scale=0.5, beta_rec=0.2, beta_kl=0.3, gamma_r=0.1,
    )
    # s (b_rec * 3 + 0.5 b_kl (0.5 + 1) + 0.5 gamma_r b_rec (2 + 2))
    expected = 0.5 * (0.2 * 3 + 0.5 * 0.3 * 1.5 + 0.5 * 0.1 * 0.2 * 4.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert terms["rec_rec"].item() == 2.0 and terms["rec_fake"].item() == 2.0


def test_intro_hinge_hand_computed():
    # mean KLs: real 2, rec 0.5, fake 1; margin 1.2: hinge = 0.7 + 0.2
    loss, _ = intro_encoder_loss(REC_REAL, KL_REAL, KL_REC, KL_FAKE, margin=1.2, alpha=0.25, beta_rec=0.5)
    assert loss.item() == pytest.approx(2.0 + 0.25 * (0.7 + 0.2) + 0.5 * 3.0, rel=1e-6)
    # above the margin the hinge vanishes
    loss, _ = intro_encoder_loss(REC_REAL, KL_REAL, KL_REC, KL_FAKE, margin=0.4, alpha=0.25, beta_rec=0.5)
    assert loss.item() == pytest.approx(2.0 + 0.5 * 3.0, rel=1e-6)
    loss, _ = intro_decoder_loss(REC_REAL, KL_REC, KL_FAKE, alpha=0.25, beta_rec=0.5)
    assert loss.item() == pytest.approx(0.25 * 1.5 + 0.5 * 3.0, rel=1e-6)


def test_vae_loss_is_unscaled_negative_elbo():
    loss, _ = vae_loss(REC_REAL, KL_REAL, beta_rec=0.2, beta_kl=0.3)
    assert loss.item() == pytest.approx(0.2 * 3 + 0.3 * 2, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_exp_terms_do_not_overflow_at_huge_negative_elbo(dtype):
    # -ELBO of 1e6 with s = 1: exp(-2e6) underflows to exactly 0 and the gradient is 0, not NaN.
    rec = torch.tensor([1e6, 1e6]).requires_grad_()
    kl = torch.tensor([60000.0, 0.0], dtype=dtype).requires_grad_()
    value = exp_elbo(rec, kl, scale=1.0, beta_rec=1.0, beta_neg=1.0)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(rec.grad).all() and torch.isfinite(kl.grad).all()


def test_loss_math_runs_in_fp32_for_low_precision_inputs():
    # 300^2 * 1000 dims overflows fp16 (max 65504) if summed in half precision.
    x = torch.zeros(1, 1000, dtype=torch.float16)
    rec = torch.full((1, 1000), 300.0, dtype=torch.float16)
    err = reconstruction_error(x, rec)
    assert err.dtype == torch.float32 and err.item() == pytest.approx(9e7)
    kl = kl_divergence(torch.zeros(1, 4, dtype=torch.bfloat16), torch.full((1, 4), 20.0, dtype=torch.bfloat16))
    assert kl.dtype == torch.float32 and torch.isfinite(kl).all()
