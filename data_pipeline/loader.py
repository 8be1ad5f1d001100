"""Loaders over a built data set: an endless, exactly resumable training stream and an evaluation pass.

Training order (what makes resume exact). Each rank runs `streams = max(workers, 1)` independent
sample streams. Stream w of rank r is a sequence of blocks: block b draws, from an RNG seeded by
(seed, resolution, r, w, b), one shard (weighted by its sample count: shards are shared, with
replacement, so any number of shards serves any number of ranks x workers), a permutation of its
samples, a flip bit per sample and a shuffle-buffer slot per sample. Samples pass through a shuffle
buffer of fixed capacity (a sample entering takes a slot, the sample there leaves), and every
`batch_size` leaving samples form the stream's next local batch. Global batch k is local batch
k // streams of stream k % streams: the round-robin order in which torch's DataLoader returns the
batches of its workers. All of that is computed on sample numbers from the manifest's shard counts,
so starting at batch k replays the order up to k without reading or decoding any image.

Unreadable samples. A sample that cannot be read (truncated shard, corrupt bytes) leaves a hole in
its batch; the hole is filled by samples drawn at random from an RNG seeded by (seed, resolution,
rank, stream, local batch), and the batch reports how many samples it skipped. A batch therefore
depends only on its own position, never on holes in earlier batches, and resume stays exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.errors import DataError
from data_pipeline.images import Encoding
from data_pipeline.manifest import ShardInfo, load_manifest
from data_pipeline.shards import ShardReader

_BLOCK, _REFILL = 0, 1  # RNG domains
_MAX_REFILL_DRAWS = 1000  # per batch: past that the data set is essentially unreadable


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # [B, 3, R, R] float32 in [-1, 1] (uint8 in 0..255 with as_uint8)
    skipped: int  # unreadable samples met (and replaced) while making this batch


class EvalBatch(NamedTuple):
    images: torch.Tensor  # [B, 3, R, R] float32 in [-1, 1] (uint8 in 0..255 with as_uint8); zeros where invalid
    valid: torch.Tensor  # bool [B]: False for padding and for unreadable samples
    keys: list[str]  # sample keys; "" for padding


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float32 in [-1, 1] (exactly -1 and 1 at the ends); works on any device."""
    return images.to(torch.float32).sub_(127.5).div_(127.5)


# ---------------------------------------------------------------------------------------------
# The training order, on sample numbers only


@dataclass(frozen=True)
class TrainOrder:
    """Everything that fixes a rank's sample order; see the module docstring."""

    counts: tuple[int, ...]  # samples per shard
    seed: int
    resolution: int
    rank: int
    streams: int
    batch_size: int
    shuffle_buffer: int
    flip: bool

    def rng(self, domain: int, stream: int, number: int) -> np.random.Generator:
        entropy = [self.seed, self.resolution, self.rank, stream, domain, number]
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))

    @property
    def weights(self) -> np.ndarray:
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / counts.sum()


def pack(shard: int, sample: int, flip: int) -> int:
    return (shard << 33) | (sample << 1) | flip


def unpack(item: int) -> tuple[int, int, int]:
    return item >> 33, (item >> 1) & 0xFFFFFFFF, item & 1


def stream_samples(order: TrainOrder, stream: int) -> Iterator[int]:
    """The endless sequence of packed (shard, sample, flip) leaving the shuffle buffer of one stream."""
    buffer: list[int] = []
    capacity = order.shuffle_buffer
    for block in itertools.count():
        rng = order.rng(_BLOCK, stream, block)
        shard = int(rng.choice(len(order.counts), p=order.weights))
        n = order.counts[shard]
        samples = rng.permutation(n).astype(np.int64)
        flips = rng.integers(0, 2, n) if order.flip else np.zeros(n, np.int64)
        slots = rng.integers(0, capacity, n)
        for item, slot in zip(((shard << 33) | (samples << 1) | flips).tolist(), slots.tolist()):
            if len(buffer) < capacity:
                buffer.append(item)
            else:
                buffer[slot], item = item, buffer[slot]
                yield item


def local_batches(order: TrainOrder, stream: int, start: int = 0) -> Iterator[list[int]]:
    """The stream's local batches of packed samples, from local batch `start` (earlier ones skipped unread)."""
    samples = stream_samples(order, stream)
    skip = start * order.batch_size
    next(itertools.islice(samples, skip, skip), None)  # advance without keeping anything
    while True:
        yield list(itertools.islice(samples, order.batch_size))


def stream_of_batch(batch: int, streams: int) -> tuple[int, int]:
    """Global batch number -> (stream, local batch number)."""
    return batch % streams, batch // streams


# ---------------------------------------------------------------------------------------------
# Making batches from sample numbers


def _put(reader: ShardReader, out: np.ndarray, slot: int, shard: int, sample: int, flip: int) -> bool:
    image = reader.read(shard, sample)
    if image is None:
        return False
    out[slot] = (image[:, ::-1] if flip else image).transpose(2, 0, 1)  # HWC -> CHW, flipped in the same copy
    return True


def _finish(out: np.ndarray) -> torch.Tensor:
    if out.dtype == np.float32:
        out /= 127.5
        out -= 1.0
    return torch.from_numpy(out)


def _empty(batch: int, resolution: int, as_uint8: bool) -> np.ndarray:
    return np.empty((batch, 3, resolution, resolution), np.uint8 if as_uint8 else np.float32)


def train_batch(reader: ShardReader, order: TrainOrder, stream: int, local: int, items: list[int],
                as_uint8: bool) -> tuple[torch.Tensor, int]:
    """One local batch: the images of `items`, holes refilled (see the module docstring); (images, skipped)."""
    out = _empty(len(items), order.resolution, as_uint8)
    holes = [slot for slot, item in enumerate(items) if not _put(reader, out, slot, *unpack(item))]
    skipped = len(holes)
    if holes:
        rng = order.rng(_REFILL, stream, local)
        draws = 0
        for slot in holes:
            while True:
                if draws == _MAX_REFILL_DRAWS:
                    where = reader.shards[0].path.parent
                    raise DataError(f"{draws} random samples in a row were unreadable: the data set is broken", where)
                draws += 1
                shard = int(rng.choice(len(order.counts), p=order.weights))
                sample, flip = int(rng.integers(order.counts[shard])), int(order.flip and rng.integers(2))
                if _put(reader, out, slot, shard, sample, flip):
                    break
                skipped += 1
    return _finish(out), skipped


def _open_shards(data_dir: str | Path, split: str, resolution: int) -> tuple[list[ShardInfo], Encoding]:
    manifest = load_manifest(data_dir)
    shards = manifest.shards(split, resolution)
    missing = [s.path for s in shards if not s.path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} shard file(s) listed in the manifest are missing, e.g. {missing[0]}",
                        manifest.root)
    return shards, manifest.encoding(resolution)


# ---------------------------------------------------------------------------------------------
# The training stream


class _TrainDataset(IterableDataset):
    """What each DataLoader worker runs: the batches of one stream, from where that stream resumes."""

    def __init__(self, order: TrainOrder, shards: list[ShardInfo], encoding: Encoding, start_batch: int,
                 as_uint8: bool):
        self.order, self.shards, self.encoding = order, shards, encoding
        self.start_batch, self.as_uint8 = start_batch, as_uint8

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        # The DataLoader asks worker 0 first; it serves global batch start_batch, worker 1 the next, ...
        stream, local = stream_of_batch(self.start_batch + (info.id if info else 0), self.order.streams)
        reader = ShardReader(self.shards, self.encoding, self.order.resolution)
        for items in local_batches(self.order, stream, local):
            yield train_batch(reader, self.order, stream, local, items, self.as_uint8)
            local += 1


class TrainStream:
    """Endless training batches of one rank, a pure function of the arguments (bar the device).

    Iterating yields `Batch(images, skipped)`. `start_batch=k` yields exactly the batches the stream
    started at 0 yields from its k-th on: to resume, pass the number of batches this rank has taken
    from a stream with the same other arguments. `workers=0` and `workers=1` give the same stream.
    Each `iter()` starts again at `start_batch`.
    """

    def __init__(self, data_dir: str | Path, resolution: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, start_batch: int = 0, workers: int = 2,
                 shuffle_buffer: int = 1000, flip: bool = True, split: str = "train", as_uint8: bool = False,
                 pin_memory: bool = False):
        limits = {"batch_size": (batch_size, 1), "world_size": (world_size, 1), "workers": (workers, 0),
                  "shuffle_buffer": (shuffle_buffer, 1), "start_batch": (start_batch, 0)}
        for name, (value, low) in limits.items():
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.shards, self.encoding = _open_shards(data_dir, split, resolution)
        self.order = TrainOrder(
            counts=tuple(s.count for s in self.shards), seed=seed, resolution=resolution, rank=rank,
            streams=max(workers, 1), batch_size=batch_size, shuffle_buffer=shuffle_buffer, flip=flip,
        )
        self.workers, self.start_batch, self.as_uint8, self.pin_memory = workers, start_batch, as_uint8, pin_memory

    def __iter__(self) -> Iterator[Batch]:
        dataset = _TrainDataset(self.order, self.shards, self.encoding, self.start_batch, self.as_uint8)
        if self.workers == 0:
            batches: Iterator[tuple[torch.Tensor, int]] = iter(dataset)
        else:
            batches = iter(DataLoader(dataset, batch_size=None, num_workers=self.workers, pin_memory=self.pin_memory))
        for images, skipped in batches:
            yield Batch(images, int(skipped))


# ---------------------------------------------------------------------------------------------
# The evaluation pass


Plan = list[list[tuple[int, int] | None]]  # batches of (shard, sample); None pads


def eval_plan(counts: list[int], batch_size: int, rank: int, world_size: int) -> Plan:
    """This rank's batches of (shard, sample), None for padding.

    Rank r takes the r-th contiguous part of the split (sizes differ by at most one); every rank
    gets ceil(ceil(N / world_size) / batch_size) batches, so collective ops line up.
    """
    total = sum(counts)
    starts = np.cumsum([0, *counts])
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    positions = np.arange(lo, hi)
    shard_of = np.searchsorted(starts, positions, side="right") - 1
    samples: list[tuple[int, int] | None] = [(int(s), int(p - starts[s])) for s, p in zip(shard_of, positions)]
    n_batches = max(1, math.ceil(math.ceil(total / world_size) / batch_size))
    samples += [None] * (n_batches * batch_size - len(samples))
    return [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]


def eval_batch(reader: ShardReader, plan: list[tuple[int, int] | None], as_uint8: bool) -> EvalBatch:
    out = _empty(len(plan), reader.resolution, as_uint8)
    valid = np.zeros(len(plan), bool)
    keys = []
    for slot, entry in enumerate(plan):
        if entry is None:
            keys.append("")
        else:
            keys.append(reader.key(*entry))
            valid[slot] = _put(reader, out, slot, *entry, 0)
    images, mask = _finish(out), torch.from_numpy(valid)
    images[~mask] = 0
    return EvalBatch(images, mask, keys)


class _EvalDataset(IterableDataset):
    def __init__(self, plan: Plan, shards: list[ShardInfo], encoding: Encoding,
                 resolution: int, as_uint8: bool):
        self.plan, self.shards, self.encoding = plan, shards, encoding
        self.resolution, self.as_uint8 = resolution, as_uint8

    def __iter__(self) -> Iterator[EvalBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = ShardReader(self.shards, self.encoding, self.resolution)
        for batch in self.plan[worker::workers]:  # the DataLoader takes its workers' batches round-robin
            yield eval_batch(reader, batch, self.as_uint8)


def eval_batches(data_dir: str | Path, split: str, resolution: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, workers: int = 0, as_uint8: bool = False) -> Iterator[EvalBatch]:
    """Every sample of `split` exactly once across ranks, in manifest order, as `EvalBatch(images, valid, keys)`.

    All ranks get the same number of batches; padding has valid False and key "". An unreadable sample
    has valid False and its key (zeros as image), so `(~valid & (key != ""))` counts them.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or workers < 0:
        raise ValueError(f"bad arguments: {batch_size=} {rank=} {world_size=} {workers=}")
    shards, encoding = _open_shards(data_dir, split, resolution)  # errors now, not at the first batch
    plan = eval_plan([s.count for s in shards], batch_size, rank, world_size)
    dataset = _EvalDataset(plan, shards, encoding, resolution, as_uint8)
    if workers == 0:
        return iter(dataset)
    return iter(DataLoader(dataset, batch_size=None, num_workers=min(workers, len(plan))))
