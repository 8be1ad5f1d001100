"""Loaders over a built data set: an endless, exactly resumable training stream and an evaluation pass.

Training order (what makes resume exact). Each rank runs `streams` independent sample streams:
`max(workers, 1)` for an explicit worker count, `AUTO_STREAMS` when the worker count is chosen from
the machine (`workers=None`), so that choice never changes the order. Stream w of rank r is a
sequence of blocks: block b draws, from an RNG seeded by (seed, resolution, r, w, b), one shard
(weighted by its sample count: shards are shared, with replacement, so any number of shards serves
any number of ranks x streams), a permutation of its samples, a flip bit per sample and a
shuffle-buffer slot per sample. Samples pass through a shuffle buffer of fixed capacity (a sample
entering takes a slot, the sample there leaves), and every `batch_size` leaving samples form the
stream's next local batch. Global batch k is local batch k // streams of stream k % streams (with
as many workers as streams, the round-robin order in which torch's DataLoader returns the batches
of its workers). All of that is computed on sample numbers from the manifest's shard counts, so
starting at batch k replays the order up to k without reading or decoding any image.

Unreadable samples. A sample that cannot be read (truncated shard, corrupt bytes) leaves a hole in
its batch; the hole is filled by samples drawn at random from an RNG seeded by (seed, resolution,
rank, stream, local batch), and the batch reports how many samples it skipped. A batch therefore
depends only on its own position, never on holes in earlier batches, and resume stays exact.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.images import Encoding
from sivae.data_pipeline.layouts import LAYOUTS, SampleLayout
from sivae.data_pipeline.manifest import Manifest, ShardInfo, load_manifest
from sivae.data_pipeline.shards import ShardReader

_BLOCK, _REFILL = 0, 1  # RNG domains
_MAX_REFILL_DRAWS = 1000  # per batch: past that the data set is essentially unreadable

# Automatic worker counts (workers=None): the order keeps two streams, the order of the old default
# (workers=2), so a run started with that default resumes exactly on any machine with any worker count.
AUTO_STREAMS = 2
MAX_AUTO_WORKERS = 8  # past this, more processes mostly add shared memory and start-up time per rank


def auto_workers(environ: dict[str, str] | None = None, cpus: int | None = None) -> int:
    """Loader worker processes for one rank from the CPUs this process may run on.

    The CPUs in the process's affinity are shared by the ranks on the node (LOCAL_WORLD_SIZE, set by
    torchrun, `sivae launch` and its Slurm launcher; 1 when unset), unless Slurm bound this task to its
    own CPUs (affinity no larger than SLURM_CPUS_PER_TASK). One CPU of a rank's share stays with its
    main process (the training step, host-to-device copies); the rest decode: max(1, share - 1),
    at most MAX_AUTO_WORKERS.
    """
    env = os.environ if environ is None else environ
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = max(1, int(env.get("LOCAL_WORLD_SIZE", "").strip() or 1))
    per_task = env.get("SLURM_CPUS_PER_TASK", "").strip()
    share = cpus if per_task and cpus <= int(per_task) else cpus // local_ranks
    return max(1, min(MAX_AUTO_WORKERS, share - 1))


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # [B, 3, R, R] float32 in [-1, 1] (uint8 in 0..255 with as_uint8); points: [B, N, 3]
    skipped: int  # unreadable samples met (and replaced) while making this batch


class EvalBatch(NamedTuple):
    images: torch.Tensor  # [B, 3, R, R] float32 in [-1, 1] (uint8 in 0..255 with as_uint8); black where invalid;
    # point clouds: float32 [B, N, 3], zeros where invalid
    valid: torch.Tensor  # bool [B]: False for padding and for unreadable samples
    keys: list[str]  # sample keys; "" for padding


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> new float32 (v - 127.5) / 127.5, in [-1, 1]; works on any device."""
    if images.device.type != "cpu":
        return images.to(torch.float32).sub_(127.5).div_(127.5)
    # Same arithmetic (both steps exact or correctly rounded: identical bits), but numpy's uint8 -> float32
    # loops ran 3x faster than torch's single-threaded cast here, and on CPU this is the loader's main cost.
    out = np.empty(tuple(images.shape), np.float32)
    np.subtract(images.numpy(), np.float32(127.5), out=out, dtype=np.float32)
    np.divide(out, np.float32(127.5), out=out)
    return torch.from_numpy(out)


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


def unpack(item: int) -> tuple[int, int, int]:
    """A packed sample, (shard << 33) | (sample << 1) | flip, as (shard, sample, flip)."""
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
    decoded = reader.read(shard, sample)
    if decoded is None:
        return False
    out[slot] = reader.layout.arrange(decoded, flip)
    return True


def fill_train_batch(reader: ShardReader, order: TrainOrder, stream: int, local: int, items: list[int],
                     out: np.ndarray) -> int:
    """Write local batch `local` of `stream` (its packed samples: `items`) into `out` (uint8 [B, 3, R, R]),
    refilling holes as the module docstring says; returns the number of unreadable samples met."""
    holes = [slot for slot, item in enumerate(items) if not _put(reader, out, slot, *unpack(item))]
    skipped = len(holes)
    if holes:
        rng = order.rng(_REFILL, stream, local)
        draws = 0
        for slot in holes:
            while True:
                if draws == _MAX_REFILL_DRAWS:
                    where = reader.shards[0].path.parent
                    raise DataError(f"{draws} random draws found too few readable samples to fill a batch: "
                                    "the data set is mostly unreadable (run `sivae data info --verify`)", where)
                draws += 1
                shard = int(rng.choice(len(order.counts), p=order.weights))
                sample, flip = int(rng.integers(order.counts[shard])), int(order.flip and rng.integers(2))
                if _put(reader, out, slot, shard, sample, flip):
                    break
                skipped += 1
    return skipped


def _hand_out(images: torch.Tensor, as_uint8: bool, pin_memory: bool) -> torch.Tensor:
    """A batch as callers get it: a tensor of their own (never a view of a reused buffer); point clouds as stored."""
    images = images.clone() if as_uint8 or images.dtype != torch.uint8 else to_unit_range(images)
    return images.pin_memory() if pin_memory else images


def _layout(manifest: Manifest) -> SampleLayout:
    return LAYOUTS[manifest.kind]


def _open_shards(data_dir: str | Path, split: str, resolution: int) -> tuple[Manifest, list[ShardInfo]]:
    manifest = load_manifest(data_dir)
    shards = manifest.shards(split, resolution)
    missing = [s.path for s in shards if not s.path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} shard file(s) listed in the manifest are missing, e.g. {missing[0]}",
                        manifest.root)
    return manifest, shards


# ---------------------------------------------------------------------------------------------
# The training stream


class _TrainDataset(IterableDataset):
    """What each DataLoader worker runs: the batches of one stream, from where that stream resumes.

    Batches are written into `slots` (uint8 [workers, ring, B, 3, R, R], in shared memory when there
    are worker processes) and only (worker, slot, skipped) goes through the DataLoader's queue: on a
    small machine, moving each batch through a fresh shared-memory segment cost more than making it.
    A worker has at most `_PREFETCH` batches requested ahead of the one the main process copies out,
    so a ring of `_PREFETCH + 2` slots is never overwritten while it is read.
    """

    def __init__(self, order: TrainOrder, shards: list[ShardInfo], encoding: Encoding, layout: SampleLayout,
                 start_batch: int, slots: torch.Tensor):
        self.order, self.shards, self.encoding, self.layout = order, shards, encoding, layout
        self.start_batch, self.slots = start_batch, slots

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = ShardReader(self.shards, self.encoding, self.order.resolution, self.layout)
        ring = self.slots.shape[1]
        # The DataLoader takes its workers' batches round-robin, worker 0 first: worker w makes global
        # batches start_batch + w, + w + workers, ... With as many workers as streams that is one stream's
        # consecutive local batches; otherwise a worker keeps a position in each stream it serves and passes
        # over the other workers' batches of it on sample numbers alone (no reading, no decoding).
        positions: dict[int, tuple[Iterator[list[int]], int]] = {}  # stream -> (its local batches, next number)
        for n, batch in enumerate(itertools.count(self.start_batch + worker, workers)):
            stream, local = stream_of_batch(batch, self.order.streams)
            batches, upcoming = positions.get(stream) or (local_batches(self.order, stream, local), local)
            for _ in range(local - upcoming):
                next(batches)
            positions[stream] = (batches, local + 1)
            slot = n % ring
            skipped = fill_train_batch(reader, self.order, stream, local, next(batches),
                                       self.slots[worker, slot].numpy())
            yield worker, slot, skipped


_PREFETCH = 2  # batches each DataLoader worker works ahead


class TrainStream:
    """Endless training batches of one rank, a pure function of the arguments (bar the device).

    Iterating yields `Batch(images, skipped)`. `start_batch=k` yields exactly the batches the stream
    started at 0 yields from its k-th on: to resume, pass the number of batches this rank has taken
    from a stream with the same other arguments. `workers=0` and `workers=1` give the same stream.
    `workers=None` picks the worker count from the machine (`auto_workers`) and streams what
    `workers=AUTO_STREAMS` streams, whatever count it picked. Each `iter()` starts again at
    `start_batch`. `as_uint8` gives uint8 images (0..255) to convert on the accelerator with
    `to_unit_range`; `pin_memory` pins each batch for fast device copies.
    """

    def __init__(self, data_dir: str | Path, resolution: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, start_batch: int = 0, workers: int | None = 2,
                 shuffle_buffer: int = 1000, flip: bool = True, split: str = "train", as_uint8: bool = False,
                 pin_memory: bool = False):
        streams = AUTO_STREAMS if workers is None else max(workers, 1)
        workers = auto_workers() if workers is None else workers
        limits = {"batch_size": (batch_size, 1), "world_size": (world_size, 1), "workers": (workers, 0),
                  "shuffle_buffer": (shuffle_buffer, 1), "start_batch": (start_batch, 0)}
        for name, (value, low) in limits.items():
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        # the manifest's digest identifies the data: a checkpoint can record it to refuse resuming on other data
        self.manifest, self.shards = _open_shards(data_dir, split, resolution)
        self.encoding, self.layout = self.manifest.encoding(resolution), _layout(self.manifest)
        self.order = TrainOrder(
            counts=tuple(s.count for s in self.shards), seed=seed, resolution=resolution, rank=rank,
            streams=streams, batch_size=batch_size, shuffle_buffer=shuffle_buffer, flip=flip,
        )
        self.workers, self.start_batch, self.as_uint8 = workers, start_batch, as_uint8
        self.pin_memory = pin_memory and torch.cuda.is_available()

    def __iter__(self) -> Iterator[Batch]:
        shape = (self.order.batch_size, *self.layout.shape(self.order.resolution))
        dtype = torch.from_numpy(np.zeros(0, self.layout.dtype)).dtype
        if self.workers == 0:  # one slot: the next batch is made only after this one is handed out
            slots = torch.empty((1, 1, *shape), dtype=dtype)
            batches: Iterator[tuple[int, int, int]] = iter(self._dataset(slots))
        else:
            slots = torch.empty((self.workers, _PREFETCH + 2, *shape), dtype=dtype).share_memory_()
            # An explicit generator: without one, every DataLoader iterator draws its base seed from the
            # global torch RNG, and re-opening the stream on resume would shift the trainer's noise.
            batches = iter(DataLoader(self._dataset(slots), batch_size=None, num_workers=self.workers,
                                      prefetch_factor=_PREFETCH, generator=torch.Generator().manual_seed(0)))
        for worker, slot, skipped in batches:
            yield Batch(_hand_out(slots[worker, slot], self.as_uint8, self.pin_memory), int(skipped))

    def _dataset(self, slots: torch.Tensor) -> _TrainDataset:
        return _TrainDataset(self.order, self.shards, self.encoding, self.layout, self.start_batch, slots)


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


def eval_batch(reader: ShardReader, plan: list[tuple[int, int] | None]) -> EvalBatch:
    """One batch of the plan as uint8 images (black where invalid), or point clouds (zeros where invalid)."""
    out = np.zeros((len(plan), *reader.layout.shape(reader.resolution)), reader.layout.dtype)
    valid = np.zeros(len(plan), bool)
    keys = []
    for slot, entry in enumerate(plan):
        if entry is None:
            keys.append("")
            continue
        keys.append(reader.key(*entry))
        valid[slot] = _put(reader, out, slot, *entry, 0)
    return EvalBatch(torch.from_numpy(out), torch.from_numpy(valid), keys)


class _EvalDataset(IterableDataset):
    def __init__(self, plan: Plan, shards: list[ShardInfo], encoding: Encoding, resolution: int,
                 layout: SampleLayout):
        self.plan, self.shards, self.encoding, self.resolution, self.layout = plan, shards, encoding, resolution, layout

    def __iter__(self) -> Iterator[EvalBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = ShardReader(self.shards, self.encoding, self.resolution, self.layout)
        for batch in self.plan[worker::workers]:  # the DataLoader takes its workers' batches round-robin
            yield eval_batch(reader, batch)


def eval_batches(data_dir: str | Path, split: str, resolution: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, workers: int = 0, as_uint8: bool = False) -> Iterator[EvalBatch]:
    """Every sample of `split` exactly once across ranks, in manifest order, as `EvalBatch(images, valid, keys)`.

    All ranks get the same number of batches; padding has valid False and key "". An unreadable sample
    has valid False and its key (and a black image), so invalid entries with a key count them.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or workers < 0:
        raise ValueError(f"bad arguments: {batch_size=} {rank=} {world_size=} {workers=}")
    manifest, shards = _open_shards(data_dir, split, resolution)  # errors now, not at the first batch
    plan = eval_plan([s.count for s in shards], batch_size, rank, world_size)
    dataset = _EvalDataset(plan, shards, manifest.encoding(resolution), resolution, _layout(manifest))
    batches = dataset if workers == 0 else DataLoader(
        dataset, batch_size=None, num_workers=min(workers, len(plan)), generator=torch.Generator().manual_seed(0)
    )
    return (b if as_uint8 or b.images.dtype != torch.uint8 else b._replace(images=to_unit_range(b.images))
            for b in batches)
