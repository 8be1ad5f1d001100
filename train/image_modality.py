"""Images: built WebDataset shards per level, faded in at level switches, shown as PNG grids."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import torch
from torch import Tensor

from sivae.core.images import grid
from sivae.core.schedule import Position
from sivae.data_pipeline.loader import TrainStream, eval_batches, to_unit_range
from sivae.data_pipeline.manifest import Manifest, load_manifest
from sivae.models.base import VAE
from sivae.models.progressive import fade_real_images
from sivae.train.modality import HostBatch, SampleWriter, StreamPlace

SAMPLES = 32  # generated images per grid (from fixed z)
RECONSTRUCTIONS = 16  # test images per reconstruction grid


class ImageModality:
    def __init__(self, cfg, device: torch.device):
        self.data, self.train_cfg, self.device = cfg.data, cfg.train, device

    @cached_property
    def manifest(self) -> Manifest:
        return load_manifest(self.data.path)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def check(self) -> None:
        """Refuse, before any work, a data set that lacks a level of the schedule."""
        for level in self.train_cfg.schedule:
            self.manifest.check("train", level.resolution)

    def stream(self, pos: Position, place: StreamPlace) -> Iterator[HostBatch]:
        d, cuda = self.data, self.device.type == "cuda"
        stream = TrainStream(d.path, pos.resolution, place.per_device_batch, rank=place.rank,
                             world_size=place.world_size, seed=place.seed, start_batch=place.start_batch,
                             workers=d.workers, shuffle_buffer=d.shuffle_buffer, flip=d.flip, as_uint8=cuda,
                             pin_memory=cuda)  # fmt: skip
        return (HostBatch(batch.images, batch.skipped) for batch in stream)

    def model_input(self, batch: HostBatch, pos: Position) -> Tensor:
        # for a GPU, uint8 leaves the loader (pinned: a quarter of the float bytes, copied asynchronously) and
        # becomes [-1, 1] floats there; on the CPU the loader converts as it hands the batch over (the same bits)
        x = batch.data.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = to_unit_range(x)
        if self.train_cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return fade_real_images(x, pos.blend)

    def write_samples(self, model: VAE, pos: Position, images: int, logger: SampleWriter) -> None:
        """Samples from fixed z, and fixed test images (train images without a test split) above their
        reconstructions."""
        z = torch.randn(SAMPLES, model.latent_dim, device=self.device)
        logger.write_image("samples", grid(model.decode(z, pos.lod, pos.blend), columns=8), images)
        # a data set built with --test-fraction 0 (FFHQ for FID) shows the first train images instead, said in the tag
        split, tag = ("test", "reconstructions") if self.manifest.split_sizes.get("test") else \
            ("train", "reconstructions_of_train_images")
        shown = next(iter(eval_batches(self.data.path, split, pos.resolution, RECONSTRUCTIONS)), None)
        if shown is not None and bool(shown.valid.any()):
            x = fade_real_images(shown.images[shown.valid].to(self.device), pos.blend)  # as the model sees them
            mu, _ = model.encode(x, pos.lod, pos.blend)
            pairs = torch.cat([x, model.decode(mu, pos.lod, pos.blend)])
            logger.write_image(tag, grid(pairs, columns=max(1, len(x))), images)
