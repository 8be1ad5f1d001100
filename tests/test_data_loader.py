"""The training stream and the eval pass, on a data set whose pixels say which sample they are."""

import dataclasses
import itertools
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import identity_image, sample_ids, write_identity_folder
from process_helpers import rendezvous_env, run_together

from sivae.core.config import ConfigError, dump_yaml
from sivae.core.run_dir import RunDir
from sivae.data_pipeline import layouts as layouts_module
from sivae.data_pipeline import loader as loader_module
from sivae.data_pipeline.bench import stream_cpu_row
from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.config import DataConfig
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.loader import TrainStream, auto_workers, eval_batches, fill_train_batch, local_batches
from sivae.data_pipeline.manifest import load_manifest
from sivae.data_pipeline.shards import ShardReader
from sivae.data_pipeline.sources import FolderSource
from sivae.train.schema import RunConfig

B = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """60 images; 8px stored as PNG, 4px as .npy; 48 train samples in shards of 7 (the last one 6), 12 test."""
    root = tmp_path_factory.mktemp("loader")
    write_identity_folder(root / "src", 60, 8)
    options = BuildOptions(workers=1, max_resolution=8, shard_size=7, test_fraction=0.2, raw_max_resolution=4)
    build_dataset(FolderSource(root / "src"), root / "set", options, progress=False)
    return root / "set"


def split_ids(data, split):
    m = load_manifest(data)
    ids = set()
    for shard in m.shards(split, 4):
        with tarfile.open(shard.path) as tar:
            ids |= {int(name[4:8]) for name in tar.getnames()}
    return ids


def take(stream, n):
    return list(itertools.islice(iter(stream), n))


def as_bytes(images):
    """float images in [-1, 1] back to the uint8 they came from (exact: the mapping is (v - 127.5) / 127.5)."""
    return (images * 127.5 + 127.5).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("resolution", [4, 8])
def test_batches_are_training_images_in_unit_range(data, resolution):
    batches = take(TrainStream(data, resolution, B, workers=0), 20)
    raw = take(TrainStream(data, resolution, B, workers=0, as_uint8=True), 20)
    train = split_ids(data, "train")
    for batch, u8 in zip(batches, raw):
        assert batch.images.shape == (B, 3, resolution, resolution) and batch.images.dtype == torch.float32
        assert u8.images.dtype == torch.uint8 and batch.skipped == 0
        assert torch.equal(batch.images, (u8.images.float() - 127.5) / 127.5)
        for (i, flipped), image in zip(sample_ids(u8.images.numpy()), u8.images.numpy()):
            assert i in train
            expected = identity_image(i, resolution).transpose(2, 0, 1)
            assert np.array_equal(image, expected[:, :, ::-1] if flipped else expected)
    assert batches[0].images.min() == -1.0 or batches[0].images.max() == 1.0


def test_flips_follow_the_flag(data):
    flips = [f for b in take(TrainStream(data, 4, B, workers=0), 10) for _, f in sample_ids(as_bytes(b.images))]
    assert 0.3 < np.mean(flips) < 0.7
    unflipped = take(TrainStream(data, 4, B, workers=0, flip=False), 10)
    assert not any(f for b in unflipped for _, f in sample_ids(as_bytes(b.images)))


def test_every_training_sample_comes_about_equally_often(data):
    batches = take(TrainStream(data, 4, B, workers=0, shuffle_buffer=20), 48 * 30 // B)
    counts = np.bincount([i for b in batches for i, _ in sample_ids(as_bytes(b.images))], minlength=60)
    train = sorted(split_ids(data, "train"))
    assert counts[train].min() >= 15 and counts[train].max() <= 45  # 30 expected for each
    assert counts.sum() == counts[train].sum()  # test samples never


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_at_any_batch_gives_the_same_batches(data, workers):
    full = take(TrainStream(data, 8, B, workers=workers, shuffle_buffer=30, seed=3), 21)
    for k in (1, 6, 13):
        resumed = take(TrainStream(data, 8, B, workers=workers, shuffle_buffer=30, seed=3, start_batch=k), 21 - k)
        assert all(torch.equal(a.images, b.images) for a, b in zip(full[k:], resumed)), k


def test_one_worker_process_streams_what_no_worker_process_streams(data):
    a, b = take(TrainStream(data, 8, B, workers=0), 6), take(TrainStream(data, 8, B, workers=1), 6)
    assert all(torch.equal(x.images, y.images) for x, y in zip(a, b))


def test_global_batch_k_is_local_batch_k_div_w_of_worker_k_mod_w(data):
    """The documented mapping, through the DataLoader and its shared-memory slots, with a consumer that
    keeps every batch and is sometimes slower than the workers (a reused slot would show)."""
    stream = TrainStream(data, 8, B, workers=2, shuffle_buffer=30, start_batch=3)
    got = []
    for n, batch in enumerate(itertools.islice(iter(stream), 14)):
        got.append(batch.images)
        if n % 3 == 0:
            time.sleep(0.05)
    reader = ShardReader(stream.shards, stream.encoding, 8)
    for k, images in enumerate(got, start=3):
        worker, local = k % 2, k // 2
        items = next(local_batches(stream.order, worker, local))
        expected = np.empty((B, 3, 8, 8), np.uint8)
        fill_train_batch(reader, stream.order, worker, local, items, expected)
        assert np.array_equal(as_bytes(images), expected), k


def test_skipping_to_the_start_decodes_nothing_before_it(data, monkeypatch):
    decoded = []
    real = layouts_module.IMAGES.decode

    def counting(*args):
        decoded.append(1)
        return real(*args)

    monkeypatch.setitem(layouts_module.LAYOUTS, "images", dataclasses.replace(layouts_module.IMAGES, decode=counting))
    next(iter(TrainStream(data, 8, B, workers=0, start_batch=5000)))
    assert len(decoded) == B


def test_ranks_seeds_and_streams_differ(data):
    def ids(**kw):
        return [sample_ids(as_bytes(b.images)) for b in take(TrainStream(data, 4, B, workers=0, **kw), 4)]

    assert ids(seed=1) == ids(seed=1)
    assert ids(seed=1) != ids(seed=2)
    assert ids(rank=0, world_size=2) != ids(rank=1, world_size=2)
    two = [sample_ids(as_bytes(b.images)) for b in take(TrainStream(data, 4, B, workers=2), 8)]
    assert two[0::2] != two[1::2]  # worker 0's batches are not worker 1's


def test_fewer_shards_than_ranks_times_workers(tmp_path):
    write_identity_folder(tmp_path / "src", 10, 4)
    options = BuildOptions(workers=1, max_resolution=4, test_fraction=0.0)
    build_dataset(FolderSource(tmp_path / "src"), tmp_path / "one", options, progress=False)
    assert len(load_manifest(tmp_path / "one").shards("train", 4)) == 1
    per_rank = [take(TrainStream(tmp_path / "one", 4, 4, rank=r, world_size=4, workers=2), 4) for r in range(4)]
    firsts = [as_bytes(batches[0].images).tobytes() for batches in per_rank]
    assert len(set(firsts)) == 4


def _damage(data, tmp_path):
    """A copy with one 8px PNG sample unreadable and another shard cut inside its 4th sample.

    Returns (dir, ids of the samples lost, the keys eval reports for them: a cut-off header's key is
    unknown, so it reads SHARD#n)."""
    copy = tmp_path / "damaged"
    shutil.copytree(data, copy)
    m = load_manifest(copy)
    first, second = m.shards("train", 8)[0].path, m.shards("train", 8)[2].path
    with tarfile.open(first) as tar:
        member = tar.getmembers()[3]
    with open(first, "r+b") as f:
        f.seek(member.offset_data)
        f.write(b"\0" * 8)  # no PNG signature any more
    lost, keys = {int(member.name[4:8])}, {member.name.split(".")[0]}
    with tarfile.open(second) as tar:
        members = tar.getmembers()
    cut = members[3].offset_data + members[3].size // 2
    lost |= {int(m.name[4:8]) for m in members[3:]}
    keys |= {f"{second.name}#{n}" for n in range(3, len(members))}
    with open(second, "r+b") as f:
        f.truncate(cut)
    return copy, lost, keys


def test_unreadable_samples_are_skipped_counted_and_keep_resume_exact(data, tmp_path):
    damaged, lost, _ = _damage(data, tmp_path)
    full = take(TrainStream(damaged, 8, B, workers=0, shuffle_buffer=10), 30)
    assert sum(b.skipped for b in full) > 0
    seen = {i for b in full for i, _ in sample_ids(as_bytes(b.images))}
    assert not seen & lost and len(seen) > 30
    resumed = take(TrainStream(damaged, 8, B, workers=0, shuffle_buffer=10, start_batch=11), 19)
    assert [b.skipped for b in resumed] == [b.skipped for b in full[11:]]
    assert all(torch.equal(a.images, b.images) for a, b in zip(full[11:], resumed))
    in_workers = take(TrainStream(damaged, 8, B, workers=2, shuffle_buffer=10), 30)
    assert sum(b.skipped for b in in_workers) > 0 and all(b.images.shape[0] == B for b in in_workers)


@pytest.mark.parametrize("split", ["train", "test"])
def test_eval_gives_each_sample_once_across_ranks(data, split):
    expected = split_ids(data, split)
    per_rank = [list(eval_batches(data, split, 8, 5, rank=r, world_size=3, as_uint8=True)) for r in range(3)]
    assert len({len(batches) for batches in per_rank}) == 1
    keys = []
    for batches in per_rank:
        for batch in batches:
            assert batch.images.shape == (5, 3, 8, 8) and batch.images.dtype == torch.uint8
            for key, ok, image in zip(batch.keys, batch.valid.tolist(), batch.images.numpy()):
                assert ok == (key != "")
                if ok:
                    keys.append(key)
                    assert np.array_equal(image, identity_image(int(key[4:8]), 8).transpose(2, 0, 1))
    assert sorted(int(k[4:8]) for k in keys) == sorted(expected)


def test_eval_workers_and_float_images_match(data):
    plain = list(eval_batches(data, "train", 4, 7, workers=0))
    pooled = list(eval_batches(data, "train", 4, 7, workers=2))
    raw = list(eval_batches(data, "train", 4, 7, as_uint8=True))
    assert [b.keys for b in plain] == [b.keys for b in pooled] == [b.keys for b in raw]
    for a, b, u in zip(plain, pooled, raw):
        assert torch.equal(a.images, b.images) and torch.equal(a.valid, b.valid)
        assert torch.equal(a.images, (u.images.float() - 127.5) / 127.5)


def test_eval_with_more_ranks_than_samples_pads_every_rank(data):
    counts = [len(list(eval_batches(data, "test", 4, 4, rank=r, world_size=16))) for r in range(16)]
    assert counts == [1] * 16


def test_eval_marks_unreadable_samples_invalid(data, tmp_path):
    damaged, lost, lost_keys = _damage(data, tmp_path)
    entries = [(k, ok) for b in eval_batches(damaged, "train", 8, 6) for k, ok in zip(b.keys, b.valid.tolist())]
    valid = {int(k[4:8]) for k, ok in entries if ok}
    assert not valid & lost and len(valid) == 48 - len(lost)
    assert {k for k, ok in entries if k and not ok} == lost_keys


def test_wrong_requests_are_clear_errors(data, tmp_path):
    with pytest.raises(DataError, match="no split 'val'"):
        TrainStream(data, 8, B, split="val")
    with pytest.raises(DataError, match="no 16px level"):
        eval_batches(data, "test", 16, B)
    with pytest.raises(ValueError, match="rank must be in"):
        TrainStream(data, 8, B, rank=2, world_size=2)
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    load_manifest(copy).shards("train", 8)[1].path.unlink()
    with pytest.raises(DataError, match=r"missing, e\.g\. .*000001\.tar"):
        TrainStream(copy, 8, B)


def test_two_gloo_processes_see_every_eval_sample_once_with_equal_batch_counts(tmp_path):
    """Two real processes in a gloo group, each reading its rank's part with a worker process and
    running a collective per batch; 11 samples, so the ranks hold 5 and 6."""
    keys = write_identity_folder(tmp_path / "src", 11, 4)
    options = BuildOptions(workers=1, max_resolution=4, shard_size=3, test_fraction=1.0)
    build_dataset(FolderSource(tmp_path / "src"), tmp_path / "set", options, progress=False)
    root = Path(__file__).resolve().parents[1]
    env = {**rendezvous_env(2), "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "seen.json"
    command = [sys.executable, str(root / "tests" / "data_eval_rank.py"), str(tmp_path / "set"), "test", "4", "4",
               str(out)]
    run_together(command, [{**env, "RANK": str(r)} for r in range(2)], root, timeout=180)
    seen = json.loads(out.read_text())
    assert [r["batches"] for r in seen] == [2, 2]
    assert sorted(len(r["keys"]) for r in seen) == [5, 6]
    assert sorted(k for r in seen for k in r["keys"]) == keys


# --- automatic worker counts (data.workers: null) ---------------------------------------------


@pytest.mark.parametrize("cpus, env, expected", [
    (2, {}, 1),  # this VM: one decoder, one core left to the training process
    (1, {}, 1),  # never in-process by default: 0 only when asked for
    (16, {"LOCAL_WORLD_SIZE": "2"}, 7),  # 8 CPUs per rank, minus the rank's own
    (16, {"LOCAL_WORLD_SIZE": "8"}, 1),  # 2 per rank
    (16, {"LOCAL_WORLD_SIZE": "32"}, 1),  # fewer CPUs than ranks: still one
    (64, {}, 8),  # 63 would be the share: capped
    (96, {"LOCAL_WORLD_SIZE": "4"}, 8),  # 24 per rank: capped
    (6, {"LOCAL_WORLD_SIZE": "4", "SLURM_CPUS_PER_TASK": "6"}, 5),  # srun bound this task to its own 6 CPUs
    (24, {"LOCAL_WORLD_SIZE": "4", "SLURM_CPUS_PER_TASK": "6"}, 5),  # all 24 of the node visible: shared by 4
    (4, {"LOCAL_WORLD_SIZE": " "}, 3),  # blank reads as unset
])
def test_automatic_workers_from_the_cpus_per_rank(cpus, env, expected):
    assert auto_workers(env, cpus) == expected


def test_automatic_workers_read_the_affinity_and_the_environment(monkeypatch):
    monkeypatch.setattr(loader_module.os, "sched_getaffinity", lambda pid: set(range(12)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert auto_workers() == 3  # 12 CPUs / 3 ranks = 4, one kept by the rank


@pytest.mark.parametrize("cpus, workers", [(2, 1), (5, 4)])  # fewer and more workers than the order's streams
def test_automatic_workers_stream_what_two_workers_stream(data, monkeypatch, cpus, workers):
    monkeypatch.setattr(loader_module.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    auto = TrainStream(data, 8, B, workers=None, shuffle_buffer=30, seed=5, start_batch=3)
    assert auto.workers == workers
    expected = take(TrainStream(data, 8, B, workers=2, shuffle_buffer=30, seed=5, start_batch=3), 13)
    got = take(auto, 13)
    assert all(torch.equal(a.images, b.images) for a, b in zip(expected, got))
    assert len(got) == 13


def test_explicit_worker_counts_keep_their_own_streams(data):
    one, three = (take(TrainStream(data, 4, B, workers=w, seed=2), 6) for w in (1, 3))
    assert take(TrainStream(data, 4, B, workers=0, seed=2), 6)[3].images.equal(one[3].images)
    assert not all(a.images.equal(b.images) for a, b in zip(one, three))  # 1 stream vs 3 streams


def test_data_config_defaults_to_automatic_workers_and_keeps_explicit_ones():
    assert DataConfig().workers is None
    assert DataConfig(workers=0).workers == 0 and DataConfig(workers=5).workers == 5
    with pytest.raises(ConfigError, match="workers"):
        DataConfig(workers=-1)


def test_a_run_started_with_two_workers_resumes_with_automatic_ones(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    started = RunConfig()
    started.data.workers = 2  # what every run stored before the automatic default
    dump_yaml(started, run.config)
    run.check_resume(RunConfig())  # automatic: the same order, resumes
    for other in (1, 3):  # another explicit count is another order: refused, saying so
        cfg = RunConfig()
        cfg.data.workers = other
        with pytest.raises(ConfigError, match=rf"data\.workers: 2 -> {other}"):
            run.check_resume(cfg)
    dump_yaml(RunConfig(), run.config)  # started automatic
    run.check_resume(started)
    one = RunConfig()
    one.data.workers = 1
    with pytest.raises(ConfigError, match=r"data\.workers: None -> 1"):
        run.check_resume(one)


def test_per_core_rows_count_the_worker_processes_cpu(data):
    """benchmarks/data_loader_speed.py --per-core: with workers, the decoding CPU is the workers' own."""
    in_process = stream_cpu_row(data, 8, 0, B, as_uint8=True, seconds=0.3)
    one = stream_cpu_row(data, 8, 1, B, as_uint8=False, seconds=0.3)
    assert in_process.images_per_s > 0 and in_process.worker_cpu_per_image_ms > 0
    assert in_process.main_cpu_per_image_ms == 0  # one process: all of it is the "worker" column
    assert one.worker_cpu_per_image_ms > 0 and one.main_cpu_per_image_ms > 0  # the consumer converts to float32
    assert (one.path, one.workers) == ("float32 stream", 1)
