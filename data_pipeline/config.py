"""The `data:` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass

from sivae.core.config import require


@dataclass
class DataConfig:
    # the kind of data, which decides how the trainer streams, fades and shows it (sivae.train.modality):
    # "images" (a built data set at `path`) or "toy2d" (a procedural 2D density named by `dataset`)
    kind: str = "images"
    path: str = "data/emoji"  # a built data set: the directory holding manifest.json
    dataset: str = ""  # procedural kinds: which generator
    workers: int = 2  # loader worker processes per rank
    shuffle_buffer: int = 1000
    flip: bool = True  # random horizontal flip of training images

    def __post_init__(self) -> None:
        require(self.workers >= 0, "workers", "must be >= 0")
        require(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
