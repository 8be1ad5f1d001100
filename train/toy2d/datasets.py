"""The four 2D densities of the study, sampled with an explicit generator.

8gaussians follows the reference code's own sampler (centres on a circle of radius 2, sigma 0.02,
everything divided by 1.414); the other three are the usual normalizing-flow toy samplers.
`half_range` is c: data, plots and metrics live on [-2c, 2c]^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Sampler = Callable[[int, torch.Generator], Tensor]


def eight_gaussians(n: int, gen: torch.Generator) -> Tensor:
    angles = torch.arange(8) * (math.pi / 4)
    centres = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    which = torch.randint(0, 8, (n,), generator=gen)
    points = centres[which] + 0.02 * torch.randn(n, 2, generator=gen)
    return points / 1.414


def two_spirals(n: int, gen: torch.Generator) -> Tensor:
    half = n // 2
    t = torch.sqrt(torch.rand(half, generator=gen)) * (540.0 * 2 * math.pi / 360.0)
    jitter_x, jitter_y = 0.5 * torch.rand(half, generator=gen), 0.5 * torch.rand(half, generator=gen)
    arm = torch.stack([-torch.cos(t) * t + jitter_x, torch.sin(t) * t + jitter_y], dim=1)
    points = torch.cat([arm, -arm], dim=0) / 3.0
    if n % 2:  # an odd request gets one more point from the first arm
        points = torch.cat([points, arm[:1] / 3.0], dim=0)
    return points + 0.1 * torch.randn(n, 2, generator=gen)


def checkerboard(n: int, gen: torch.Generator) -> Tensor:
    x1 = torch.rand(n, generator=gen) * 4 - 2
    x2 = torch.rand(n, generator=gen) - 2 * torch.randint(0, 2, (n,), generator=gen).float()
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1) * 2


def rings(n: int, gen: torch.Generator) -> Tensor:
    # Four concentric circles of radius 3, 2.25, 1.5, 0.75 with evenly spaced points,
    # resampled with replacement, plus Gaussian noise of sigma 0.08.
    per_ring = [n - 3 * (n // 4)] + [n // 4] * 3
    circles = []
    for radius, count in zip((1.0, 0.75, 0.5, 0.25), per_ring):
        angle = torch.linspace(0, 2 * math.pi, count + 1)[:-1]
        circles.append(radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1))
    points = 3.0 * torch.cat(circles, dim=0)
    points = points[torch.randint(0, n, (n,), generator=gen)]
    return points + 0.08 * torch.randn(n, 2, generator=gen)


SAMPLERS: dict[str, Sampler] = {
    "8gaussians": eight_gaussians,
    "2spirals": two_spirals,
    "checkerboard": checkerboard,
    "rings": rings,
}
HALF_RANGE = {"8gaussians": 1.0, "2spirals": 2.0, "checkerboard": 2.0, "rings": 2.0}
DATASETS = tuple(SAMPLERS)
