"""Equalised-learning-rate layers (Karras et al.): weights are stored at unit scale and scaled at run time.

A weight drawn from N(0, 1) and multiplied in the forward pass by He's constant
`gain / sqrt(fan_in)` gives the same initial function as He initialisation, but every weight then
moves at the same relative speed under Adam whatever its fan-in. An lr multiplier `m` (the
mapping networks use 0.1) stores the weight as N(0, 1/m) and multiplies by `m` at run time, so its
effective learning rate is m times the optimizer's; biases are multiplied by `m` too.

The scale multiplies the layer's input, not its weight: the product is the same (the layers are
linear), the multiply costs the size of the activations instead of the weight's, and the weight
reaching the kernel is the stored parameter itself. On the CPU a convolution given a freshly
computed weight ran 3x slower than on a stored one (512 channels at 4x4, batch 8: 10.5 against
3.3 ms), and autocast caches its low-precision copy only of a stored weight.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HE_GAIN = math.sqrt(2.0)  # He's constant for (leaky) ReLU networks
Resample = Literal["down", "up"] | None


class EqualizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, *, gain: float = HE_GAIN, lr_mult: float = 1.0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.weight_scale = gain / math.sqrt(in_features) * lr_mult
        self.lr_mult = lr_mult

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mult
        return F.linear(x * self.weight_scale, self.weight, bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, lr_mult={self.lr_mult}"


class EqualizedConv2d(nn.Module):
    """A stride-1 'same' convolution, or a fused resampling convolution.

    `resample="down"`: a 3x3 convolution followed by 2x2 averaging, computed as one stride-2
    convolution whose 4x4 kernel is the 3x3 kernel convolved with the 2x2 box (/4).
    `resample="up"`: nearest-neighbour upsampling followed by a 3x3 convolution, computed as one
    stride-2 transposed convolution with the 3x3 kernel convolved with the 2x2 box. Fusing saves
    the work of running the 3x3 kernel on the upsampled (4x larger) map; the stored weight keeps the
    3x3 shape and the fan-in of the 3x3 kernel, so parameter counts match the unfused form.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, gain: float = HE_GAIN,
                 bias: bool = True, resample: Resample = None):
        super().__init__()
        if resample is not None and kernel_size != 3:
            raise ValueError("fused resampling is defined for 3x3 kernels")
        # transposed convolutions take their weight as (in, out, k, k)
        shape = (in_channels, out_channels) if resample == "up" else (out_channels, in_channels)
        self.weight = nn.Parameter(torch.randn(*shape, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.resample = resample
        self.padding = kernel_size // 2

    def forward(self, x: Tensor) -> Tensor:
        if self.resample is None:
            return F.conv2d(x * self.weight_scale, self.weight, self.bias, padding=self.padding)
        # the 3x3 kernel convolved with a 2x2 box: the sum of its four shifted copies in a 4x4 frame
        w = F.pad(self.weight, (1, 1, 1, 1))
        w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
        if self.resample == "down":  # the box's 1/4 joins the scale
            return F.conv2d(x * (self.weight_scale * 0.25), w, self.bias, stride=2, padding=1)
        return F.conv_transpose2d(x * self.weight_scale, w, self.bias, stride=2, padding=1)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, resample={self.resample}"
