"""Progressive growing: levels of detail, the resampling between them, and the fade-in of real images.

Level `lod` works on images of `4 * 2**lod` pixels (lod 0 = 4px, 6 = 256px, 8 = 1024px). While a
new level fades in, its blend rises from 0 to 1: the networks mix the new level's path with the
previous level's, and the real images are mixed the same way, so that at blend = 0
everything is the previous level's function seen through nearest-neighbour upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sivae.core.schedule import lod_of, resolution_of

__all__ = ["downsample", "fade_real_images", "lod_of", "parameters_unused_at", "resolution_of", "upsample"]


def downsample(x: Tensor) -> Tensor:
    """Halve the resolution by 2x2 averaging (how lower levels see the data)."""
    return F.avg_pool2d(x, 2)


def upsample(x: Tensor) -> Tensor:
    """Double the resolution by pixel repetition (how a lower level's output is shown at the next one)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def fade_real_images(x: Tensor, blend: float) -> Tensor:
    """Real images as the trainer feeds them during a fade-in: lerp(upsample(downsample(x)), x, blend).

    At blend = 1 this is x itself (no work is done); at blend = 0 it carries only the previous
    level's detail.
    """
    if blend >= 1.0:
        return x
    return torch.lerp(upsample(downsample(x)), x, float(blend))


def parameters_unused_at(network: nn.Module, lod: int, blend: float, *, blocks: str, rgb: str) -> set[str]:
    """Names of the parameters of a progressive network that a forward pass at (lod, blend) leaves
    without gradient: the blocks above `lod` (ModuleList `blocks`, one per level) and the RGB layers
    (ModuleList `rgb`) of every level but `lod`, and `lod - 1` while it fades in. Data parallelism
    reduces only the others."""
    rgb_used = {lod, lod - 1} if lod > 0 and blend < 1.0 else {lod}
    unused = set()
    for name, _ in network.named_parameters():
        head, _, rest = name.partition(".")
        level = int(rest.split(".")[0]) if head in (blocks, rgb) else None
        if (head == blocks and level > lod) or (head == rgb and level not in rgb_used):
            unused.add(name)
    return unused
