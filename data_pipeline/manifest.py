"""The manifest of a built data set: `DIR/manifest.json`, the one file that says what DIR holds.

Layout of a data set directory:

    manifest.json
    {split}/{resolution}/{index:06d}.tar     WebDataset shards: members KEY.npy or KEY.png (+ KEY.cls)

Shard i of a split holds the same samples, in the same order, at every resolution. A point-cloud data
set (kind "points") has one level, its number of points per shape: KEY.npy is float32 [points, 3]. The manifest is
written last and atomically, so a directory with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sivae.core.config import ConfigError, from_dict, require, to_dict
from sivae.core.fileio import atomic_write_text
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.images import Encoding

MANIFEST_NAME = "manifest.json"
BUILD_STATE = ".build"  # in a data set directory while its build is unfinished
FORMAT = "sivae-webdataset"
VERSION = 1
KINDS = ("images", "points")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ShardInfo:
    path: Path  # absolute (in the file: relative to the data set directory)
    count: int  # samples
    sha256: str  # of the whole tar file


@dataclass
class ShardEntry:
    """One shard as the JSON file holds it."""

    path: str
    count: int
    sha256: str

    def __post_init__(self) -> None:
        require(self.count >= 1, "count", "must be >= 1")
        require(bool(_SHA256.fullmatch(self.sha256)), "sha256", "must be 64 lowercase hex digits")
        require(not Path(self.path).is_absolute() and ".." not in Path(self.path).parts, "path",
                "must be relative, inside the data set directory")


def shards_digest(table: dict[str, dict[str, list[ShardEntry]]]) -> str:
    """sha256 over every shard's checksum, keyed by split, resolution and path (order-independent)."""
    lines = sorted(
        f"{split}\t{res}\t{entry.path}\t{entry.sha256}\n"
        for split, levels in table.items()
        for res, entries in levels.items()
        for entry in entries
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@dataclass
class Manifest:
    """What a data set directory holds; `load_manifest` reads and checks it.

    `digest` changes whenever any shard's bytes change: eval keys cached statistics with it.
    """

    format: str
    version: int
    source: str  # the --source it was built from
    resolutions: list[int]  # sorted: 4, 8, ..., max
    encodings: dict[str, Encoding]  # resolution (as a string) -> image member extension
    split_sizes: dict[str, int]  # split -> samples
    labels: bool  # samples carry a KEY.cls member (the source's class index)
    digest: str
    shard_table: dict[str, dict[str, list[ShardEntry]]]  # split -> resolution (as a string) -> shards
    build: dict[str, Any] = field(default_factory=dict)  # the build options
    skipped_sources: list[dict[str, str]] = field(default_factory=list)  # unreadable inputs left out of the build
    kind: str = "images"  # "images" or "points" (point clouds; manifests written before it: images)
    classes: list[str] = field(default_factory=list)  # point clouds: class names, indexed by KEY.cls
    root: Path = field(init=False, default=Path("."), repr=False)  # the directory, set when loaded

    def __post_init__(self) -> None:
        require(self.format == FORMAT, "format", f"must be {FORMAT!r}")
        require(self.version == VERSION, "version", f"this code reads version {VERSION}")
        res = self.resolutions
        require(self.kind in KINDS, "kind", f"must be one of {', '.join(KINDS)}")
        if self.kind == "points":
            require(len(res) == 1 and res[0] >= 1, "resolutions", "a point-cloud data set has one level: its "
                    "points per shape")
        else:
            require(bool(res) and res == sorted(set(res)) and all(r >= 4 and r & (r - 1) == 0 for r in res),
                    "resolutions", "must be increasing powers of two >= 4")
        require(set(self.encodings) == {str(r) for r in res}, "encodings", "must name every resolution")
        require(set(self.shard_table) == set(self.split_sizes), "shard_table", "must list the splits of split_sizes")
        for split, levels in self.shard_table.items():
            require(set(levels) == {str(r) for r in res}, f"shard_table.{split}", "must list every resolution")
            for r, entries in levels.items():
                counts = sum(e.count for e in entries)
                require(counts == self.split_sizes[split], f"shard_table.{split}.{r}",
                        f"counts add up to {counts}, split_sizes says {self.split_sizes[split]}")
        require(self.digest == shards_digest(self.shard_table), "digest",
                "does not match the shard checksums (the manifest was edited or is corrupt)")

    def shards(self, split: str, resolution: int) -> list[ShardInfo]:
        self.check(split, resolution)
        return [ShardInfo(self.root / e.path, e.count, e.sha256) for e in self.shard_table[split][str(resolution)]]

    def encoding(self, resolution: int) -> Encoding:
        self.check(split=None, resolution=resolution)
        return self.encodings[str(resolution)]

    def check(self, split: str | None, resolution: int) -> None:
        """A clear error unless this data set has `split` (when given) at `resolution`."""
        where = self.root / MANIFEST_NAME
        if split is not None and split not in self.split_sizes:
            raise DataError(f"no split {split!r}; this data set has {sorted(self.split_sizes)}", where)
        if resolution not in self.resolutions:
            if self.kind == "points":
                raise DataError(f"holds clouds of {self.resolutions[0]} points, not {resolution}", where)
            raise DataError(f"no {resolution}px level; this data set has {self.resolutions}", where)

    def to_json(self) -> str:
        data = {k: v for k, v in to_dict(self).items() if k != "root"}
        return json.dumps(data, indent=1) + "\n"


def write_manifest(manifest: Manifest, directory: Path) -> Path:
    """Write DIR/manifest.json atomically."""
    return atomic_write_text(Path(directory) / MANIFEST_NAME, manifest.to_json())


def load_manifest(directory: str | Path) -> Manifest:
    """Read and check DIR/manifest.json; a DataError naming the file and key if missing or corrupt."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        if (directory / BUILD_STATE).is_dir():
            raise DataError("its build is unfinished: rerun the same `sivae data build` to finish it", path)
        hint = "not a built data set" if directory.is_dir() else "no such directory"
        raise DataError(f"{hint}: build one with `sivae data build --source ... --out {directory}`", path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"unreadable or not JSON ({exc}); rebuild the data set", path) from None
    try:
        manifest = from_dict(Manifest, data)
    except ConfigError as exc:
        raise DataError(f"{exc.key}: {exc.message}" if exc.key else exc.message, path) from None
    manifest.root = directory.resolve()
    return manifest



def verify_shards(manifest: Manifest, progress: bool = True) -> list[str]:
    """Every shard file that is missing or whose sha256 differs from the manifest's, as messages."""
    from tqdm import tqdm

    entries = [e for levels in manifest.shard_table.values() for es in levels.values() for e in es]
    problems = []
    for entry in tqdm(entries, desc="verify", unit="shard", disable=not progress):
        path = manifest.root / entry.path
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            problems.append(f"{path}: unreadable ({exc})")
            continue
        if digest.hexdigest() != entry.sha256:
            problems.append(f"{path}: sha256 {digest.hexdigest()} differs from the manifest's {entry.sha256}")
    return problems
