"""Point clouds: a built point-cloud data set (one level: its points per shape), shown as rendered clouds.

Batches are float32 [B, N, 3] streamed from the shards in the same exactly resumable order as images
(never flipped); nothing fades (the networks do not grow). Sample grids are rendered PNGs of prior
samples and of test shapes above their reconstructions (core.points.point_cloud_grid); a few samples
also go to TensorBoard's 3D view.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import torch
from torch import Tensor

from sivae.core.config import ConfigError
from sivae.core.points import point_cloud_grid
from sivae.core.schedule import Position
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.loader import TrainStream, eval_batches
from sivae.data_pipeline.manifest import Manifest, load_manifest
from sivae.models.base import VAE
from sivae.train.modality import HostBatch, SampleWriter, StreamPlace

SAMPLES = 32  # generated clouds per grid (from fixed z)
RECONSTRUCTIONS = 8  # test clouds per reconstruction grid
TENSORBOARD_CLOUDS = 4  # samples shown in TensorBoard's 3D view


class PointModality:
    def __init__(self, cfg, device: torch.device):
        self.data, self.points, self.device = cfg.data, cfg.model.points, device
        if cfg.train.schedule[0].resolution is not None:
            raise ConfigError("train.schedule", "point clouds have one level without a resolution: "
                                                "leave `resolution` out")

    @cached_property
    def manifest(self) -> Manifest:
        return load_manifest(self.data.path)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def check(self) -> None:
        """Refuse, before any work, a data set that is not point clouds of the model's size."""
        if self.manifest.kind != "points":
            raise DataError(f"holds {self.manifest.kind}, but data.kind is points: build it with "
                            "`sivae data build --source shapes3d` or `--source points:DIR`", self.data.path)
        try:
            self.manifest.check("train", self.points)
        except DataError as exc:
            raise DataError(f"{exc.message}; model.points is {self.points} (rebuild with --points {self.points})",
                            exc.source) from None

    def stream(self, pos: Position, place: StreamPlace) -> Iterator[HostBatch]:
        d = self.data
        stream = TrainStream(d.path, self.points, place.per_device_batch, rank=place.rank,
                             world_size=place.world_size, seed=place.seed, start_batch=place.start_batch,
                             workers=d.workers, shuffle_buffer=d.shuffle_buffer, flip=False,
                             pin_memory=self.device.type == "cuda")  # fmt: skip
        return (HostBatch(batch.images, batch.skipped) for batch in stream)

    def model_input(self, batch: HostBatch, pos: Position) -> Tensor:
        return batch.data.to(self.device, non_blocking=True)

    def write_samples(self, model: VAE, pos: Position, images: int, logger: SampleWriter) -> None:
        """Samples from fixed z, and fixed test shapes (train shapes without a test split) above their
        reconstructions (decoded posterior means)."""
        z = torch.randn(SAMPLES, model.latent_dim, device=self.device)
        samples = model.decode(z)
        logger.write_image("samples", point_cloud_grid(samples, columns=8), images)
        logger.write_point_clouds("samples_3d", samples[:TENSORBOARD_CLOUDS], images)
        split, tag = ("test", "reconstructions") if self.manifest.split_sizes.get("test") else \
            ("train", "reconstructions_of_train_shapes")
        x = self.spread_shapes(split).to(self.device)
        if len(x):
            mu, _ = model.encode(x)
            pairs = torch.cat([x, model.decode(mu)])
            logger.write_image(tag, point_cloud_grid(pairs, columns=len(x)), images)

    def spread_shapes(self, split: str) -> Tensor:
        """RECONSTRUCTIONS readable shapes evenly spaced over the split (its shards hold a class after
        another: the first few would all be one class)."""
        stride = max(1, self.manifest.split_sizes[split] // RECONSTRUCTIONS)
        shown, position = [], 0
        for batch in eval_batches(self.data.path, split, self.points, 64):
            for cloud, valid in zip(batch.images, batch.valid.tolist()):
                if valid and position % stride == 0 and len(shown) < RECONSTRUCTIONS:
                    shown.append(cloud)
                position += 1
        return torch.stack(shown) if shown else torch.zeros(0, self.points, 3)
