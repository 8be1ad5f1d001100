"""Pure image functions: any decoded image -> square RGB uint8 -> every resolution level -> bytes.

Arrays are height x width x 3 uint8 (HWC) throughout; a level is the box (area) average of the
largest level, so every level is a function of that one image.
"""

from __future__ import annotations

import functools
import io
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

NonSquare = Literal["crop", "error"]
Encoding = Literal["npy", "png"]



class ImageProblem(ValueError):
    """An image that cannot be used as it is (the caller adds the file or key)."""


def resolution_levels(max_resolution: int) -> list[int]:
    """4, 8, ..., max_resolution (a power of two >= 4)."""
    if max_resolution < 4 or max_resolution & (max_resolution - 1):
        raise ValueError(f"max resolution must be a power of two >= 4, got {max_resolution}")
    return [1 << k for k in range(2, max_resolution.bit_length())]


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image as HWC uint8 RGB: EXIF rotation applied, transparency composited on white,
    grayscale repeated over the three channels, 16-bit grayscale reduced to its high byte."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L"):
        gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        image = white
    return np.asarray(image.convert("RGB"))


def check_geometry(width: int, height: int, resolution: int, non_square: NonSquare, upsample: bool) -> None:
    """ImageProblem unless an image of this size can become a resolution x resolution level as asked."""
    if width != height and non_square == "error":
        raise ImageProblem(f"is {width}x{height}, not square (pass --non-square crop to take the centre square)")
    side = min(width, height)
    if side < resolution and not upsample:
        raise ImageProblem(f"is {side}x{side}, smaller than {resolution}px (pass --upsample to enlarge it)")


def square(rgb: np.ndarray, non_square: NonSquare) -> np.ndarray:
    """The centred largest square of `rgb`, or ImageProblem when it is not square and that is an error."""
    height, width = rgb.shape[:2]
    if height == width:
        return rgb
    check_geometry(width, height, 0, non_square, upsample=False)
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return rgb[top : top + side, left : left + side]


def resize_box(rgb: np.ndarray, resolution: int, upsample: bool) -> np.ndarray:
    """Square `rgb` resized to resolution x resolution with a box (area) filter.

    Going up needs `upsample`; by an integer factor the box filter repeats pixels, so box-averaging
    back down gives the source exactly.
    """
    side = rgb.shape[0]
    if side == resolution:
        return rgb
    check_geometry(side, side, resolution, "error", upsample)
    return np.asarray(Image.fromarray(rgb).resize((resolution, resolution), Image.Resampling.BOX))


def box_downsample(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Each output pixel is the mean of a factor x factor block, rounded half up (exact integer arithmetic)."""
    if factor == 1:
        return rgb
    side = rgb.shape[0] // factor
    blocks = rgb.reshape(side, factor, side, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
    n = factor * factor
    return ((blocks + n // 2) // n).astype(np.uint8)


def pyramid(top: np.ndarray, resolutions: list[int]) -> dict[int, np.ndarray]:
    """Every level, each box-averaged straight from `top` (the largest, top.shape[0] == max(resolutions))."""
    side = top.shape[0]
    return {r: box_downsample(top, side // r) for r in resolutions}


def encode(rgb: np.ndarray, encoding: Encoding) -> bytes:
    buf = io.BytesIO()
    if encoding == "npy":
        np.save(buf, np.ascontiguousarray(rgb), allow_pickle=False)
    else:
        # Level 1: about as small as the default level here, several times faster to write.
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode(data: bytes, encoding: Encoding, resolution: int) -> np.ndarray:
    """Bytes written by `encode` -> (resolution, resolution, 3) uint8, or ImageProblem if they are not that."""
    if encoding == "npy":
        header = _npy_header(resolution)
        if len(data) != len(header) + resolution * resolution * 3 or not data.startswith(header):
            raise ImageProblem(f"is not a {resolution}x{resolution}x3 uint8 .npy array")
        return np.frombuffer(data, np.uint8, offset=len(header)).reshape(resolution, resolution, 3)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode != "RGB" or image.size != (resolution, resolution):
                width, height = image.size
                raise ImageProblem(f"is a {image.mode} {width}x{height} image, expected RGB {resolution}px")
            return np.asarray(image)
    except ImageProblem:
        raise
    except Exception as exc:  # PIL raises many types for broken data (OSError, SyntaxError, ValueError, ...)
        raise ImageProblem(f"does not decode as PNG: {exc}") from None


@functools.cache
def _npy_header(resolution: int) -> bytes:
    """The exact .npy header `encode` writes before a (resolution, resolution, 3) uint8 array."""
    size = resolution * resolution * 3
    return encode(np.zeros((resolution, resolution, 3), np.uint8), "npy")[:-size]
