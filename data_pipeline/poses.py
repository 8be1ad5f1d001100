"""`emoji-poses`: every emoji glyph under the same K seeded poses, so each (identity, pose) pair exists.

A pose is a rotation about the image centre, a scale and (optionally) a shift, drawn once for the
whole data set from a fixed grid with a seeded generator: pose j is the same transform for every
identity, so the ground truth of "identity i in the pose of image j" is a sample of the data set.
Each sample's metadata (a KEY.json member: identity, pose index, angle, scale, shift) is for
evaluation only; the training stream reads images alone. The split is by identity: the test split
holds the glyphs of a hashed fraction of the identities, never seen in training.

Command-line form: `emoji-poses[:key=value,...]` with poses (K, default 8), test (the fraction of
identities held out, default 0.1), identities (how many glyphs, evenly spaced over the font's; default
all), position (1: shifts too), seed (the pose draw) and font (a .ttf path).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.sources import DEFAULT_EMOJI_FONT, EmojiSource, Source, SourceItem

# the grid poses are drawn from: rotations in degrees, scales, shifts as fractions of the side
ANGLES = tuple(np.linspace(-90.0, 90.0, 9).tolist())
SCALES = (0.55, 0.7, 0.85, 1.0)
SHIFTS = (-0.15, 0.0, 0.15)
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Pose:
    angle: float  # degrees, counter-clockwise
    scale: float
    shift: tuple[float, float] = (0.0, 0.0)  # (right, down) as fractions of the side

    def as_meta(self) -> dict[str, Any]:
        return {"angle": self.angle, "scale": self.scale, "shift": list(self.shift)}


def pose_grid(count: int, seed: int, position: bool) -> list[Pose]:
    """`count` distinct poses drawn from the grid by a generator seeded with `seed`, in draw order."""
    shifts = list(itertools.product(SHIFTS, SHIFTS)) if position else [(0.0, 0.0)]
    grid = [Pose(a, s, d) for a in ANGLES for s in SCALES for d in shifts]
    if not 1 <= count <= len(grid):
        raise DataError(f"emoji-poses: poses must be in [1, {len(grid)}] for this grid, got {count}")
    return [grid[i] for i in np.random.default_rng(seed).choice(len(grid), size=count, replace=False)]


def render_pose(image: np.ndarray, pose: Pose) -> np.ndarray:
    """HWC uint8 RGB on white -> the same image rotated, scaled and shifted about its centre (bilinear),
    the uncovered area white."""
    height, width = image.shape[:2]
    # PIL's affine transform maps each output point to the input point it samples:
    # in = c + R(-angle) (out - c - shift) / scale, in pixel coordinates (y down)
    # rounded so that quarter turns are exact (cos 90 degrees is 6e-17 in floating point, not 0)
    theta = math.radians(pose.angle)
    cos, sin = round(math.cos(theta), 12) / pose.scale, round(math.sin(theta), 12) / pose.scale
    cx, cy = width / 2.0, height / 2.0
    tx, ty = cx + pose.shift[0] * width, cy + pose.shift[1] * height
    a, b, d, e = cos, -sin, sin, cos
    matrix = (a, b, cx - a * tx - b * ty, d, e, cy - d * tx - e * ty)
    out = Image.fromarray(image).transform((width, height), Image.Transform.AFFINE, matrix,
                                           resample=Image.Resampling.BILINEAR, fillcolor=WHITE)  # fmt: skip
    return np.asarray(out)


def _test_identities(keys: list[str], fraction: float) -> set[str]:
    by_hash = sorted(keys, key=lambda k: hashlib.sha256(k.encode()).digest())
    return set(by_hash[: round(fraction * len(keys))])


@dataclass
class EmojiPosesSource(Source):
    """Each glyph of an emoji font (128 x 128 on white) under each of the data set's poses."""

    font: Path = DEFAULT_EMOJI_FONT
    poses: int = 8
    test: float = 0.1
    identities: int | None = None
    position: bool = False
    seed: int = 0
    native_size: int | None = EmojiSource.native_size

    def __post_init__(self) -> None:
        if not 0.0 <= self.test < 1.0:
            raise DataError(f"emoji-poses: test must be in [0, 1), got {self.test}")
        if self.identities is not None and self.identities < 1:
            raise DataError(f"emoji-poses: identities must be >= 1, got {self.identities}")
        self.glyphs = EmojiSource(self.font)
        self.pose_list = pose_grid(self.poses, self.seed, self.position)

    @property
    def spec(self) -> str:
        parts = [f"poses={self.poses}", f"test={self.test}", f"position={int(self.position)}", f"seed={self.seed}"]
        if self.identities is not None:
            parts.append(f"identities={self.identities}")
        if self.font != DEFAULT_EMOJI_FONT:
            parts.append(f"font={self.font}")
        return "emoji-poses:" + ",".join(parts)

    def items(self) -> list[SourceItem]:
        glyphs = self.glyphs.items()
        if self.identities is not None:
            step = max(1, len(glyphs) // self.identities)
            glyphs = glyphs[::step][: self.identities]
        held_out = _test_identities([g.key for g in glyphs], self.test)
        out = []
        for index, glyph in enumerate(glyphs):
            split = "test" if glyph.key in held_out else "train"
            for j, pose in enumerate(self.pose_list):
                meta = {"identity": glyph.key, "identity_index": index, "codepoint": glyph.ref, "pose": j,
                        **pose.as_meta()}  # fmt: skip
                out.append(SourceItem(key=f"{glyph.key}_p{j:03d}", ref=(glyph.ref, j), split=split, meta=meta))
        return out

    def load(self, ref: tuple[int, int]) -> np.ndarray:
        codepoint, j = ref
        return render_pose(self.glyphs.load(codepoint), self.pose_list[j])

    def render(self, meta: dict[str, Any]) -> np.ndarray:
        """A sample's image at the source's size rendered again from its metadata alone."""
        pose = Pose(meta["angle"], meta["scale"], tuple(meta["shift"]))
        return render_pose(self.glyphs.load(meta["codepoint"]), pose)

    def where(self, item: SourceItem) -> str:
        return f"{self.font} glyph U+{item.ref[0]:04X} pose {item.ref[1]}"


def parse_poses_spec(arg: str) -> EmojiPosesSource:
    """The `key=value,...` after `emoji-poses:` -> the source (unknown keys and bad values refused)."""
    converters = {"poses": int, "test": float, "identities": int, "position": lambda v: bool(int(v)),
                  "seed": int, "font": Path}  # fmt: skip
    options: dict[str, Any] = {}
    for part in filter(None, arg.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in converters:
            raise DataError(f"emoji-poses: bad option {part!r}; use key=value with keys {', '.join(converters)}")
        try:
            options[key] = converters[key](value)
        except ValueError:
            raise DataError(f"emoji-poses: {key}={value!r} is not a valid value") from None
    return EmojiPosesSource(**options)
