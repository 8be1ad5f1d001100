"""The training iteration reads nothing back from the device between the host's looks (a host read waits
for every queued GPU kernel); on the CPU, reads of tensor values are counted instead."""

import sys
from pathlib import Path

import pytest
import torch

from sivae.core.config import load_config
from sivae.core.distributed import single_process_env
from sivae.core.schedule import LevelConfig
from sivae.data_pipeline import loader
from sivae.train.schema import RunConfig
from sivae.train.trainer import Trainer

TINY = Path(__file__).parent / "tiny_run.yaml"
# every way Python code turns a tensor's value into a host value
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
# the loader's own arithmetic on host batches before they are copied to the device (on a GPU it touches no
# device tensor; on the CPU the device is the host)
HOST_DATA_CODE = loader.__file__


class ReadCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self.counting(original))

    def counting(self, original):
        def read(tensor, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename != HOST_DATA_CODE:
                self.count += 1
            return original(tensor, *args, **kwargs)

        return read


def tiny_config(data: Path, *overrides: str) -> RunConfig:
    cfg = load_config(RunConfig, TINY, [f"data.path={data}", *overrides])
    cfg.train.backend = "single"
    return cfg


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_host_read_between_the_hosts_looks(tmp_path, digits16, monkeypatch, precision):
    """4px -> 16px with warm-up and fade-ins: an iteration whose host does not look (every 5th, and the
    cadences: logs every 10th here) reads no tensor value, and a look reads at least once."""
    cfg = tiny_config(digits16, f"train.precision={precision}", "train.check_every_iterations=5",
                      "train.log_every_kimg=0.16", "train.sample_every_kimg=100", "train.checkpoint_every_kimg=100",
                      "train.snapshot_every_kimg=100", "train.total_kimg=0.56")  # fmt: skip
    windows: list[tuple[int, int]] = []  # (iteration, host reads since the previous iteration ended)
    counter = None

    def iteration_done(progress) -> None:
        windows.append((progress.iteration, counter.count))
        counter.count = 0

    trainer = Trainer(cfg, tmp_path / "run", single_process_env("cpu"), console=False, on_iteration=iteration_done)
    counter = ReadCounter(monkeypatch)  # set up (building, the first checkpoint scan) reads as it likes
    assert trainer.run() == 0
    assert [i for i, _ in windows] == list(range(1, 36))
    looks = {i for i in range(1, 36) if i % 5 == 0 or i % 10 == 0 or i == 35}
    # a level's first iteration (8 and 16 iterations per level here) opens its data stream: torch's
    # DataLoader draws its base seed with a read of a host tensor
    looks |= {9, 25}
    reads = {i: n for i, n in windows[1:]}  # the first window holds the run's start (level entry, stream opening)
    assert {i: n for i, n in reads.items() if i not in looks} == dict.fromkeys(set(reads) - looks, 0)
    assert all(reads[i] >= 1 for i in looks), "the looks read the skip counters"


def test_the_for_loop_adam_reads_its_flag_every_phase(tmp_path, digits16, monkeypatch):
    """The counter sees host reads: torch's for-loop Adam cannot skip on the device, so each phase's update
    reads its finiteness flag, and it reads its step counts on the host too (the reason fused Adam is the
    default)."""
    cfg = tiny_config(digits16, "train.optimizer.fused=false", "train.total_kimg=0.32", "train.vae_warmup_kimg=0.16",
                      "train.check_every_iterations=100", "train.log_every_kimg=100", "train.sample_every_kimg=100",
                      "train.checkpoint_every_kimg=100", "train.snapshot_every_kimg=100")  # fmt: skip
    counts: dict[int, int] = {}
    counter = None

    def iteration_done(progress) -> None:
        counts[progress.iteration] = counter.count
        counter.count = 0

    trainer = Trainer(cfg, tmp_path / "run", single_process_env("cpu"), console=False, on_iteration=iteration_done)
    counter = ReadCounter(monkeypatch)
    assert trainer.run() == 0
    assert sorted(counts) == list(range(1, 21))
    assert all(counts[i] >= 1 for i in range(1, 11)), "warm-up: one VAE phase"
    assert all(counts[i] >= 2 for i in range(11, 21)), "the encoder's and the decoder's phases"


def test_compile_covers_every_level(tmp_path, digits32, monkeypatch):
    """4 -> 32px with warm-up and fade-ins, compiled: every forward pass of every level runs through a
    compiled graph (with torch's default limit of 8 graphs per code object, the levels after the first
    fell back to eager: ~18 graphs a level), and dynamo reports no fallback."""
    from torch._dynamo import register_backend
    from torch._dynamo.utils import counters

    level = {"lod": None}
    graph_runs: dict[int, int] = {}
    forwards: dict[int, int] = {}

    def counting(graph_module, example_inputs):
        def run(*args):
            graph_runs[level["lod"]] = graph_runs.get(level["lod"], 0) + 1
            return graph_module.forward(*args)

        return run

    register_backend(counting, name="sivae_test_counting")
    counters.clear()
    schedule = [LevelConfig(resolution=4 * 2**lod, fade_in_kimg=0.064 if lod else 0, stable_kimg=0.064, batch=16,
                            lr=0.002) for lod in range(4)]  # fmt: skip
    cfg = tiny_config(digits32, "model.max_resolution=32", "train.compile=true",
                      "train.compile_backend=sivae_test_counting", "train.vae_warmup_kimg=0.032",
                      "train.sample_every_kimg=100", "train.checkpoint_every_kimg=100",
                      "train.snapshot_every_kimg=100")  # fmt: skip
    cfg.train.schedule = schedule
    trainer = Trainer(cfg, tmp_path / "run", single_process_env("cpu"), console=False)
    real_forward, real_set_level = trainer.backend.forward, trainer.backend.set_level

    def forward(name, *args, **kwargs):
        forwards[level["lod"]] = forwards.get(level["lod"], 0) + 1
        return real_forward(name, *args, **kwargs)

    def set_level(lod, blend):
        level["lod"] = lod
        real_set_level(lod, blend)

    monkeypatch.setattr(trainer.backend, "forward", forward)
    monkeypatch.setattr(trainer.backend, "set_level", set_level)
    assert trainer.run() == 0
    assert sorted(forwards) == [0, 1, 2, 3]
    # graph breaks would add runs; a forward pass left to eager adds none
    assert all(graph_runs.get(lod, 0) >= forwards[lod] for lod in forwards), (graph_runs, forwards)
    assert not [reason for reason in counters["unimplemented"] if "recompile" in reason.lower()]
    assert counters["frames"]["total"] == counters["frames"]["ok"]
