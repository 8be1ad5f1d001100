"""Peak host memory per rank while a run resumes (issue 12): two processes (torchrun, gloo, CPU, fp32).

    OMP_NUM_THREADS=1 python benchmarks/resume_memory.py                          # this tree, configs/ffhq256.yaml
    OMP_NUM_THREADS=1 python benchmarks/resume_memory.py --tree before=/path/to/old/checkout --tree after=. \\
        --rounds 2                                                                # side by side, interleaved
    python benchmarks/resume_memory.py --smoke                                    # tests/tiny_run.yaml, seconds

Per tree: a run of one iteration at one level (the config's model with a one-level schedule at
--resolution, global batch 2, so the model, its Adam states and the EMA copy are all in the
checkpoint; one rank by default, --train-processes), then --rounds two-rank resumes of it with
nothing left to train, the trees interleaved. Every
rank runs under a small wrapper that samples its RSS and its peak RSS so far (VmHWM) every 5 ms and
writes them, with getrusage's ru_maxrss and the file the trainer was imported from, when the rank
exits. Reported per rank: the peak up to the moment the final checkpoint's write begins (start-up
and the resume: saving is collective, so every rank has restored by then), the RSS at that moment,
and the peak of the whole process (the resume, then the checkpoint and snapshot a finished run
writes).

Only stable entry points run the trees: `python -m sivae data build` (this tree, once: the data
format is shared) and `python -m sivae train CONFIG --run-dir DIR key=value ...` under
`python -m torch.distributed.run`; a tree other than the installed one is put first on the import
path through a directory of symbolic links that lays out its folders as the `sivae` package.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from code_trees import namespace_of

from sivae.data_pipeline.bench import procedural_images

ROOT = Path(__file__).resolve().parents[1]

# Runs inside each rank: samples memory on a thread, runs `python -m sivae ...`, writes what it saw at exit.
RANK_WRAPPER = r'''
import atexit, json, os, resource, runpy, sys, threading, time

samples = []

def status_kib():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)

def sample():
    while True:
        samples.append((time.time(), *status_kib()))
        time.sleep(0.005)

def report():
    trainer = sys.modules.get("sivae.train.trainer")
    out = {"rank": int(os.environ.get("RANK", "0")),
           "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "trainer_file": os.path.realpath(trainer.__file__) if trainer else None,
           "samples": samples + [(time.time(), *status_kib())]}
    path = os.path.join(os.environ["SIVAE_MEMORY_OUT"], "rank-%s.json" % out["rank"])
    with open(path, "w") as f:
        json.dump(out, f)

atexit.register(report)
threading.Thread(target=sample, daemon=True).start()
sys.argv = ["sivae", *sys.argv[1:]]
runpy.run_module("sivae", run_name="__main__", alter_sys=True)
'''


@dataclass(frozen=True)
class RankMemory:
    rank: int
    resume_peak_mib: float  # peak RSS up to the final checkpoint's write: start-up and the resume
    at_resume_mib: float  # RSS then (the last sample before it)
    process_peak_mib: float  # ru_maxrss of the whole process
    trainer_file: str


def tree_env(tree: Path | None, views: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if tree is not None:
        view = namespace_of(tree.resolve(), views / f"view-{len(list(views.iterdir()))}")
        env["PYTHONPATH"] = os.pathsep.join([str(view), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_overrides(data: Path, resolution: int) -> list[str]:
    level = f"[{{resolution: {resolution}, fade_in_kimg: 0, stable_kimg: 1, batch: 2, lr: 0.002}}]"
    return [f"data.path={data}", "data.workers=0", "train.precision=fp32", f"train.schedule={level}",
            "train.total_kimg=0.002", "train.checkpoint_every_kimg=1000", "train.snapshot_every_kimg=1000",
            "train.sample_every_kimg=1000", "train.log_every_kimg=1000"]


def launch(config: Path, run_dir: Path, overrides: list[str], env: dict[str, str], out: Path,
           wrapper: Path, processes: int = 2) -> tuple[float | None, str]:
    """One `sivae train` of `processes` ranks; returns (the time the final checkpoint's write began, None
    unless the run resumed; the output)."""
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               str(wrapper),
               "train", str(config), "--run-dir", str(run_dir), "--device", "cpu", *overrides]
    proc = subprocess.Popen(command, env=dict(env, SIVAE_MEMORY_OUT=str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=out)
    saving_at: list[float] = []
    watcher = threading.Thread(target=_first_change, args=(run_dir / "checkpoints", proc, saving_at), daemon=True)
    watcher.start()
    resumed, lines = False, []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        resumed = resumed or "resumed at kimg" in line
    watcher.join()
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{''.join(lines[-40:])}")
    return (saving_at[0] if resumed and saving_at else None), "".join(lines)


def _first_change(directory: Path, proc: subprocess.Popen, found: list[float]) -> None:
    """Append the time the checkpoint directory first changes (the final checkpoint's write begins).

    The window before it holds every rank's restore: saving is collective, so no rank starts it before
    all have restored. Rank 0's "resumed at" line is no end for the window: in the broadcast version
    rank 0 logs as soon as it has sent the state, while rank 1 is still unpickling it."""
    def listing() -> set[tuple[str, int, int]]:
        entries = set()
        for path in directory.rglob("*") if directory.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                entries.add((str(path), st.st_size, st.st_mtime_ns))
        return entries

    start = listing()
    while proc.poll() is None:
        if listing() != start:
            found.append(time.time())
            return
        time.sleep(0.005)


def rank_memory(out: Path, until: float) -> list[RankMemory]:
    ranks = []
    for path in sorted(out.glob("rank-*.json")):
        report = json.loads(path.read_text())
        before = [s for s in report["samples"] if s[0] <= until]
        ranks.append(RankMemory(report["rank"], resume_peak_mib=before[-1][2] / 1024,
                                at_resume_mib=before[-1][1] / 1024, process_peak_mib=report["ru_maxrss_kib"] / 1024,
                                trainer_file=report["trainer_file"]))
    if len(ranks) != 2:
        raise RuntimeError(f"expected reports of 2 ranks in {out}, found {len(ranks)}")
    return ranks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="a checkout to run (repeatable; default: the installed tree, named 'current')")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ffhq256.yaml")
    parser.add_argument("--resolution", type=int, default=256, help="the one level trained and resumed")
    parser.add_argument("--rounds", type=int, default=1, help="resumes per tree, interleaved")
    parser.add_argument("--train-processes", type=int, default=1,
                        help="ranks of the run that writes the checkpoint (default 1: its single-file checkpoint "
                        "resumes on any process count, and one rank training the top level needs half the memory)")
    parser.add_argument("--work", type=Path, help="keep the data and runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="tests/tiny_run.yaml at 16px, one round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.config, args.resolution, args.rounds = ROOT / "tests" / "tiny_run.yaml", 16, 1
    args.config = args.config.resolve()
    trees: list[tuple[str, Path | None]] = [(name, Path(path)) for name, path in (t.split("=", 1) for t in args.tree)]
    trees = trees or [("current", None)]

    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        wrapper, views = work / "rank_wrapper.py", work / f"views-{os.getpid()}"
        wrapper.write_text(RANK_WRAPPER)
        views.mkdir()
        data = work / f"data-{args.resolution}"
        if not (data / "manifest.json").is_file():
            procedural_images(work / f"images-{args.resolution}", 8, args.resolution)
            subprocess.run([sys.executable, "-m", "sivae", "data", "build", "--source",
                            f"folder:{work / f'images-{args.resolution}'}", "--out", str(data), "--max-resolution",
                            str(args.resolution), "--test-fraction", "0", "--workers", "1", "--no-progress",
                            "--force"], check=True, stdout=subprocess.DEVNULL)
        overrides = run_overrides(data, args.resolution)
        envs = {name: tree_env(path, views) for name, path in trees}
        results: dict[str, list[list[RankMemory]]] = {name: [] for name, _ in trees}
        checkpoint_mib = {}
        stamp = time.strftime("%H%M%S")
        for name, _ in trees:
            run_dir = work / f"run-{name}-{stamp}"
            launch(args.config, run_dir, overrides, envs[name], work / f"out-{name}-{stamp}-train", wrapper,
                   args.train_processes)
            files = [p for p in (run_dir / "checkpoints").rglob("*") if p.is_file()]
            checkpoint_mib[name] = sum(p.stat().st_size for p in files) / 2**20
        for round_ in range(args.rounds):
            for name, _ in trees if round_ % 2 == 0 else reversed(trees):
                out = work / f"out-{name}-{stamp}-resume{round_}"
                saving_at, output = launch(args.config, work / f"run-{name}-{stamp}", overrides, envs[name], out,
                                            wrapper)
                if saving_at is None:
                    raise RuntimeError(f"{name}: the run did not resume (or wrote no checkpoint):\n{output[-3000:]}")
                results[name].append(rank_memory(out, saving_at))
                print(f"round {round_ + 1} {name}: " + ", ".join(
                    f"rank {r.rank} resume peak {r.resume_peak_mib:,.0f} MiB (process {r.process_peak_mib:,.0f})"
                    for r in results[name][-1]) + f"  [{results[name][-1][0].trainer_file}]", flush=True)

    print()
    print(f"config {args.config.name}, one level at {args.resolution}px, 2 ranks (torchrun, gloo, CPU, fp32), "
          f"medians of {args.rounds} round(s)")
    print()
    print("| tree | checkpoint MiB | rank | RSS when saving starts MiB | resume peak MiB | process peak MiB |"
          + ("" if len(trees) == 1 else f" resume peak / {trees[0][0]} |"))
    print("|---|---:|---:|---:|---:|---:|" + ("" if len(trees) == 1 else "---:|"))
    summary = {}
    for name, _ in trees:
        for rank in (0, 1):
            runs = [ranks[rank] for ranks in results[name]]
            row = {k: statistics.median(getattr(r, k) for r in runs)
                   for k in ("at_resume_mib", "resume_peak_mib", "process_peak_mib")}
            summary[f"{name}/rank{rank}"] = row | {"checkpoint_mib": checkpoint_mib[name],
                                                   "rounds": [r.resume_peak_mib for r in runs],
                                                   "trainer_file": runs[0].trainer_file}
            ratio = "" if len(trees) == 1 else \
                f" {row['resume_peak_mib'] / summary[f'{trees[0][0]}/rank{rank}']['resume_peak_mib']:.2f} |"
            print(f"| {name} | {checkpoint_mib[name]:,.0f} | {rank} | {row['at_resume_mib']:,.0f} "
                  f"| {row['resume_peak_mib']:,.0f} | {row['process_peak_mib']:,.0f} |{ratio}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
