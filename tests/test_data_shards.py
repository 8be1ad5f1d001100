"""Random access through wids on damaged shards: the samples before the damage read, the rest are None."""

import tarfile

import numpy as np
import pytest
from data_helpers import identity_image, write_identity_folder

from sivae.data_pipeline import shards as shards_module
from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.manifest import ShardInfo, load_manifest
from sivae.data_pipeline.shards import ShardReader
from sivae.data_pipeline.sources import FolderSource

N = 10


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """One 4px .npy shard of N samples: (its bytes, its manifest entry, the tar's members)."""
    root = tmp_path_factory.mktemp("shards")
    write_identity_folder(root / "src", N, 4)
    options = BuildOptions(workers=1, max_resolution=4, shard_size=N, test_fraction=0.0)
    build_dataset(FolderSource(root / "src"), root / "set", options, progress=False)
    info = load_manifest(root / "set").shards("train", 4)[0]
    with tarfile.open(info.path) as tar:
        members = tar.getmembers()
    return info.path.read_bytes(), info, members


def _readable(tmp_path, info, members, data):
    """The sample numbers that read back as their own image, and the keys of those that read None."""
    path = tmp_path / "damaged.tar"
    path.write_bytes(data)
    reader = ShardReader([ShardInfo(path, info.count, info.sha256)], "npy", 4)
    good, bad_keys = [], []
    for n, member in enumerate(members):
        image = reader.read(0, n)
        if image is None:
            bad_keys.append(reader.key(0, n))
        else:
            assert np.array_equal(image, identity_image(int(member.name[4:8]), 4))
            good.append(n)
    reader.close()
    return good, bad_keys


def test_an_intact_shard_reads_every_sample_through_the_map(shard, tmp_path):
    data, info, members = shard
    assert _readable(tmp_path, info, members, data) == (list(range(N)), [])


def test_a_cut_inside_a_header_falls_back_and_keeps_the_samples_before(shard, tmp_path, monkeypatch):
    data, info, members = shard
    fallbacks = []
    real = shards_module._index_checked
    monkeypatch.setattr(shards_module, "_index_checked", lambda *a: fallbacks.append(1) or real(*a))
    good, bad = _readable(tmp_path, info, members, data[: members[4].offset + 100])
    assert fallbacks and good == [0, 1, 2, 3]
    assert bad == [f"damaged.tar#{n}" for n in range(4, N)]


def test_a_header_failing_its_checksum_ends_the_index(shard, tmp_path):
    data, info, members = shard
    damaged = bytearray(data)
    damaged[members[5].offset + 2] ^= 0x01  # a name byte: still parses, the checksum no longer matches
    good, _ = _readable(tmp_path, info, members, bytes(damaged))
    assert good == [0, 1, 2, 3, 4]


def test_a_garbled_size_field_falls_back_to_the_checked_reader(shard, tmp_path):
    data, info, members = shard
    damaged = bytearray(data)
    damaged[members[6].offset + 124 : members[6].offset + 128] = b"zz9z"  # the size field is octal digits
    good, _ = _readable(tmp_path, info, members, bytes(damaged))
    assert good == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 40, None])
def test_empty_garbage_or_missing_shards_read_as_none(shard, tmp_path, content):
    _, info, _ = shard
    path = tmp_path / "bad.tar"
    if content is not None:
        path.write_bytes(content)
    reader = ShardReader([ShardInfo(path, info.count, info.sha256)], "npy", 4)
    assert [reader.read(0, n) for n in range(N)] == [None] * N
    assert reader.key(0, 3) == "bad.tar#3"


def test_at_most_the_lru_capacity_of_shards_stay_open(tmp_path, monkeypatch):
    write_identity_folder(tmp_path / "src", N, 4)
    options = BuildOptions(workers=1, max_resolution=4, shard_size=2, test_fraction=0.0)
    build_dataset(FolderSource(tmp_path / "src"), tmp_path / "set", options, progress=False)
    shards = load_manifest(tmp_path / "set").shards("train", 4)
    monkeypatch.setattr(shards_module, "_MAX_OPEN_FILES", 2)
    reader = ShardReader(shards, "npy", 4)
    first = [[reader.read(s, n) for n in range(2)] for s in range(len(shards))]
    for _ in range(2):  # evicted shards reopen and read the same images
        for s in reversed(range(len(shards))):
            assert len(reader._open) <= 2
            assert all(np.array_equal(reader.read(s, n), first[s][n]) for n in range(2))
    assert all(image is not None for images in first for image in images)
    reader.close()
    assert len(reader._open) == 0
