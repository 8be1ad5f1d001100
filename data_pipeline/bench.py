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


# ---------------------------------------------------------------------------------------------
# Per worker core (issue 12): CPU seconds, so that a shared machine's other jobs do not count


def procedural_images(folder: Path, count: int, side: int, seed: int = 0) -> None:
    """Smooth random colour fields with a few disks and pixel noise: PNGs that compress and decode like
    photographs do, more or less, and need no download."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(count):
        low = rng.uniform(0, 255, (4, 4, 3))
        image = np.stack([np.interp(yy * 3, np.arange(4), low[:, 0, c]) * 0.5 +
                          np.interp(xx * 3, np.arange(4), low[0, :, c]) * 0.5 for c in range(3)], axis=-1)
        for _ in range(3):
            cx, cy, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25)
            image[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 6, image.shape)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:05d}.png")


@dataclass(frozen=True)
class CoreRow:
    path: str  # "PIL decode", "float32 stream", "uint8 stream"
    workers: int
    images_per_s: float  # wall clock
    worker_cpu_per_image_ms: float  # CPU of the worker processes (of the one process when workers == 0)
    main_cpu_per_image_ms: float  # CPU of the consuming process (0 for PIL decode)


def _cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def decode_cpu_row(pngs: list[bytes], seconds: float = 1.0) -> CoreRow:
    """PIL's decode-only rate in this process: the ceiling of one core."""
    import psutil

    me, step = psutil.Process(), pil_decode_step(pngs)
    step()  # warm
    cpu0, start, done = _cpu_seconds(me), time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        done += step()
    wall, cpu = time.perf_counter() - start, _cpu_seconds(me) - cpu0
    return CoreRow("PIL decode", 0, done / wall, 1000 * cpu / done, 0.0)


def stream_cpu_row(data_dir: str | Path, resolution: int, workers: int, batch_size: int, as_uint8: bool,
                   seconds: float = 2.0) -> CoreRow:
    """The training stream after its first batches: wall rate and CPU per image in the workers and the consumer."""
    import psutil

    me = psutil.Process()
    stream = TrainStream(data_dir, resolution, batch_size, workers=workers, as_uint8=as_uint8).__iter__()
    for _ in range(2 + 2 * workers):  # started, and the workers' first prefetches taken
        next(stream)
    helpers = me.children() if workers else []
    cpu0 = [_cpu_seconds(p) for p in helpers]
    main0, start, done = _cpu_seconds(me), time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        done += next(stream).images.shape[0]
    wall = time.perf_counter() - start
    main = _cpu_seconds(me) - main0
    work = sum(_cpu_seconds(p) - c for p, c in zip(helpers, cpu0)) if workers else main
    stream.close()  # ends the DataLoader's workers now, not when garbage collection gets to them
    name = "uint8 stream" if as_uint8 else "float32 stream"
    return CoreRow(name, workers, done / wall, 1000 * work / done, 1000 * main / done if workers else 0.0)
