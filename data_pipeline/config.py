"""The `data:` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass

from sivae.core.config import require


@dataclass
class DataConfig:
    # the kind of data, which decides how the trainer streams, fades and shows it (sivae.train.modality):
    # "images" (a built data set at `path`), "points" (a built point-cloud data set at `path`, e.g. from
    # `sivae data build --source shapes3d`) or "toy2d" (a procedural 2D density named by `dataset`)
    kind: str = "images"
    path: str = "data/emoji"  # a built data set: the directory holding manifest.json
    dataset: str = ""  # procedural kinds: which generator
    # loader worker processes per rank; 0 decodes in the training process. None (the default): from the CPUs
    # this process may use, shared by the node's ranks (LOCAL_WORLD_SIZE), one left to each rank's main
    # process, at most 8 (sivae.data_pipeline.loader.auto_workers). The training order does not depend on
    # that choice: it is the order an explicit `workers: 2` gives, so runs resume exactly on other machines.
    workers: int | None = None
    shuffle_buffer: int = 1000
    flip: bool = True  # random horizontal flip of training images (point clouds are never flipped)

    def __post_init__(self) -> None:
        require(self.workers is None or self.workers >= 0, "workers", "must be >= 0 or null (automatic)")
        require(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
