"""Data-pipeline speed (issue 3): the training loader against PIL decoding of the same images.

    OMP_NUM_THREADS=1 python benchmarks/data_loader_speed.py [--images 500]
    OMP_NUM_THREADS=1 python benchmarks/data_loader_speed.py --raw-max-resolution 4   # every level >= 8px as PNG
    OMP_NUM_THREADS=1 python benchmarks/data_loader_speed.py --per-core 256 --rounds 5  # issue 12: per worker core

Builds (once, into .cache/) the emoji set up to 256px (--upsample: 256px repeats the 128px pixels),
then, in one run, per resolution 8/32/128/256 and 0/1/2 loader workers, prints the loader's images/s
beside PIL's decode-only rate and a plain PIL folder loop over the same images (see
data_pipeline/bench.py for exactly what each column times). Paste the output into RESULTS.md.

--per-core R: procedural photo-like images (built once into .cache/, stored at R px as the configs
store that level: PNG above 128px), the float32 and uint8 training streams with 0, 1 and 2 workers
beside PIL's decode-only rate, --rounds times interleaved; per row the median wall rate and CPU
milliseconds per image in the worker processes and in the consumer, and the stream's images per
worker-CPU-second over PIL's images per CPU-second (the issue's "per worker core" ratio, which the
machine's other jobs do not move as much as wall-clock rates).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

from sivae.data_pipeline.bench import (
    decode_cpu_row,
    format_table,
    procedural_images,
    run_bench,
    sample_pngs,
    stream_cpu_row,
)
from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.manifest import load_manifest
from sivae.data_pipeline.sources import parse_source

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-max-resolution", type=int, default=128, help="the build option (default 128)")
    parser.add_argument("--images", type=int, default=500, help="training samples the PIL figures go over")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--per-core", type=int, metavar="R", help="per worker core at R px on procedural images")
    parser.add_argument("--rounds", type=int, default=5, help="--per-core: interleaved rounds (medians)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="--per-core: worker counts")
    args = parser.parse_args()
    if args.per_core:
        per_core(args)
        return
    data = ROOT / ".cache" / f"bench-emoji256-raw{args.raw_max_resolution}"
    if not (data / "manifest.json").is_file():
        options = BuildOptions(max_resolution=256, upsample=True, workers=2, raw_max_resolution=args.raw_max_resolution)
        build_dataset(parse_source("emoji"), data, options, force=True)

    before = os.getloadavg()
    rows = run_bench(data, [8, 32, 128, 256], [0, 1, 2], args.batch_size, args.images)
    after = os.getloadavg()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, no GPU; Python {platform.python_version()}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"load average (1/5/15 min): before {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, "
          f"after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    print(f"data: {data.relative_to(ROOT)} (emoji, train split), batch {args.batch_size}; PIL figures over the first "
          f"{args.images} samples; each figure the best of 3 timings of >= 0.5 s")
    print()
    print(format_table(rows))


def per_core(args: argparse.Namespace) -> None:
    r = args.per_core
    data = ROOT / ".cache" / f"bench-procedural{r}"
    if not (data / "manifest.json").is_file():
        procedural_images(ROOT / ".cache" / f"bench-procedural{r}-images", 1000, r)
        build_dataset(parse_source(f"folder:{ROOT / '.cache' / f'bench-procedural{r}-images'}"), data,
                      BuildOptions(max_resolution=r, workers=2, test_fraction=0.0), force=True)
    pngs = sample_pngs(data, r, args.images)
    before = os.getloadavg()
    rows: dict[tuple[str, int], list] = {}
    for round_ in range(args.rounds):
        cases = [("decode", 0)] + [(kind, w) for w in args.workers for kind in ("float32", "uint8")]
        for kind, w in cases if round_ % 2 == 0 else reversed(cases):
            row = decode_cpu_row(pngs) if kind == "decode" else \
                stream_cpu_row(data, r, w, args.batch_size, as_uint8=kind == "uint8")
            rows.setdefault((row.path, w), []).append(row)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    after = os.getloadavg()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))}), no GPU; "
          f"Python {platform.python_version()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"load average (1/5/15 min): before {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, "
          f"after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    print(f"data: {data.relative_to(ROOT)} (1000 procedural images, {r}px stored as "
          f"{load_manifest(data).encoding(r)}), batch {args.batch_size}; PIL decode over {len(pngs)} of them; "
          f"medians of {args.rounds} interleaved rounds (>= 1 s of decoding, >= 2 s of each stream)")
    print()
    med = {key: (statistics.median(x.images_per_s for x in v), statistics.median(x.worker_cpu_per_image_ms for x in v),
                 statistics.median(x.main_cpu_per_image_ms for x in v)) for key, v in rows.items()}
    decode_rate, decode_ms, _ = med[("PIL decode", 0)]
    print("| path | workers | img/s (wall) | per worker: img/s / PIL decode img/s | worker CPU ms/img "
          "| per worker core: img/CPU-s / PIL's | consumer CPU ms/img |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (path, w), (rate, work_ms, main_ms) in med.items():
        wall_ratio = rate / max(w, 1) / decode_rate
        cpu_ratio = decode_ms / work_ms
        main = "-" if path == "PIL decode" or w == 0 else f"{main_ms:.2f}"
        print(f"| {path} | {w} | {rate:,.0f} | {wall_ratio:.2f} | {work_ms:.2f} | {cpu_ratio:.2f} | {main} |")


if __name__ == "__main__":
    main()
