"""2D points from a procedural density: the 2D study's data as a trainer modality.

Batches are drawn, not read: batch b of rank r comes from a generator seeded by (level seed, global
batch number), so a resumed run draws what a straight run would, at any world size. Nothing fades
(the MLP does not grow); the samples are a scatter plot of decoded prior samples.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from sivae.core.config import ConfigError
from sivae.core.schedule import Position
from sivae.models.base import VAE
from sivae.train.modality import HostBatch, SampleWriter, StreamPlace
from sivae.train.toy2d.datasets import HALF_RANGE, SAMPLERS

PLOTTED_SAMPLES = 5_000


def batch_generator(seed: int, global_batch: int) -> torch.Generator:
    key = np.random.SeedSequence([seed, global_batch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(key[0]) << 32 | int(key[1]))


class Toy2DModality:
    def __init__(self, cfg, device: torch.device):
        self.dataset, self.device = cfg.data.dataset, device

    @property
    def digest(self) -> str:
        return f"toy2d:{self.dataset}"

    def check(self) -> None:
        if self.dataset not in SAMPLERS:
            raise ConfigError("data.dataset", f"unknown 2D density {self.dataset!r}; known: {', '.join(SAMPLERS)}")

    def stream(self, pos: Position, place: StreamPlace) -> Iterator[HostBatch]:
        self.check()
        sampler, b = SAMPLERS[self.dataset], place.start_batch
        while True:
            global_batch = b * place.world_size + place.rank
            yield HostBatch(sampler(place.per_device_batch, batch_generator(place.seed, global_batch)))
            b += 1

    def model_input(self, batch: HostBatch, pos: Position) -> Tensor:
        return batch.data.to(self.device, non_blocking=True)

    def write_samples(self, model: VAE, pos: Position, images: int, logger: SampleWriter) -> None:
        from sivae.train.toy2d.plots import scatter_array  # matplotlib: only when a plot is drawn

        z = torch.randn(PLOTTED_SAMPLES, model.latent_dim, device=self.device)
        points = model.decode(z).float().cpu().numpy()
        kimg = images / 1000
        logger.write_image("samples", scatter_array(points, HALF_RANGE[self.dataset], f"kimg {kimg:g}", "tab:green"),
                           images)  # fmt: skip
