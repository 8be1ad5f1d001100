"""Random access to the samples of built shards, through wids (WebDataset's indexed tar readers).

wids' MMIndexedTar memory-maps a shard and indexes its members from their headers without reading
any image data; a sample is then one slice of the map at the offset the index holds. The index of a
shard is built once per reader and kept; open shards (a file and its map each) live in wids' LRU
cache, so a data set of many shards holds a bounded number of them open.

Damage. wids' scan trusts every header it meets, so two checks keep a damaged shard usable up to the
damage, as a tar reader would: each header must pass the tar checksum (tarfile.TarInfo.frombuf) and
agree with what wids read, and its data must end inside the file; the index stops at the first that
does not. A shard whose headers wids' scan cannot parse at all (a cut inside a header, a garbled
size field) is indexed instead by wids' TarFileReader, which reads headers through tarfile and
stops at the damage. The manifest's count is compared with what was indexed, and a shortfall logged.

A reader never raises for bad data: a missing, truncated or corrupt sample reads as None and is
logged once per process with its shard and key (the callers count it). A worker process builds its
own reader (a map is not shared across processes).
"""

from __future__ import annotations

import itertools
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from wids.wids_lru import LRUCache
from wids.wids_mmtar import MMIndexedTar
from wids.wids_tar import TarFileReader

from sivae.data_pipeline.images import Encoding, ImageProblem
from sivae.data_pipeline.layouts import IMAGES, SampleLayout
from sivae.data_pipeline.manifest import ShardInfo

log = logging.getLogger(__name__)
_MAX_OPEN_FILES = 64
_BLOCK = 512  # a tar header; a member's data follows its header


@dataclass(frozen=True)
class ShardIndex:
    """The image member of each sample in tar order: its key, member number, data offset and size."""

    keys: list[str]
    members: list[int]  # in the wids reader's member list
    offsets: list[int]
    sizes: list[int]


_EMPTY = ShardIndex([], [], [], [])
OpenShard = MMIndexedTar | TarFileReader


def sample_key(name: str) -> str:
    """WebDataset's key of a member name: the name up to the first dot of its last component."""
    head, _, tail = name.rpartition("/")
    return f"{head}/{tail.split('.', 1)[0]}" if head else tail.split(".", 1)[0]


def _header_agrees(tar: MMIndexedTar, header: int, name: str, size: int) -> bool:
    """Whether the header at `header` passes the tar checksum and says what wids' scan read from it."""
    try:
        info = tarfile.TarInfo.frombuf(tar.mmapped_file[header : header + _BLOCK], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return info.name == name and info.size == size and info.isfile()


def _image_members(members: Iterator[tuple[str, int, int]], suffix: str) -> ShardIndex:
    """The index of the `*{suffix}` members among (name, data offset, size) in tar order."""
    keys, numbers, offsets, sizes = [], [], [], []
    for number, (name, offset, size) in enumerate(members):
        if name.endswith(suffix):
            keys.append(sample_key(name))
            numbers.append(number)
            offsets.append(offset)
            sizes.append(size)
    return ShardIndex(keys, numbers, offsets, sizes)


def _mapped_members(tar: MMIndexedTar) -> Iterator[tuple[str, int, int]]:
    file_size = len(tar.mmapped_file)
    for name, header, size in tar.by_index:
        if header + _BLOCK + size > file_size or not _header_agrees(tar, header, name, size):
            return  # cut off or damaged: nothing after it can be trusted
        yield name, header + _BLOCK, size


def _index_checked(path: Path, suffix: str) -> tuple[TarFileReader | None, ShardIndex]:
    """The fallback for headers wids' scan cannot parse: wids' tarfile-based reader."""
    try:
        tar = TarFileReader(str(path), index_file=None, verbose=False)
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("unreadable shard %s: %s", path, exc)
        return None, _EMPTY
    file_size = path.stat().st_size
    whole = itertools.takewhile(lambda member: member[1] + member[2] <= file_size,  # stop where data is cut off
                                ((name, offset, size) for name, (offset, size) in
                                 zip(tar.names(), np.asarray(tar.index).tolist())))
    return tar, _image_members(whole, suffix)


def open_shard(path: Path, extension: str) -> tuple[OpenShard | None, ShardIndex]:
    """The open shard (None when unreadable) and the index of its `KEY.{extension}` members.

    A truncated or damaged shard gives the samples before the damage; a missing file, none.
    """
    try:
        tar = MMIndexedTar(str(path), verbose=False)
    except OSError as exc:  # missing or unreadable: no fallback can do better
        log.warning("unreadable shard %s: %s", path, exc)
        return None, _EMPTY
    except Exception:  # wids' scan raises struct.error, ValueError, ... on a damaged header
        return _index_checked(path, f".{extension}")
    return tar, _image_members(_mapped_members(tar), f".{extension}")


def _close(_shard: int, tar: OpenShard) -> None:
    tar.close()


class ShardReader:
    """Reads decoded samples (images: HWC uint8; point clouds: float32 [N, 3], as `layout` decodes them) by
    (shard number, sample number) from one split at one level."""

    def __init__(self, shards: list[ShardInfo], encoding: Encoding, resolution: int, layout: SampleLayout = IMAGES):
        self.shards, self.encoding, self.resolution, self.layout = shards, encoding, resolution, layout
        self._indexes: dict[int, ShardIndex] = {}
        self._open: LRUCache = LRUCache(_MAX_OPEN_FILES, release_handler=_close)  # shard -> OpenShard
        self._reported: set[tuple[int, int]] = set()

    def index(self, shard: int) -> ShardIndex:
        found = self._indexes.get(shard)
        if found is None:
            self._tar(shard)
            found = self._indexes[shard]
        return found

    def key(self, shard: int, sample: int) -> str:
        """The sample's key, or a placeholder naming the shard when its header is unreadable."""
        keys = self.index(shard).keys
        return keys[sample] if sample < len(keys) else f"{self.shards[shard].path.name}#{sample}"

    def read(self, shard: int, sample: int) -> np.ndarray | None:
        """The sample, or None (logged once) when it cannot be read or decoded."""
        data = self.read_bytes(shard, sample)
        if data is None:
            return None
        try:
            return self.layout.decode(data, self.encoding, self.resolution)
        except ImageProblem as exc:
            return self._bad(shard, sample, str(exc))

    def read_bytes(self, shard: int, sample: int) -> bytes | None:
        """The image member's bytes as stored, or None (logged once) when they cannot be read."""
        index = self.index(shard)
        if sample >= len(index.keys):
            return self._bad(shard, sample, "missing from the shard (truncated or damaged)")
        size = index.sizes[sample]
        tar = self._tar(shard)
        if tar is None:  # indexed earlier, gone since it left the LRU
            return self._bad(shard, sample, "its shard can no longer be opened")
        try:
            if isinstance(tar, MMIndexedTar):
                offset = index.offsets[sample]
                data = tar.mmapped_file[offset : offset + size]
            else:
                data = tar.get_file(index.members[sample])[1].getvalue()
        except (OSError, ValueError) as exc:
            return self._bad(shard, sample, f"unreadable: {exc}")
        if len(data) != size:
            return self._bad(shard, sample, "cut off (truncated shard)")
        return data

    def close(self) -> None:
        self._open.clear()

    def _tar(self, shard: int) -> OpenShard | None:
        """The open shard (opened, and indexed the first time, when not in the LRU); None if unreadable."""
        tar = self._open[shard]
        if tar is not None or (shard in self._indexes and not self._indexes[shard].keys):
            return tar
        path = self.shards[shard].path
        tar, index = open_shard(path, self.encoding)
        if tar is not None:
            self._open[shard] = tar
        if shard not in self._indexes:
            self._indexes[shard] = index
            if len(index.keys) != self.shards[shard].count:
                log.warning("shard %s holds %d readable samples, the manifest says %d",
                            path, len(index.keys), self.shards[shard].count)
        return tar

    def _bad(self, shard: int, sample: int, reason: str) -> None:
        if (shard, sample) not in self._reported:
            self._reported.add((shard, sample))
            log.warning("skipping sample %s of %s: %s", self.key(shard, sample), self.shards[shard].path, reason)
        return None

    def __del__(self) -> None:
        self.close()
