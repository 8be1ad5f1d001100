"""`sivae data build`: a source -> sharded WebDataset tars at every resolution level + manifest.json.

Each sample is loaded once, made square RGB, resized (box filter) to the largest level, and every
lower level is box-averaged from that one image. A "group" is shard i of a split at every level;
worker processes write groups in parallel. Unreadable inputs are skipped, counted and listed in the
manifest, never fatal; what the user must decide (a non-square image under --non-square error, an
image smaller than the largest level without --upsample) is found by reading image headers before
anything is written, and stops the build naming the offending files.

Interrupted builds resume. A shard is written under a temporary name and renamed when complete, so
a final name always holds a whole shard; a finished group leaves a record in DIR/.build/ (its shards'
counts, sizes and checksums, and a fingerprint of what went into it); running the same build again
keeps every group whose record still matches and writes the rest. The manifest is written last: a
directory with a manifest is a complete data set.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from sivae.core.fileio import atomic_write_text, fsync_dir
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.images import (
    Encoding,
    ImageProblem,
    NonSquare,
    check_geometry,
    encode,
    pyramid,
    resize_box,
    resolution_levels,
    square,
)
from sivae.data_pipeline.manifest import (
    BUILD_STATE,
    FORMAT,
    MANIFEST_NAME,
    VERSION,
    Manifest,
    ShardEntry,
    shards_digest,
    write_manifest,
)
from sivae.data_pipeline.points import DEFAULT_POINTS, PointSource, encode_points, shape_seed
from sivae.data_pipeline.source_base import Source, SourceItem

MAX_RESOLUTION = 1024
_PARTIAL = ".partial-"  # in the names of shards being written


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
    points: int = DEFAULT_POINTS  # point-cloud sources: points sampled per shape (the data set's one level)


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
    if requested < 4 or requested & (requested - 1) or requested > MAX_RESOLUTION:
        raise DataError(f"--max-resolution must be a power of two in [4, {MAX_RESOLUTION}], got {requested}")
    if source.native_size is not None and requested > source.native_size and not upsample:
        raise DataError(
            f"{source.spec} images are {source.native_size}px; pass --upsample to build levels up to {requested}px"
        )
    return requested


def check_inputs(source: Source, items: list[SourceItem], top: int, options: BuildOptions,
                 progress: bool) -> tuple[list[SourceItem], list[dict[str, str]]]:
    """(usable items, unreadable ones as listed in the manifest) from image headers; a DataError naming
    the images whose size needs a decision (--non-square crop, --upsample): the first ten, and how many."""
    usable, unreadable, undecided = [], [], []
    for item in tqdm(items, desc="check", unit="img", disable=not progress or source.native_size is not None):
        try:
            width, height = source.size(item.ref)
        except (ImageProblem, OSError) as exc:
            unreadable.append({"key": item.key, "where": source.where(item), "reason": str(exc)})
            continue
        try:
            check_geometry(width, height, top, options.non_square, options.upsample)
        except ImageProblem as exc:
            undecided.append(f"{source.where(item)}: {exc}")
            continue
        usable.append(item)
    if undecided:
        shown = "\n  ".join(undecided[:10])
        more = f"\n  ... and {len(undecided) - 10} more" if len(undecided) > 10 else ""
        raise DataError(f"{len(undecided)} image(s) need a choice:\n  {shown}{more}", source.spec)
    return usable, unreadable


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (a tar stream only writes)."""

    def __init__(self, f: IO[bytes]):
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.f.write(data)


class _ShardWriter:
    """One shard written by WebDataset's TarWriter (members KEY.EXT, ustar, fixed metadata: same input,
    same bytes), under a temporary name in the shard's directory and renamed by `commit`. The bytes are
    hashed as they are written, so the manifest's sha256 costs no second read."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.count = path, 0
        self.partial = path.with_name(f".{path.name}{_PARTIAL}{os.getpid()}")
        self.file = open(self.partial, "wb")  # noqa: SIM115 -- a writer that lives across calls; see close()
        self.hashing = _HashingWriter(self.file)
        # encoder=False: members are stored as given (the levels are encoded by images.encode)
        self.tar = wds.TarWriter(self.hashing, encoder=False, compress=False, mtime=0, user="", group="",
                                 mode=0o444)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        self.tar.write({"__key__": key, **members})
        self.count += 1

    def close(self) -> dict[str, Any]:
        """Finish the temporary file (on disk, fsynced): its count, sha256 and size."""
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return {"count": self.count, "sha256": self.hashing.sha256.hexdigest(), "size": self.hashing.size}

    def commit(self) -> None:
        """Move the finished shard to its final name (an empty one is dropped)."""
        if self.count:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink()


@dataclass(frozen=True)
class _Group:
    """Shard `index` of `split`, at every level, and the fingerprint of everything that decides its bytes."""

    split: str
    index: int
    items: list[SourceItem]
    fingerprint: str


@dataclass(frozen=True)
class _Plan:
    source: Source
    out: Path
    encodings: dict[int, Encoding]
    options: BuildOptions


_progress = None  # samples done, shared by the build processes


def _init_worker(counter) -> None:
    global _progress
    _progress = counter


def shard_path(split: str, resolution: int, index: int) -> str:
    return f"{split}/{resolution}/{index:06d}.tar"


def _record_path(out: Path, group: _Group) -> Path:
    return out / BUILD_STATE / "done" / f"{group.split}-{group.index:06d}.json"


def _encoded_levels(plan: _Plan, item: SourceItem) -> dict[int, bytes]:
    """One sample's member at every level: an image pyramid, or a shape's points (one level: their count)."""
    if isinstance(plan.source, PointSource):
        count = plan.options.points
        return {count: encode_points(plan.source.load_points(item.ref, count, shape_seed(plan.options.seed, item.key)))}
    rgb = square(plan.source.load(item.ref), plan.options.non_square)
    levels = pyramid(resize_box(rgb, max(plan.encodings), plan.options.upsample), sorted(plan.encodings))
    return {r: encode(image, plan.encodings[r]) for r, image in levels.items()}


def _write_group(plan: _Plan, group: _Group) -> dict[str, Any]:
    """Write one group's shards, then its record; returns the record."""
    writers = {r: _ShardWriter(plan.out / shard_path(group.split, r, group.index)) for r in plan.encodings}
    skipped = []
    for item in group.items:
        try:
            levels = _encoded_levels(plan, item)
        except (ImageProblem, OSError) as exc:  # unreadable: a shape, or an image that passed the header check
            skipped.append({"key": item.key, "where": plan.source.where(item), "reason": str(exc)})
            continue
        finally:
            if _progress is not None:
                with _progress.get_lock():
                    _progress.value += 1
        for r, data in levels.items():
            members = {plan.encodings[r]: data}
            if item.label is not None:
                members["cls"] = str(item.label).encode()
            if item.meta is not None:
                members["json"] = json.dumps(item.meta, sort_keys=True).encode()
            writers[r].add(item.key, members)
    shards = {str(r): {"path": shard_path(group.split, r, group.index), **w.close()} for r, w in writers.items()}
    for writer in writers.values():
        writer.commit()
    record = {"fingerprint": group.fingerprint, "shards": {r: s for r, s in shards.items() if s["count"]},
              "skipped": skipped}
    atomic_write_text(_record_path(plan.out, group), json.dumps(record))
    return record


def _finished_record(out: Path, group: _Group) -> dict[str, Any] | None:
    """The group's record when it matches the group and its shards are all there, else None."""
    try:
        record = json.loads(_record_path(out, group).read_text())
        if record["fingerprint"] != group.fingerprint:
            return None
        if all((out / s["path"]).stat().st_size == s["size"] for s in record["shards"].values()):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _groups(splits: dict[str, list[SourceItem]], plan_id: dict[str, Any], shard_size: int,
            seed: int) -> list[_Group]:
    groups = []
    for split, items in splits.items():
        if split == "train":  # shards of a random mix, so that a shard is not one folder or one class
            items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
        for index, start in enumerate(range(0, len(items), shard_size)):
            chunk = items[start : start + shard_size]
            what = {**plan_id, "split": split, "index": index, "keys": [i.key for i in chunk]}
            fingerprint = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
            groups.append(_Group(split, index, chunk, fingerprint))
    return groups


def _run(plan: _Plan, todo: list[_Group], bar: tqdm) -> Iterator[tuple[_Group, dict[str, Any]]]:
    """Write the groups, yielding (group, record) as each finishes; the bar counts samples."""
    if plan.options.workers <= 1:
        for group in todo:
            record = _write_group(plan, group)
            bar.update(len(group.items))
            yield group, record
        return
    ctx = mp.get_context("spawn")  # no fork of a process holding threads (tqdm's monitor)
    counter = ctx.Value("q", 0)
    start = bar.n
    with ProcessPoolExecutor(plan.options.workers, ctx, initializer=_init_worker, initargs=(counter,)) as pool:
        pending = {pool.submit(_write_group, plan, g): g for g in todo}
        try:
            while pending:
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                bar.update(start + counter.value - bar.n)
                for future in done:
                    yield pending.pop(future), future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _check_out(out: Path, force: bool) -> None:
    """A new or empty directory, an unfinished build (resumed), or a data set (rebuilt with --force only)."""
    if out.exists() and not out.is_dir():
        raise DataError("exists and is not a directory", out)
    built, unfinished = (out / MANIFEST_NAME).is_file(), (out / BUILD_STATE).is_dir()
    if built and not force:
        raise DataError("already holds a data set; pass --force to rebuild it", out)
    if out.is_dir() and any(out.iterdir()) and not (built or unfinished):
        raise DataError("is not empty and holds no data set: choose an empty or new --out", out)


def _claim(out: Path, force: bool) -> IO:
    """Lock `out` for this build; the lock is held until the returned file is closed."""
    state = out / BUILD_STATE
    (state / "done").mkdir(parents=True, exist_ok=True)
    lock = open(state / "lock", "w")  # noqa: SIM115 -- held for the whole build
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise DataError("another build is writing here", out) from None
    if force:  # rebuild from scratch: the old manifest and any finished groups no longer count
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(state / "done")
        (state / "done").mkdir()
    return lock


def _tidy(out: Path, table: dict[str, dict[str, list[ShardEntry]]]) -> None:
    """Remove shards the manifest does not list (an earlier build's), emptied folders, the build state."""
    keep = {out / e.path for levels in table.values() for entries in levels.values() for e in entries}
    for path in sorted(out.glob("*/*/*.tar"), reverse=True):
        if path not in keep:
            path.unlink()
    for folder in sorted(out.glob("*/*/"), reverse=True) + sorted(out.glob("*/")):
        if folder.name != BUILD_STATE and not any(folder.iterdir()):
            folder.rmdir()
    shutil.rmtree(out / BUILD_STATE)


def build_dataset(source: Source, out: str | Path, options: BuildOptions, *, force: bool = False,
                  progress: bool = True) -> Manifest:
    """Build (or finish building) the data set in `out`; see the module docstring."""
    out = Path(out)
    if options.shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {options.shard_size}")
    _check_out(out, force)
    all_items = source.items()
    if isinstance(source, PointSource):  # one level, the points per shape; unreadable shapes show when sampled
        if options.points < 1:
            raise DataError(f"--points must be >= 1, got {options.points}")
        top, resolutions, encodings = options.points, [options.points], {options.points: "npy"}
        items, unreadable = all_items, []
        plan_id = {"source": source.spec, "points": options.points, "seed": options.seed}
    else:
        top = choose_max_resolution(source, options.max_resolution, options.upsample)
        resolutions = resolution_levels(top)
        encodings = {r: "npy" if r <= options.raw_max_resolution else "png" for r in resolutions}
        items, unreadable = check_inputs(source, all_items, top, options, progress)  # before anything is written
        plan_id = {"source": source.spec, "encodings": encodings, "upsample": options.upsample,
                   "non_square": options.non_square}
    splits = assign_splits(items, options.test_fraction)
    groups = _groups(splits, plan_id, options.shard_size, options.seed)

    lock = _claim(out, force)
    try:
        plan = _Plan(source, out, encodings, options)
        for stale in out.rglob(f"*{_PARTIAL}*"):  # shards a killed build was writing
            stale.unlink()
        records = {(g.split, g.index): r for g in groups if (r := _finished_record(out, g)) is not None}
        todo = [g for g in groups if (g.split, g.index) not in records]
        total = sum(len(g.items) for g in groups)
        unit = "shape" if isinstance(source, PointSource) else "img"
        with tqdm(total=total, unit=unit, desc="build", disable=not progress, dynamic_ncols=True) as bar:
            if records:
                bar.write(f"resuming: {len(records)} of {len(groups)} shard groups already built")
                bar.update(total - sum(len(g.items) for g in todo))
            for group, record in _run(plan, todo, bar):
                records[group.split, group.index] = record
        manifest = _manifest(source, options, top, resolutions, encodings, groups, records, unreadable,
                             labels=any(i.label is not None for i in all_items))
        for split in manifest.shard_table:
            for r in resolutions:
                fsync_dir(out / split / str(r))
        write_manifest(manifest, out)
        _tidy(out, manifest.shard_table)
    finally:
        lock.close()
    manifest.root = out.resolve()
    return manifest


def _manifest(source: Source, options: BuildOptions, top: int, resolutions: list[int],
              encodings: dict[int, Encoding], groups: list[_Group], records: dict[tuple[str, int], dict],
              unreadable: list[dict[str, str]], labels: bool) -> Manifest:
    table: dict[str, dict[str, list[ShardEntry]]] = {}
    skipped = list(unreadable)
    for group in groups:
        record = records[group.split, group.index]
        skipped += record["skipped"]
        for r, shard in record["shards"].items():
            levels = table.setdefault(group.split, {str(res): [] for res in resolutions})
            levels[r].append(ShardEntry(shard["path"], shard["count"], shard["sha256"]))
    if not table:
        raise DataError("no readable shape" if isinstance(source, PointSource) else "no readable image", source.spec)
    points = isinstance(source, PointSource)
    return Manifest(
        format=FORMAT,
        version=VERSION,
        source=source.spec,
        kind=source.modality,
        classes=list(source.classes) if points and labels else [],
        resolutions=resolutions,
        encodings={str(r): e for r, e in encodings.items()},
        split_sizes={s: sum(e.count for e in levels[str(top)]) for s, levels in table.items()},
        labels=labels,
        digest=shards_digest(table),
        shard_table=table,
        build={**asdict(options), "max_resolution": None if points else top,
               "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        skipped_sources=skipped,
    )
