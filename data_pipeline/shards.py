"""Random access to the samples of built shards: tar headers give each image member's offset.

A reader never raises for bad data: a missing, truncated or corrupt sample reads as None and is
logged once per process with its shard and key (the callers count it). A worker process builds its
own reader; shard indexes are read lazily, open files are kept in a small LRU.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sivae.data_pipeline.images import Encoding, ImageProblem, decode
from sivae.data_pipeline.manifest import ShardInfo

log = logging.getLogger(__name__)
_MAX_OPEN_FILES = 64


@dataclass(frozen=True)
class ShardIndex:
    """The image member of each sample in tar order: its key, data offset and size."""

    keys: list[str]
    offsets: list[int]
    sizes: list[int]


def read_shard_index(path: Path, extension: str) -> ShardIndex:
    """Index the `KEY.{extension}` members of a shard from its headers, without reading the data.

    A truncated or damaged shard gives the samples before the damage; a missing file, none.
    """
    keys: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    suffix = f".{extension}"
    try:
        file_size = path.stat().st_size
        with tarfile.open(path, "r:") as tar:
            while True:
                try:
                    member = tar.next()
                except (tarfile.TarError, OSError, EOFError):
                    break
                if member is None:
                    break
                if not member.isfile() or not member.name.endswith(suffix):
                    continue
                if member.offset_data + member.size > file_size:
                    break  # its data is cut off
                # WebDataset's key: the name up to the first dot of its last component
                head, _, tail = member.name.rpartition("/")
                keys.append(f"{head}/{tail.split('.', 1)[0]}" if head else tail.split(".", 1)[0])
                offsets.append(member.offset_data)
                sizes.append(member.size)
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("unreadable shard %s: %s", path, exc)
    return ShardIndex(keys, offsets, sizes)


class ShardReader:
    """Reads decoded images (HWC uint8) by (shard number, sample number) from one split at one level."""

    def __init__(self, shards: list[ShardInfo], encoding: Encoding, resolution: int):
        self.shards, self.encoding, self.resolution = shards, encoding, resolution
        self._indexes: dict[int, ShardIndex] = {}
        self._files: OrderedDict[int, int] = OrderedDict()  # shard -> fd, least recently used first
        self._reported: set[tuple[int, int]] = set()

    def index(self, shard: int) -> ShardIndex:
        found = self._indexes.get(shard)
        if found is None:
            found = self._indexes[shard] = read_shard_index(self.shards[shard].path, self.encoding)
            expected = self.shards[shard].count
            if len(found.keys) != expected:
                log.warning("shard %s holds %d readable samples, the manifest says %d",
                            self.shards[shard].path, len(found.keys), expected)
        return found

    def key(self, shard: int, sample: int) -> str:
        """The sample's key, or a placeholder naming the shard when its header is unreadable."""
        keys = self.index(shard).keys
        return keys[sample] if sample < len(keys) else f"{self.shards[shard].path.name}#{sample}"

    def read(self, shard: int, sample: int) -> np.ndarray | None:
        """The image, or None (logged once) when it cannot be read or decoded."""
        data = self.read_bytes(shard, sample)
        if data is None:
            return None
        try:
            return decode(data, self.encoding, self.resolution)
        except ImageProblem as exc:
            return self._bad(shard, sample, str(exc))

    def read_bytes(self, shard: int, sample: int) -> bytes | None:
        """The image member's bytes as stored, or None (logged once) when they cannot be read."""
        index = self.index(shard)
        if sample >= len(index.keys):
            return self._bad(shard, sample, "missing from the shard (truncated or damaged)")
        try:
            data = os.pread(self._fd(shard), index.sizes[sample], index.offsets[sample])
        except OSError as exc:
            return self._bad(shard, sample, f"unreadable: {exc}")
        if len(data) != index.sizes[sample]:
            return self._bad(shard, sample, "cut off (truncated shard)")
        return data

    def close(self) -> None:
        while self._files:
            os.close(self._files.popitem()[1])

    def _fd(self, shard: int) -> int:
        fd = self._files.get(shard)
        if fd is not None:
            self._files.move_to_end(shard)
            return fd
        if len(self._files) >= _MAX_OPEN_FILES:
            os.close(self._files.popitem(last=False)[1])
        fd = self._files[shard] = os.open(self.shards[shard].path, os.O_RDONLY)
        return fd

    def _bad(self, shard: int, sample: int, reason: str) -> None:
        if (shard, sample) not in self._reported:
            self._reported.add((shard, sample))
            log.warning("skipping sample %s of %s: %s", self.key(shard, sample), self.shards[shard].path, reason)
        return None

    def __del__(self) -> None:
        self.close()
