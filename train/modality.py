"""The trainer's seam to a kind of data: how batches are streamed, made into model inputs and shown.

The loop (sivae.train.trainer) knows only this interface. A `Modality` is chosen by the run config's
`data.kind` from `MODALITIES`; a new kind of data (point clouds, say) is one module that implements it
and one line here, and the loop, the steps and the backends stay as they are.

- `check()`: refuse, before the first iteration, data the run cannot read (every level, every split).
- `stream(...)`: the training batches of one level for one rank, positioned by batch count, so a
  resumed run (at any world size) sees exactly what a straight run would. Host tensors; each batch
  says how many unreadable samples it replaced.
- `model_input(batch, pos)`: the batch on the device as the networks take it at the current level
  (images: converted, faded in; points: as they are).
- `write_samples(model, pos, images, logger)`: what a person looks at during training (grids of
  samples and reconstructions, scatter plots), drawn from the EMA model on the trainer's fixed seed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from sivae.core.config import ConfigError
from sivae.core.schedule import Position
from sivae.models.base import VAE


@dataclass(frozen=True)
class StreamPlace:
    """Where a training stream starts: its level, this rank's batch size and share, and its position."""

    per_device_batch: int
    rank: int
    world_size: int
    seed: int  # the level's data seed: the same for every rank, different per level and rollback
    start_batch: int  # per-rank batches already consumed at this level


@dataclass(frozen=True)
class HostBatch:
    data: Tensor  # on the host, in the form the data stores it
    skipped: int = 0  # unreadable samples replaced in this batch


class SampleWriter(Protocol):
    def write_image(self, tag: str, array, images: int) -> None: ...

    def write_point_clouds(self, tag: str, points: Tensor, images: int) -> None: ...


class Modality(Protocol):
    digest: str  # identifies the data trained on (a change between resumes is reported)

    def check(self) -> None: ...

    def stream(self, pos: Position, place: StreamPlace) -> Iterator[HostBatch]: ...

    def model_input(self, batch: HostBatch, pos: Position) -> Tensor: ...

    def write_samples(self, model: VAE, pos: Position, images: int, logger: SampleWriter) -> None: ...


# data.kind -> "module:class"; imported when a run asks for it
MODALITIES = {
    "images": "sivae.train.image_modality:ImageModality",
    "toy2d": "sivae.train.toy2d.modality:Toy2DModality",
    "points": "sivae.train.point_modality:PointModality",
}


def make_modality(cfg, device: torch.device) -> Modality:
    """The modality of `cfg.data.kind`, for a run config `cfg`, placing model inputs on `device`."""
    target = MODALITIES.get(cfg.data.kind)
    if target is None:
        raise ConfigError("data.kind", f"unknown kind {cfg.data.kind!r}; known: {', '.join(sorted(MODALITIES))}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(cfg, device)
