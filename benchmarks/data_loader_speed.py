"""Data-pipeline speed (issue 3): the training loader against PIL decoding of the same images.

    OMP_NUM_THREADS=1 python benchmarks/data_loader_speed.py [--images 500]
    OMP_NUM_THREADS=1 python benchmarks/data_loader_speed.py --raw-max-resolution 4   # every level >= 8px as PNG

Builds (once, into .cache/) the emoji set up to 256px (--upsample: 256px repeats the 128px pixels),
then, in one run, per resolution 8/32/128/256 and 0/1/2 loader workers, prints the loader's images/s
beside PIL's decode-only rate and a plain PIL folder loop over the same images (see
data_pipeline/bench.py for exactly what each column times). Paste the output into RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from sivae.data_pipeline.bench import format_table, run_bench
from sivae.data_pipeline.build import BuildOptions, build_dataset
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
