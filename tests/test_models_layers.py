"""Equalised-lr layers and the resampling helpers, against direct computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from sivae.models.equalized import EqualizedConv2d, EqualizedLinear
from sivae.models.progressive import downsample, fade_real_images, lod_of, resolution_of, upsample


def test_equalized_linear_preserves_scale_whatever_the_lr_mult():
    # He's constant: unit-variance inputs give outputs of variance gain^2 = 2, for any lr multiplier
    torch.manual_seed(0)
    x = torch.randn(4096, 512)
    for lr_mult in (1.0, 0.1):
        layer = EqualizedLinear(512, 512, lr_mult=lr_mult)
        assert layer.weight.std().item() == pytest.approx(1.0 / lr_mult, rel=0.02)  # stored at unit scale / m
        assert layer(x).var().item() == pytest.approx(2.0, rel=0.05)


def test_lr_mult_scales_the_effective_step_under_adam():
    # Adam moves a stored weight by about lr whatever its gradient's size, so the effective weight
    # (stored x He constant x m) of a layer with m = 0.1 moves 10x less than with m = 1.
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    moves = {}
    for lr_mult in (1.0, 0.1):
        torch.manual_seed(2)
        layer = EqualizedLinear(32, 8, lr_mult=lr_mult)
        before = (layer.weight * layer.weight_scale).detach().clone()
        opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
        layer(x).pow(2).sum().backward()
        opt.step()
        moves[lr_mult] = ((layer.weight * layer.weight_scale).detach() - before).abs().mean().item()
    assert moves[0.1] / moves[1.0] == pytest.approx(0.1, rel=1e-3)


def test_equalized_conv_is_a_he_scaled_convolution():
    torch.manual_seed(3)
    conv = EqualizedConv2d(6, 5, 3)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 6, 9, 9)
    expected = F.conv2d(x, conv.weight * math.sqrt(2.0) / math.sqrt(6 * 9), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)


def test_fused_downsampling_equals_conv_then_average_pool():
    torch.manual_seed(4)
    fused = EqualizedConv2d(4, 6, 3, bias=False, resample="down")
    x = torch.randn(2, 4, 16, 16)
    w = fused.weight * math.sqrt(2.0) / math.sqrt(4 * 9)
    expected = F.avg_pool2d(F.conv2d(x, w, padding=1), 2)
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_fused_upsampling_equals_nearest_upsample_then_conv():
    # the transposed convolution with the box-filtered kernel is nearest-neighbour upsampling followed
    # by a 3x3 convolution whose kernel is the stored one flipped in space, (in, out) swapped
    torch.manual_seed(5)
    fused = EqualizedConv2d(4, 6, 3, bias=False, resample="up")
    x = torch.randn(2, 4, 8, 8)
    w = fused.weight * math.sqrt(2.0) / math.sqrt(4 * 9)
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w.flip(2, 3).transpose(0, 1), padding=1)
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_levels_and_resolutions():
    assert [resolution_of(lod) for lod in range(9)] == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert [lod_of(4 * 2**k) for k in range(9)] == list(range(9))
    with pytest.raises(ValueError):
        lod_of(48)


def test_fade_real_images_endpoints():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert fade_real_images(x, 1.0) is x
    coarse = torch.tensor([[2.5, 4.5], [10.5, 12.5]])  # 2x2 means of the 4x4 ramp
    expected = coarse.repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(fade_real_images(x, 0.0)[0, 0], expected)
    torch.testing.assert_close(fade_real_images(x, 0.25), 0.75 * upsample(downsample(x)) + 0.25 * x)
