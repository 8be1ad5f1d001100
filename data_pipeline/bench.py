"""Loader speed against PIL decoding of the same images (`sivae data bench`, benchmarks/data_loader_speed.py).

Rates per resolution, in images per second, all in one run over the same images:
- loader: `TrainStream` batches as the trainer gets them (float32 [B, 3, R, R], shuffled, flipped),
  counted from the first batch on (startup reported apart), with 0, 1, 2, ... worker processes;
  also with `as_uint8` (uint8 batches, for converting on the accelerator);
- PIL decode: `Image.open(...).load()` alone, one process, on PNG bytes of the same images: the
  bytes the shards hold for PNG levels, the images PNG-encoded by PIL (default settings) for .npy levels;
- PIL folder loop: those PNGs as files in a folder, read with PIL into float32 batches in one
  process: what a plain loader without shards does.
Each figure is the best of three timings of at least half a second.
"""

from __future__ import annotations

import io
import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sivae.data_pipeline.loader import TrainStream, to_unit_range
from sivae.data_pipeline.manifest import load_manifest
from sivae.data_pipeline.shards import ShardReader


@dataclass(frozen=True)
class BenchRow:
    resolution: int
    encoding: str  # how the shards store this level
    workers: int
    loader: float  # images/s, float32 batches
    loader_uint8: float  # images/s, uint8 batches (as_uint8: convert on the accelerator)
    startup: float  # seconds to the first batch
    pil_decode: float  # images/s
    pil_folder: float  # images/s


def sample_pngs(data_dir: str | Path, resolution: int, count: int, split: str = "train") -> list[bytes]:
    """PNG bytes of the first `count` samples: as stored (PNG levels) or PNG-encoded by PIL (.npy levels)."""
    manifest = load_manifest(data_dir)
    reader = ShardReader(manifest.shards(split, resolution), manifest.encoding(resolution), resolution)
    pngs = []
    for shard, info in enumerate(reader.shards):
        for sample in range(info.count):
            if len(pngs) == count:
                return pngs
            if reader.encoding == "png":
                pngs.append(reader.read_bytes(shard, sample))
            else:
                buf = io.BytesIO()
                Image.fromarray(reader.read(shard, sample)).save(buf, format="PNG")
                pngs.append(buf.getvalue())
    return pngs


def best_rate(step: Callable[[], int], seconds: float = 0.5, repeats: int = 3) -> float:
    """Images/s: the best of `repeats` timings, each of `step()` (returning images done) for >= `seconds`.
    The best, because on a shared machine the slower timings measure the other processes."""
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            done += step()
        rates.append(done / elapsed)
    return max(rates)


def pil_decode_step(pngs: list[bytes]) -> Callable[[], int]:
    def step() -> int:
        for data in pngs:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        return len(pngs)

    return step


def pil_folder_step(folder: Path, batch_size: int) -> Callable[[], int]:
    files = sorted(folder.iterdir())
    batches = itertools.cycle([files[i : i + batch_size] for i in range(0, len(files), batch_size)])

    def step() -> int:
        arrays = []
        for path in next(batches):
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        to_unit_range(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
        return len(arrays)

    return step


def loader_rate(data_dir: str | Path, resolution: int, workers: int, batch_size: int,
                as_uint8: bool = False) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch)."""
    start = time.perf_counter()
    stream = iter(TrainStream(data_dir, resolution, batch_size, workers=workers, as_uint8=as_uint8))
    next(stream)
    startup = time.perf_counter() - start

    def step() -> int:
        return next(stream).images.shape[0]

    return best_rate(step), startup


def run_bench(data_dir: str | Path, resolutions: list[int], workers: list[int], batch_size: int = 64,
              images: int = 500) -> list[BenchRow]:
    """One row per (resolution, worker count); the PIL figures use the first `images` training samples."""
    manifest = load_manifest(data_dir)
    rows = []
    for resolution in resolutions:
        pngs = sample_pngs(data_dir, resolution, images)
        with tempfile.TemporaryDirectory() as tmp:
            for i, data in enumerate(pngs):
                (Path(tmp) / f"{i:06d}.png").write_bytes(data)
            decode = best_rate(pil_decode_step(pngs))
            folder = best_rate(pil_folder_step(Path(tmp), batch_size))
        for w in workers:
            rate, startup = loader_rate(data_dir, resolution, w, batch_size)
            rate_uint8, _ = loader_rate(data_dir, resolution, w, batch_size, as_uint8=True)
            rows.append(BenchRow(resolution, manifest.encoding(resolution), w, rate, rate_uint8, startup, decode,
                                 folder))
    return rows


def format_table(rows: list[BenchRow]) -> str:
    lines = [
        "| px | stored as | workers | loader img/s | loader / decode | uint8 loader img/s | startup s "
        "| PIL decode img/s | PIL folder img/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.resolution} | {r.encoding} | {r.workers} | {r.loader:,.0f} | {r.loader / r.pil_decode:.2f} "
            f"| {r.loader_uint8:,.0f} | {r.startup:.2f} | {r.pil_decode:,.0f} | {r.pil_folder:,.0f} |"
        )
    return "\n".join(lines)
