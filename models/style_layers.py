"""Building blocks shared by the style encoder and decoder: blur, RGB adapters, normalisation, the fp16 clamp."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sivae.models.equalized import EqualizedConv2d

LEAK = 0.2
TO_RGB_GAIN = 0.03  # the reference's ToRGB starts near zero so that a fresh level barely disturbs the image


class Blur(nn.Module):
    """Depthwise [1, 2, 1]^T [1, 2, 1] / 16 low-pass filter next to every resampling step (anti-aliasing)."""

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16.0
        # a constant of the architecture, not state: kept out of checkpoints
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=x.shape[1])


class FromRGB(nn.Module):
    """1x1 convolution from image channels to features.

    The reference applies leaky ReLU(0.2) twice here (once in the layer, once after it), which is
    one leaky ReLU of slope 0.04; we write it as that.
    """

    def __init__(self, image_channels: int, channels: int):
        super().__init__()
        self.conv = EqualizedConv2d(image_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(self.conv(x), LEAK * LEAK)


class ToRGB(nn.Module):
    """1x1 convolution from features to image channels, linear output."""

    def __init__(self, channels: int, image_channels: int):
        super().__init__()
        self.conv = EqualizedConv2d(channels, image_channels, 1, gain=TO_RGB_GAIN)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise (one map per sample, shared by the channels) times a learned
    per-channel weight that starts at zero.

    `noise`: True draws fresh noise, False adds none, "const" adds this layer's fixed map (seeded by
    `const_seed` and the size), the same for every sample, so that an image depends on its latent
    alone, whatever else is in its batch (the generation tools' mode)."""

    def __init__(self, channels: int, const_seed: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.const_seed = const_seed

    def forward(self, x: Tensor, noise: bool | str) -> Tensor:
        if not noise:
            return x
        if noise == "const":
            fixed = constant_noise(x.shape[2], x.shape[3], self.const_seed)
            return x + self.weight * fixed.to(x.device, x.dtype)
        drawn = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + self.weight * drawn


@functools.lru_cache(maxsize=64)
def constant_noise(height: int, width: int, seed: int) -> Tensor:
    """A fixed standard normal map [1, 1, height, width] (CPU, float32) for a layer's "const" noise."""
    generator = torch.Generator().manual_seed(seed * 100_003 + height * 1009 + width)
    return torch.randn(1, 1, height, width, generator=generator)


def channel_statistics(x: Tensor) -> Tensor:
    """Per-sample, per-channel mean and standard deviation over the pixels, as fp32 (B, 2C).

    The reduction accumulates in fp32 whatever the input precision. The reference takes sqrt(var)
    with no epsilon; the small one here (added in fp32, where it does not vanish) keeps the gradient
    finite on a constant channel, which the 2x2 maps of the encoder's last block can produce.
    """
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    return torch.cat((mean.float(), torch.sqrt(var.float() + 1e-8)), dim=1)


def clamp_fp16(x: Tensor, limit: float | None) -> Tensor:
    """In fp16, clip activations to +-limit so that sums and squares downstream stay finite; no-op otherwise."""
    if limit is None or x.dtype != torch.float16:
        return x
    return x.clamp(-limit, limit)
