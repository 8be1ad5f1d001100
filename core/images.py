"""Image grids for people: tensors in [-1, 1] -> uint8 grids -> PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sivae.core.fileio import atomic_write_bytes


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 [0, 255], rounded (the quantisation before FID features: what saved PNGs would hold)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def grid(images: Tensor, columns: int, pad: int = 2) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> one HxWx3 uint8 array, row-major, white padding."""
    images = to_uint8(images.detach().cpu())
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    rows = -(-n // columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images.permute(0, 2, 3, 1).numpy()):
        r, col = divmod(i, columns)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    return out


def save_png(array: np.ndarray, path: str | Path, upscale_to: int = 0) -> Path:
    """Save an HxWx3 uint8 array as PNG (atomically); small grids are enlarged with nearest
    neighbours so 16px samples stay visible."""
    image = Image.fromarray(array)
    if upscale_to and max(image.size) < upscale_to:
        factor = max(1, upscale_to // max(image.size))
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
