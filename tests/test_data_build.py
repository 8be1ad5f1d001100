"""`sivae data build`: shards at every level that WebDataset reads back, exact levels, nothing lost on error."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds
from data_helpers import identity_image, write_identity_folder
from PIL import Image

from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.manifest import load_manifest
from sivae.data_pipeline.sources import DigitsSource, FolderSource

FAST = BuildOptions(workers=1, max_resolution=32, shard_size=5, test_fraction=0.25, raw_max_resolution=8)


def _build(folder, out, **changes):
    options = BuildOptions(**{**FAST.__dict__, **changes})
    return build_dataset(FolderSource(folder), out, options, progress=False)


def test_build_writes_every_level_as_webdataset_shards(tmp_path):
    keys = write_identity_folder(tmp_path / "src", 16, 32)
    manifest = _build(tmp_path / "src", tmp_path / "out")
    assert manifest.split_sizes == {"train": 12, "test": 4}
    assert manifest.resolutions == [4, 8, 16, 32]
    assert [manifest.encoding(r) for r in manifest.resolutions] == ["npy", "npy", "png", "png"]

    seen = {}
    for split, counts in (("train", [5, 5, 2]), ("test", [4])):
        order_at = {}
        for r in manifest.resolutions:
            shards = manifest.shards(split, r)
            assert [s.count for s in shards] == counts
            for shard in shards:
                assert hashlib.sha256(shard.path.read_bytes()).hexdigest() == shard.sha256
            # an independent reader: WebDataset itself, with its own decoders
            dataset = wds.WebDataset([str(s.path) for s in shards], shardshuffle=False, empty_check=False)
            samples = list(dataset.decode("rgb8"))
            order_at[r] = [s["__key__"] for s in samples]
            for sample in samples:
                image = sample["npy"] if "npy" in sample else sample["png"]
                i = int(sample["__key__"][4:8])
                assert np.array_equal(image, identity_image(i, r)), (split, r, sample["__key__"])
        assert len({tuple(order) for order in order_at.values()}) == 1  # same samples, same order, every level
        seen[split] = order_at[4]
    assert sorted(seen["train"] + seen["test"]) == keys
    assert seen["train"] != sorted(seen["train"])  # training samples are mixed across shards


def test_same_input_same_bytes_whatever_the_worker_count(tmp_path):
    write_identity_folder(tmp_path / "src", 12, 16)
    one = _build(tmp_path / "src", tmp_path / "one", max_resolution=16)
    two = _build(tmp_path / "src", tmp_path / "two", max_resolution=16, workers=2)
    assert one.digest == two.digest
    Image.fromarray(identity_image(99, 16)).save(tmp_path / "src" / "img_0000.png")
    assert _build(tmp_path / "src", tmp_path / "three", max_resolution=16).digest != one.digest


def test_digits_upsampled_keep_their_pixels(tmp_path):
    options = BuildOptions(workers=1, max_resolution=32, upsample=True, test_fraction=0.0)
    manifest = build_dataset(DigitsSource(), tmp_path / "digits", options, progress=False)
    assert manifest.split_sizes == {"train": 1797} and manifest.labels
    source = DigitsSource()
    originals = {i.key: (i.ref, i.label) for i in source.items()}
    shards8 = [str(s.path) for s in manifest.shards("train", 8)]
    shards32 = [str(s.path) for s in manifest.shards("train", 32)]
    for small, big in zip(wds.WebDataset(shards8, shardshuffle=False).decode(),
                          wds.WebDataset(shards32, shardshuffle=False).decode()):
        original, label = originals[small["__key__"]]
        assert np.array_equal(small["npy"], original)
        assert np.array_equal(big["npy"], np.repeat(np.repeat(original, 4, axis=0), 4, axis=1))
        assert small["cls"] == label


def test_sizes_that_need_a_choice_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(DataError, match="--upsample"):
        build_dataset(DigitsSource(), tmp_path / "d", BuildOptions(max_resolution=32), progress=False)
    with pytest.raises(DataError, match=r"power of two in \[4, 1024\]"):
        build_dataset(DigitsSource(), tmp_path / "d", BuildOptions(max_resolution=2048, upsample=True))
    write_identity_folder(tmp_path / "src", 6, 32)
    with pytest.raises(DataError, match="--max-resolution"):
        _build(tmp_path / "src", tmp_path / "o", max_resolution=None)
    old = _build(tmp_path / "src", tmp_path / "out")
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*"))

    Image.new("RGB", (40, 32)).save(tmp_path / "src" / "wide.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "src" / "small.png")
    with pytest.raises(DataError, match="2 image") as refused:
        build_dataset(FolderSource(tmp_path / "src"), tmp_path / "out", FAST, force=True, progress=False)
    assert "wide.png: is 40x32, not square (pass --non-square crop" in str(refused.value)
    assert "small.png: is 16x16, smaller than 32px (pass --upsample" in str(refused.value)
    assert not (tmp_path / "d").exists() and not (tmp_path / "o").exists()
    after = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*"))
    assert after == before and load_manifest(tmp_path / "out").digest == old.digest  # nothing touched


def test_unreadable_inputs_are_skipped_counted_and_listed(tmp_path):
    write_identity_folder(tmp_path / "src", 6, 32)
    (tmp_path / "src" / "junk.png").write_bytes(b"not an image at all")
    full = (tmp_path / "src" / "img_0000.png").read_bytes()
    (tmp_path / "src" / "cut.png").write_bytes(full[: len(full) // 2])  # its header reads, its pixels do not
    manifest = _build(tmp_path / "src", tmp_path / "out", test_fraction=0.0)
    assert manifest.split_sizes == {"train": 6}
    assert sorted(s["key"] for s in manifest.skipped_sources) == ["cut_png", "junk_png"]
    assert all(s["where"].startswith(str(tmp_path / "src")) and s["reason"] for s in manifest.skipped_sources)
    assert load_manifest(tmp_path / "out").skipped_sources == manifest.skipped_sources


def test_output_directory_rules(tmp_path):
    write_identity_folder(tmp_path / "src", 4, 8)
    first = _build(tmp_path / "src", tmp_path / "out", max_resolution=8)
    with pytest.raises(DataError, match="already holds a data set; pass --force"):
        _build(tmp_path / "src", tmp_path / "out", max_resolution=8)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds no data set"):
        build_dataset(FolderSource(tmp_path / "src"), tmp_path / "other", FAST, force=True, progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"

    options = BuildOptions(**{**FAST.__dict__, "max_resolution": 4, "shard_size": 100})
    smaller = build_dataset(FolderSource(tmp_path / "src"), tmp_path / "out", options, force=True, progress=False)
    assert smaller.digest != first.digest and smaller.resolutions == [4]
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["manifest.json", "test/4/000000.tar", "train/4/000000.tar"]  # the old 8px shards are gone


class Interrupt(BaseException):
    """Stands for a kill or Ctrl-C in the middle of a build."""


def test_an_interrupted_build_resumes_without_rewriting_finished_shards(tmp_path, monkeypatch):
    write_identity_folder(tmp_path / "src", 20, 16)
    options = {"max_resolution": 16, "shard_size": 4, "test_fraction": 0.0}  # 5 groups of 4, 3 levels
    clean = _build(tmp_path / "src", tmp_path / "clean", **options)

    real_load, loads = FolderSource.load, []

    def dying_load(self, ref):
        loads.append(ref)
        if len(loads) == 11:  # the 3rd sample of the 3rd group
            raise Interrupt
        return real_load(self, ref)

    monkeypatch.setattr(FolderSource, "load", dying_load)
    with pytest.raises(Interrupt):
        _build(tmp_path / "src", tmp_path / "out", **options)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="unfinished: rerun the same `sivae data build`"):
        load_manifest(out)
    finals = sorted(out.glob("train/*/*.tar"))
    assert [p.relative_to(out).as_posix() for p in finals] == [
        f"train/{r}/{i:06d}.tar" for r in (16, 4, 8) for i in (0, 1)
    ]
    for path in finals:  # a final name only ever holds a whole shard
        with tarfile.open(path) as tar:
            assert len(tar.getnames()) == 4
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finals}

    def counting_load(self, ref):
        loads.append(ref)
        return real_load(self, ref)

    loads.clear()
    monkeypatch.setattr(FolderSource, "load", counting_load)
    resumed = _build(tmp_path / "src", out, **options)
    assert len(loads) == 12 and resumed.digest == clean.digest  # only the 3 unfinished groups were made
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finals} == kept  # not rewritten
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train"]  # no build state, no temporaries
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sivae", "data", *args], capture_output=True, text=True)


def test_command_line_build_info_and_verify(tmp_path):
    write_identity_folder(tmp_path / "src", 8, 8)
    out = tmp_path / "set"
    done = _cli("build", "--source", f"folder:{tmp_path / 'src'}", "--out", str(out), "--max-resolution", "8",
                "--workers", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    digest = json.loads((out / "manifest.json").read_text())["digest"]
    assert digest in done.stdout

    assert _cli("info", str(out), "--verify").returncode == 0
    shard = out / "train" / "8" / "000000.tar"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = _cli("info", str(out), "--verify")
    assert bad.returncode == 1 and str(shard) in bad.stdout

    refused = _cli("build", "--source", f"folder:{tmp_path / 'absent'}", "--out", str(tmp_path / "x"))
    assert refused.returncode == 2
    assert "sivae data build: error:" in refused.stderr and "does not exist" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_png_levels_are_rgb_pngs(tmp_path):
    write_identity_folder(tmp_path / "src", 3, 32)
    manifest = _build(tmp_path / "src", tmp_path / "out", test_fraction=0.0)
    sample = next(iter(wds.WebDataset([str(manifest.shards("train", 32)[0].path)], shardshuffle=False)))
    with Image.open(io.BytesIO(sample["png"])) as image:
        assert image.mode == "RGB" and image.size == (32, 32)
