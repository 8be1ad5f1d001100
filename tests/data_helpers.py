"""Hand-built inputs for the data-pipeline tests: image folders whose pixels say which sample they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sivae.launch.cli import main as sivae


def build_digits(out: Path, max_resolution: int, *options: str) -> Path:
    """scikit-learn's real 8x8 digits as an RGB data set with levels 4px to `max_resolution`
    (`options`: more `sivae data build` flags)."""
    code = sivae(["data", "build", "--source", "digits", "--out", str(out), "--max-resolution",
                  str(max_resolution), "--upsample", *options])  # fmt: skip
    assert code == 0, f"sivae data build gave {code}"
    return out


def identity_color(i: int) -> tuple[int, int, int]:
    """A colour unique to sample i (i < 256*256): red = i % 256, green = i // 256, blue = 200."""
    return i % 256, i // 256, 200


def identity_image(i: int, side: int) -> np.ndarray:
    """side x side: the left half sample i's colour, the right half white (so a flip shows)."""
    image = np.full((side, side, 3), 255, np.uint8)
    image[:, : side // 2] = identity_color(i)
    return image


def write_identity_folder(folder: Path, count: int, side: int) -> list[str]:
    """PNG files img_0000.png ... ; returns their sample keys (the file name with '.' made '_')."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(count):
        Image.fromarray(identity_image(i, side)).save(folder / f"img_{i:04d}.png")
        keys.append(f"img_{i:04d}_png")
    return keys


def sample_ids(images: np.ndarray) -> list[tuple[int, bool]]:
    """(sample i, flipped) for each uint8 [B, 3, R, R] image made by identity_image."""
    out = []
    for image in images:
        left, right = image[:, 0, 0], image[:, 0, -1]  # the channels of the top-left and top-right pixels
        flipped = bool((left == 255).all())  # no sample colour is white (blue is 200)
        color = right if flipped else left
        out.append((int(color[0]) + 256 * int(color[1]), flipped))
    return out
