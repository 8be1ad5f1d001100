"""Launch-to-first-step time and per-step cost of each backend and launcher against the plain single process.

Each row starts `sivae train` the way `sivae launch` does (the launcher's real command line, from
launch.launchers) on a fresh run directory and reads the TensorBoard scalars the trainer writes after
every iteration (log_every_kimg = one global batch):

- launch to first step: seconds from starting the launcher process to the end of the first training
  iteration (process start-up, imports, process group, engines, data stream, the first step);
- s / iteration: the mean time of iterations `--skip` + 1 .. N (steady state), the same global batch on
  every row, so the 2-process rows split it into two halves;
- overhead per step: s / iteration minus the single process's (1-process rows: what the backend adds to
  each step; 2-process rows: what is left after dividing the work between the processes).

The model is `--config` (default configs/emoji.yaml: the CPU-sized style model) at one fixed level
(`--resolution`, stable, batch `--batch`, fp32), on scikit-learn's digits built at that resolution.

    OMP_NUM_THREADS=1 python benchmarks/launch_overhead.py [--iterations 20] [--skip 3] [--batch 32]
        [--resolution 16] [--processes 1 2] [--rows single accelerate torchrun deepspeed-0 ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sivae.core.distributed import free_port
from sivae.launch.launchers import Launch, launcher_command, launcher_env
from sivae.train.deepspeed_backend import prepare_ops

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("single", "accelerate", "torchrun", "deepspeed-0", "deepspeed-1", "deepspeed-2")
LABELS = {"single": "single process (`sivae train`)", "accelerate": "Accelerate DDP (accelerate launch)",
          "torchrun": "Accelerate DDP (torchrun)",
          **{f"deepspeed-{z}": f"DeepSpeed ZeRO {z} (DeepSpeed's launcher)" for z in (0, 1, 2)}}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def build_data(resolution: int, cache: Path) -> Path:
    out = cache / f"bench-digits{resolution}"
    if not (out / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "sivae", "data", "build", "--source", "digits", "--out", str(out),
               "--max-resolution", str(resolution), "--upsample", "--force"]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return out


def command(row: str, processes: int, train_args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    if row == "single":
        return [sys.executable, "-m", "sivae", "train", *train_args, "train.backend=single"], {}
    launcher, _, zero = row.partition("-")
    backend = "deepspeed" if launcher == "deepspeed" else "accelerate"
    args = (*train_args, f"train.backend={backend}", *([f"train.deepspeed.zero_stage={zero}"] if zero else []))
    spec = Launch(launcher, args, procs_per_node=processes, master_port=free_port())
    return launcher_command(spec), launcher_env(spec, cuda=False)


def measure(row: str, processes: int, args: argparse.Namespace, data: Path, work: Path) -> dict[str, float]:
    run_dir = work / f"{row}-{processes}"
    shutil.rmtree(run_dir, ignore_errors=True)
    kimg = args.batch / 1000
    train_args = (str(args.config), "--run-dir", str(run_dir), "--device", "cpu", f"data.path={data}",
                  f"train.schedule=[{{resolution: {args.resolution}, stable_kimg: 1000, batch: {args.batch}, "
                  f"lr: 0.002}}]", f"train.total_kimg={kimg * args.iterations:g}", "train.vae_warmup_kimg=0",
                  "train.precision=fp32", f"train.per_device_batch={args.batch // processes}",
                  f"train.log_every_kimg={kimg:g}", "train.checkpoint_every_kimg=1000",
                  "train.snapshot_every_kimg=1000", "train.sample_every_kimg=1000", "data.workers=1")  # fmt: skip
    argv, extra_env = command(row, processes, train_args)
    env = {**os.environ, **extra_env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.time()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{row} x{processes} failed:\n{proc.stderr[-3000:]}")
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    stamps = [e.wall_time for e in events.Scalars("loss/rec")]
    if len(stamps) != args.iterations:
        raise SystemExit(f"{row} x{processes}: {len(stamps)} logged iterations, expected {args.iterations}")
    steady = stamps[args.skip:]
    return {"first_step": stamps[0] - start, "per_step": (steady[-1] - steady[0]) / (len(steady) - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "emoji.yaml")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32, help="global batch (even: split over 2 processes)")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--skip", type=int, default=3, help="iterations left out of the steady-state mean")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache")
    args = parser.parse_args()
    if args.skip + 2 > args.iterations:
        parser.error("--iterations must exceed --skip by at least 2")

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; Python {platform.python_version()}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    print(f"load average (1/5/15 min) before: {load_average()}")
    print(f"DeepSpeed op: {prepare_ops()}")
    data = build_data(args.resolution, args.cache)
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="launch-bench-") as tmp:
        for row in args.rows:
            for processes in ([1] if row == "single" else args.processes):
                results[row, processes] = measure(row, processes, args, data, Path(tmp))
                print(f"  {row} x{processes}: {results[row, processes]}", file=sys.stderr, flush=True)
    print(f"load average (1/5/15 min) after: {load_average()}")
    print(f"model: {args.config.name} at {args.resolution}px, global batch {args.batch}, fp32; {args.iterations} "
          f"iterations, steady state from iteration {args.skip + 1}")  # fmt: skip
    print()
    base = results.get(("single", 1))
    print("| backend (launcher) | processes | launch to first step s | s / iteration | overhead per step s |")
    print("|---|---:|---:|---:|---:|")
    for (row, processes), r in results.items():
        overhead = f"{r['per_step'] - base['per_step']:+.3f}" if base and row != "single" else "-"
        print(f"| {LABELS[row]} | {processes} | {r['first_step']:.1f} | {r['per_step']:.3f} | {overhead} |")


if __name__ == "__main__":
    main()
