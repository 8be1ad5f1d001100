"""The progressive schedule in images seen, as pure functions.

Each level trains `fade_in_kimg` with blend ramping from 0 to 1, then `stable_kimg` at blend 1. The
ramp is the reference's sine ramp by default, blend = sin(pi t - pi/2) / 2 + 1/2 at fraction t of the
fade (slow at both ends: 0.15 a quarter of the way in), or linear (blend = t) as a config choice
(`train.fade_ramp`). The first level has nothing to fade in from and trains at blend 1 throughout.
The last level extends to the end of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from sivae.core.config import require

FadeRamp = Literal["sine", "linear"]
LEGACY_FADE_RAMP: FadeRamp = "linear"  # what a config stored before `train.fade_ramp` existed trained with


def fade_blend(fraction: float, ramp: FadeRamp) -> float:
    """The blend at `fraction` (0..1) of a fade-in."""
    t = min(1.0, max(0.0, fraction))
    if ramp == "sine":
        return math.sin(math.pi * t - math.pi / 2) / 2 + 0.5
    if ramp == "linear":
        return t
    raise ValueError(f"fade ramp must be one of {get_args(FadeRamp)}, got {ramp!r}")


def resolution_of(lod: int) -> int:
    """Image side length at level `lod`."""
    if lod < 0:
        raise ValueError(f"level must be >= 0, got {lod}")
    return 4 * 2**lod


def lod_of(resolution: int) -> int:
    """The level whose images are `resolution` pixels wide (a power of two >= 4)."""
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return resolution.bit_length() - 3


@dataclass
class LevelConfig:
    """One level of the progressive schedule, counted in thousands of images. Data that does not grow
    (2D points, point clouds) has one level with no resolution."""

    resolution: int | None = None
    fade_in_kimg: float = 0.0  # blend ramps 0 -> 1 over this many kimg after the level starts
    stable_kimg: float = 0.0  # then trains at blend = 1
    batch: int = 32  # global batch (all ranks, after gradient accumulation)
    lr: float = 2e-4
    beta_neg: float | None = None  # null: objective.beta_neg

    def __post_init__(self) -> None:
        r = self.resolution
        require(r is None or (4 <= r <= 1024 and r & (r - 1) == 0), "resolution",
                "must be a power of two in [4, 1024] (or null for data that does not grow)")
        require(self.fade_in_kimg >= 0 and self.stable_kimg >= 0, "stable_kimg", "kimg must be >= 0")
        require(self.batch > 0, "batch", "must be > 0")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.beta_neg is None or self.beta_neg >= 0, "beta_neg", "must be >= 0")


@dataclass(frozen=True)
class Position:
    level: int  # index into the schedule
    resolution: int | None  # None: data that does not grow
    lod: int | None  # log2(resolution) - 2: 0 = 4px, 8 = 1024px; None: the model's only (top) level
    blend: float
    level_start_kimg: float
    config: LevelConfig


def level_starts(levels: list[LevelConfig]) -> list[float]:
    """kimg at which each level begins."""
    starts, at = [], 0.0
    for level in levels:
        starts.append(at)
        at += level.fade_in_kimg + level.stable_kimg
    return starts


def schedule_kimg(levels: list[LevelConfig]) -> float:
    return sum(level.fade_in_kimg + level.stable_kimg for level in levels)


def position(levels: list[LevelConfig], kimg: float, ramp: FadeRamp = "sine") -> Position:
    """Where in the schedule a run stands after `kimg` thousand images (fading in by `ramp`)."""
    starts = level_starts(levels)
    index = max(i for i, start in enumerate(starts) if start <= kimg)
    level, start = levels[index], starts[index]
    if index == 0 or level.fade_in_kimg == 0:
        blend = 1.0
    else:
        blend = fade_blend((kimg - start) / level.fade_in_kimg, ramp)
    lod = None if level.resolution is None else lod_of(level.resolution)
    return Position(index, level.resolution, lod, blend, start, level)
