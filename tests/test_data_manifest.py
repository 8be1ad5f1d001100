"""The manifest: what eval and the trainer rely on, and clear errors when it is missing or damaged."""

import json

import pytest
from data_helpers import write_identity_folder

from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.manifest import load_manifest
from sivae.data_pipeline.sources import FolderSource


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    write_identity_folder(root / "src", 7, 8)
    options = BuildOptions(workers=1, max_resolution=8, shard_size=3, test_fraction=0.3)
    build_dataset(FolderSource(root / "src"), root / "set", options, progress=False)
    return root / "set"


def test_contract_fields(built):
    m = load_manifest(built)
    assert m.source == f"folder:{built.parent / 'src'}"
    assert m.split_sizes == {"train": 5, "test": 2}
    assert m.resolutions == [4, 8]
    train = m.shards("train", 8)
    assert [s.count for s in train] == [3, 2]
    assert all(s.path.is_absolute() and s.path.is_file() and len(s.sha256) == 64 for s in train)
    assert len(m.digest) == 64
    with pytest.raises(DataError, match=r"no split 'val'; this data set has \['test', 'train'\]"):
        m.shards("val", 8)
    with pytest.raises(DataError, match=r"no 16px level; this data set has \[4, 8\]"):
        m.shards("train", 16)


def _edited(built, tmp_path, edit):
    data = json.loads((built / "manifest.json").read_text())
    edit(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return tmp_path


def test_missing_or_unreadable_manifests_are_named(built, tmp_path):
    with pytest.raises(DataError, match="no such directory: build one with `sivae data build"):
        load_manifest(tmp_path / "absent")
    with pytest.raises(DataError, match="not a built data set"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": ')
    with pytest.raises(DataError, match=r"manifest\.json: unreadable or not JSON"):
        load_manifest(tmp_path)


def test_damaged_fields_are_named_by_key(built, tmp_path):
    def wrong_type(d):
        d["shard_table"]["train"]["4"][0]["count"] = "three"

    def wrong_count(d):
        d["shard_table"]["train"]["4"][0]["count"] = 2

    def wrong_checksum(d):
        d["shard_table"]["test"]["8"][0]["sha256"] = "0" * 64

    def missing_level(d):
        del d["shard_table"]["test"]["8"]

    cases = {
        wrong_type: r"shard_table\.train\.4\[0\]\.count: expected an integer",
        wrong_count: r"shard_table\.train\.4: counts add up to 4, split_sizes says 5",
        wrong_checksum: "digest: does not match the shard checksums",
        missing_level: r"shard_table\.test: must list every resolution",
    }
    for edit, message in cases.items():
        with pytest.raises(DataError, match=message):
            load_manifest(_edited(built, tmp_path, edit))
