"""`sivae data build`: a source -> sharded WebDataset tars at every resolution level + manifest.json.

Each sample is loaded once, made square RGB, resized (box filter) to the largest level, and every
lower level is box-averaged from that one image. Worker processes each write one group of shards
(shard i of a split at every level). Everything goes into a staging directory beside the output,
manifest last; only a complete build is renamed into place, so a failed or interrupted build leaves
any earlier data set untouched.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import shutil
import tarfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from data_pipeline.errors import DataError
from data_pipeline.images import (
    Encoding,
    ImageProblem,
    NonSquare,
    encode,
    pyramid,
    resize_box,
    resolution_levels,
    square,
)
from data_pipeline.manifest import FORMAT, VERSION, Manifest, ShardEntry, shards_digest, write_manifest
from data_pipeline.sources import Source, SourceItem
from train.fileio import fsync_dir


@dataclass(frozen=True)
class BuildOptions:
    max_resolution: int | None = None  # None: the source's native size (rounded down to a power of two)
    test_fraction: float | None = None  # None: 0.1 for sources without their own split
    shard_size: int = 1000  # samples per shard
    workers: int = 2  # build processes (0 or 1: in this process)
    upsample: bool = False  # allow levels above an image's own size
    non_square: NonSquare = "error"
    seed: int = 0  # the order of training samples across shards
    raw_max_resolution: int = 128  # levels up to this size are stored as raw .npy arrays, larger ones as PNG
    skip_bad: bool = False  # leave out unreadable source images (listed in the manifest) instead of stopping


DEFAULT_TEST_FRACTION = 0.1


def assign_splits(items: list[SourceItem], test_fraction: float | None) -> dict[str, list[SourceItem]]:
    """Items keep their source's split; the others go to "test" (a fraction, chosen by a hash of the key,
    so the choice is stable) or "train". Empty splits are left out."""
    own = [i for i in items if i.split is not None]
    free = [i for i in items if i.split is None]
    if own and test_fraction is not None:
        raise DataError("this source has its own train/test split; --test-fraction does not apply")
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"--test-fraction must be in [0, 1], got {fraction}")
    by_hash = sorted(free, key=lambda i: hashlib.sha256(i.key.encode()).digest())
    test_keys = {i.key for i in by_hash[: round(fraction * len(free))]}
    splits: dict[str, list[SourceItem]] = {}
    for item in items:
        split = item.split or ("test" if item.key in test_keys else "train")
        splits.setdefault(split, []).append(item)
    return splits


def choose_max_resolution(source: Source, requested: int | None, upsample: bool) -> int:
    if requested is None:
        if source.native_size is None:
            raise DataError(f"images of {source.spec} vary in size: give --max-resolution")
        requested = 1 << (source.native_size.bit_length() - 1)
    if requested < 4 or requested & (requested - 1):
        raise DataError(f"--max-resolution must be a power of two >= 4, got {requested}")
    if source.native_size is not None and requested > source.native_size and not upsample:
        raise DataError(
            f"{source.spec} images are {source.native_size}px; pass --upsample to build levels up to {requested}px"
        )
    return requested


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (tarfile's stream mode only writes)."""

    def __init__(self, f: IO[bytes]):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.f.write(data)


class _ShardWriter:
    """One tar shard in WebDataset layout (members KEY.EXT, ustar, fixed metadata: same input, same bytes)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.count = path, 0
        self.file = open(path, "wb")  # noqa: SIM115 -- a writer that lives across calls; closed in close()
        self.hashing = _HashingWriter(self.file)
        self.tar = tarfile.open(fileobj=self.hashing, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> tuple[int, str]:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.count, self.hashing.sha256.hexdigest()


@dataclass(frozen=True)
class _Group:
    """Shard `index` of `split`, at every level."""

    split: str
    index: int
    items: list[SourceItem]


@dataclass(frozen=True)
class _Plan:
    source: Source
    staging: Path
    encodings: dict[int, Encoding]
    options: BuildOptions


_progress = None  # samples done, shared by the build processes


def _init_worker(counter) -> None:
    global _progress
    _progress = counter


def shard_path(split: str, resolution: int, index: int) -> str:
    return f"{split}/{resolution}/{index:06d}.tar"


def _sample_levels(plan: _Plan, item: SourceItem, top: int) -> dict[int, np.ndarray]:
    rgb = square(plan.source.load(item.ref), plan.options.non_square)
    return pyramid(resize_box(rgb, top, plan.options.upsample), sorted(plan.encodings))


def _write_group(plan: _Plan, group: _Group) -> tuple[_Group, dict[int, tuple[int, str]], list[dict[str, str]]]:
    """Write shard `group.index` of the split at every level: (group, level -> (count, sha256), skipped)."""
    top = max(plan.encodings)
    writers = {r: _ShardWriter(plan.staging / shard_path(group.split, r, group.index)) for r in plan.encodings}
    skipped = []
    for item in group.items:
        try:
            levels = _sample_levels(plan, item, top)
        except (ImageProblem, OSError) as exc:
            if not plan.options.skip_bad:
                raise DataError(str(exc), plan.source.where(item)) from None
            skipped.append({"key": item.key, "where": plan.source.where(item), "reason": str(exc)})
            continue
        finally:
            if _progress is not None:
                with _progress.get_lock():
                    _progress.value += 1
        for r, rgb in levels.items():
            members = {plan.encodings[r]: encode(rgb, plan.encodings[r])}
            if item.label is not None:
                members["cls"] = str(item.label).encode()
            writers[r].add(item.key, members)
    return group, {r: w.close() for r, w in writers.items()}, skipped


def _groups(splits: dict[str, list[SourceItem]], shard_size: int, seed: int) -> list[_Group]:
    groups = []
    for split, items in splits.items():
        if split == "train":  # shards of a random mix, so that a shard is not one folder or one class
            items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
        groups += [_Group(split, k, items[i : i + shard_size]) for k, i in enumerate(range(0, len(items), shard_size))]
    return groups


def _run(plan: _Plan, groups: list[_Group], total: int, progress: bool):
    """Yield each group's result as it finishes, with a progress bar over samples."""
    bar = tqdm(total=total, unit="img", desc="build", disable=not progress, dynamic_ncols=True)
    try:
        if plan.options.workers <= 1:
            for group in groups:
                result = _write_group(plan, group)
                bar.update(len(group.items))
                yield result
            return
        ctx = mp.get_context("spawn")  # no fork of a process holding threads (tqdm's monitor)
        counter = ctx.Value("q", 0)
        with ProcessPoolExecutor(plan.options.workers, ctx, initializer=_init_worker, initargs=(counter,)) as pool:
            pending = {pool.submit(_write_group, plan, g) for g in groups}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    bar.update(counter.value - bar.n)
                    for future in done:
                        yield future.result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    finally:
        bar.close()


def build_dataset(source: Source, out: str | Path, options: BuildOptions, *, force: bool = False,
                  progress: bool = True) -> Manifest:
    """Build the data set into `out`; an existing data set there is replaced only with `force`."""
    out = Path(out)
    if options.shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {options.shard_size}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise DataError("already exists and is not empty; pass --force to replace it", out)
    top = choose_max_resolution(source, options.max_resolution, options.upsample)
    resolutions = resolution_levels(top)
    encodings: dict[int, Encoding] = {r: "npy" if r <= options.raw_max_resolution else "png" for r in resolutions}

    items = source.items()
    splits = assign_splits(items, options.test_fraction)
    groups = _groups(splits, options.shard_size, options.seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        plan = _Plan(source, staging, encodings, options)
        table: dict[str, dict[str, list[ShardEntry]]] = {s: {str(r): [] for r in resolutions} for s in splits}
        skipped: list[dict[str, str]] = []
        results = sorted(_run(plan, groups, len(items), progress), key=lambda res: (res[0].split, res[0].index))
        for group, shards, bad in results:
            skipped += bad
            for r, (count, sha) in shards.items():
                if count:
                    table[group.split][str(r)].append(ShardEntry(shard_path(group.split, r, group.index), count, sha))
                else:  # every image of the group was unreadable (--skip-bad)
                    (staging / shard_path(group.split, r, group.index)).unlink()
        table = {s: levels for s, levels in table.items() if levels[str(top)]}
        if not table:
            raise DataError("no readable image", source.spec)
        for split in table:
            for r in resolutions:
                fsync_dir(staging / split / str(r))
        manifest = Manifest(
            format=FORMAT,
            version=VERSION,
            source=source.spec,
            resolutions=resolutions,
            encodings={str(r): e for r, e in encodings.items()},
            split_sizes={s: sum(e.count for e in levels[str(top)]) for s, levels in table.items()},
            labels=any(i.label is not None for i in items),
            digest=shards_digest(table),
            shard_table=table,
            build={**asdict(options), "max_resolution": top, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            skipped_sources=skipped,
        )
        write_manifest(manifest, staging)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest.root = out.resolve()
    return manifest


def _replace(staging: Path, out: Path) -> None:
    """Move the finished build to `out`; an old one there is moved aside first and removed last."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
