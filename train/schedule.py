"""The progressive schedule in images seen (DESIGN.md 3), as pure functions.

Each level trains `fade_in_kimg` with blend ramping linearly from 0 to 1 (the reference's ramp
over the first half of a level), then `stable_kimg` at blend 1. The first level has nothing to
fade in from and trains at blend 1 throughout. The last level extends to the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.progressive import lod_of
from train.schema import LevelConfig


@dataclass(frozen=True)
class Position:
    level: int  # index into the schedule
    resolution: int
    lod: int  # log2(resolution) - 2: 0 = 4px, 8 = 1024px
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


def position(levels: list[LevelConfig], kimg: float) -> Position:
    """Where in the schedule a run stands after `kimg` thousand images."""
    starts = level_starts(levels)
    index = max(i for i, start in enumerate(starts) if start <= kimg)
    level, start = levels[index], starts[index]
    if index == 0 or level.fade_in_kimg == 0:
        blend = 1.0
    else:
        blend = min(1.0, (kimg - start) / level.fade_in_kimg)
    return Position(index, level.resolution, lod_of(level.resolution), blend, start, level)
