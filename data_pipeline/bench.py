"""Loader speed against PIL decoding of the same images (`sivae data bench`, benchmarks/data_pipeline.py).

Three rates per resolution, in images per second, all in one run over the same images:
- loader: `TrainStream` batches as the trainer gets them (float32 [B, 3, R, R], shuffled, flipped),
  counted from the first batch on (startup reported apart), with 0, 1, 2, ... worker processes;
- PIL decode: `Image.open(...).load()` alone, one process, on PNG bytes of the same images: the
  bytes the shards hold for PNG levels, the images PNG-encoded by PIL (default settings) for .npy levels;
- PIL folder loop: those PNGs as files in a folder, read with PIL into float32 batches in one
  process: what a plain loader without shards does.
"""

from __future__ import annotations

import io
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_pipeline.loader import TrainStream, to_unit_range
from data_pipeline.manifest import load_manifest
from data_pipeline.shards import ShardReader


@dataclass(frozen=True)
class BenchRow:
    resolution: int
    encoding: str  # how the shards store this level
    workers: int
    loader: float  # images/s
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


def pil_decode_rate(pngs: list[bytes], min_seconds: float = 1.0) -> float:
    done, start = 0, time.perf_counter()
    while True:
        for data in pngs:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        done += len(pngs)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def pil_folder_rate(folder: Path, batch_size: int, min_seconds: float = 1.0) -> float:
    files = sorted(folder.iterdir())
    done, start = 0, time.perf_counter()
    while True:
        for i in range(0, len(files), batch_size):
            arrays = []
            for path in files[i : i + batch_size]:
                with Image.open(path) as image:
                    arrays.append(np.asarray(image.convert("RGB")))
            to_unit_range(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
            done += len(arrays)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def loader_rate(data_dir: str | Path, resolution: int, workers: int, batch_size: int,
                images: int) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch)."""
    start = time.perf_counter()
    stream = iter(TrainStream(data_dir, resolution, batch_size, workers=workers))
    next(stream)
    first = time.perf_counter()
    batches = max(1, images // batch_size)
    for _ in itertools.islice(stream, batches):
        pass
    return batches * batch_size / (time.perf_counter() - first), first - start


def run_bench(data_dir: str | Path, resolutions: list[int], workers: list[int], batch_size: int = 64,
              images: int = 2000) -> list[BenchRow]:
    manifest = load_manifest(data_dir)
    rows = []
    for resolution in resolutions:
        pngs = sample_pngs(data_dir, resolution, images)
        with tempfile.TemporaryDirectory() as tmp:
            for i, data in enumerate(pngs):
                (Path(tmp) / f"{i:06d}.png").write_bytes(data)
            decode, folder = pil_decode_rate(pngs), pil_folder_rate(Path(tmp), batch_size)
        for w in workers:
            rate, startup = loader_rate(data_dir, resolution, w, batch_size, images)
            rows.append(BenchRow(resolution, manifest.encoding(resolution), w, rate, startup, decode, folder))
    return rows


def format_table(rows: list[BenchRow]) -> str:
    lines = [
        "| px | stored as | workers | loader img/s | startup s | PIL decode img/s | loader / decode "
        "| PIL folder img/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.resolution} | {r.encoding} | {r.workers} | {r.loader:,.0f} | {r.startup:.2f} | {r.pil_decode:,.0f} "
            f"| {r.loader / r.pil_decode:.2f} | {r.pil_folder:,.0f} |"
        )
    return "\n".join(lines)
