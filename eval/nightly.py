"""The nightly evaluator: every ready snapshot under a runs directory that has no result yet, evaluated once.

Run directories are found below RUNS_DIR (a directory with config.yaml and snapshots/). For each run:

    RUN/eval/results.jsonl          one JSON line per evaluated snapshot (status ok or failed), append-only
    RUN/eval/SNAPSHOT/              that snapshot's metrics.json and PNGs (samples, reconstructions, OOD histogram)
    RUN/eval/locks/SNAPSHOT.lock    exists while a process evaluates SNAPSHOT (`eval.locks`: owner, heartbeat)
    RUN/tb/eval/                    TensorBoard scalars eval/METRIC at step = training images (the trainer's axis)

Exactly once: a snapshot is taken only under its lock (a create-exclusive lock file, which holds on
NFS and Lustre: a second evaluator skips a snapshot another live one holds, and takes over the lock of
a killed one), and only if results.jsonl has no line for it when the lock is held; the line is appended
under the run's results lock, and not at all if an ok line for the snapshot is already there. With
several ranks, rank 0 holds the locks, and one rank's exception ends the snapshot on every rank
(`failure_agreement`): it is recorded as failed, with that rank's error, and the next one goes on.
Snapshots without a ready marker are left for a later night; a snapshot that fails to load or evaluate
is reported and recorded as failed (not retried unless asked), and the exit status says that
something failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sivae.core.distributed import DistEnv, PeerFailure, broadcast_object, failure_agreement, gather_lists
from sivae.core.run_dir import RunDir
from sivae.core.snapshot import list_snapshots, ready_marker
from sivae.eval.context import EvalOptions
from sivae.eval.locks import hold_lock, try_lock
from sivae.eval.runner import evaluate, scalar_metrics


def find_runs(runs_dir: Path) -> list[RunDir]:
    """Every run directory at or below `runs_dir` (not looking inside a run), sorted by path."""
    runs = []
    for root, dirs, files in os.walk(runs_dir):
        here = Path(root)
        if "config.yaml" in files and "snapshots" in dirs:
            runs.append(RunDir(here))
            dirs.clear()
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(runs, key=lambda r: str(r.root))


def eval_dir(run: RunDir) -> Path:
    return run.root / "eval"


def results_file(run: RunDir) -> Path:
    return eval_dir(run) / "results.jsonl"


def read_results(run: RunDir, warn=None) -> list[dict[str, Any]]:
    """The JSON lines of a run's results file; a damaged line is reported and skipped."""
    path = results_file(run)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "snapshot" not in record:
                raise ValueError("not a result record")
            records.append(record)
        except ValueError as exc:
            if warn:
                warn(f"{path}:{number}: skipping a damaged line ({exc})")
    return records


def results_lock(run: RunDir) -> Path:
    return eval_dir(run) / "locks" / "results.jsonl.lock"


def snapshot_lock(run: RunDir, snapshot: Path) -> Path:
    return eval_dir(run) / "locks" / f"{snapshot.stem}.lock"


def append_result(run: RunDir, record: dict[str, Any]) -> bool:
    """Append the record as one fsynced line under the run's results lock, unless the file already holds
    an ok result for its snapshot (an evaluator that took over our lock, thinking us dead, finished first).
    Returns whether it was written."""
    path = results_file(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    with hold_lock(results_lock(run)):
        if any(r["snapshot"] == record["snapshot"] and r.get("status") == "ok" for r in read_results(run)):
            return False
        with open(path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut off by a crash: end it, so it spoils only itself
                    line = "\n" + line
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
    return True


def recorded(run: RunDir, retry_failed: bool) -> set[str]:
    """Snapshot names that need no evaluation: those with a result (failed ones too, unless retried)."""
    return {r["snapshot"] for r in read_results(run) if r.get("status") == "ok" or not retry_failed}


@dataclass
class NightlySummary:
    evaluated: list[str] = field(default_factory=list)  # RUN/SNAPSHOT
    failed: list[str] = field(default_factory=list)  # "RUN/SNAPSHOT: reason"
    busy: list[str] = field(default_factory=list)  # held by another evaluator
    not_ready: list[str] = field(default_factory=list)  # snapshot files without a ready marker
    already: int = 0  # snapshots with a result from an earlier night

    @property
    def ok(self) -> bool:
        return not self.failed


def write_tensorboard(run: RunDir, record: dict[str, Any]) -> None:
    """Scalars eval/METRIC at step = training images: the x axis of the trainer's own scalars in RUN/tb."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run.tb / "eval"))
    try:
        for key, value in record["metrics"].items():
            writer.add_scalar(f"eval/{key}", value, record["images"])
        writer.add_scalar("eval/kimg", record["kimg"], record["images"])
    finally:
        writer.close()


def evaluate_snapshot(run: RunDir, snapshot: Path, metrics: list[str], options: EvalOptions,
                      env: DistEnv) -> dict[str, Any]:
    """Evaluate one snapshot into RUN/eval/SNAPSHOT; the result record (status ok or failed) on every rank."""
    out = eval_dir(run) / snapshot.stem
    start = time.perf_counter()
    base = {"snapshot": snapshot.name, "run": str(run.root), "host": platform.node(), "evaluated_at":
            time.strftime("%Y-%m-%dT%H:%M:%S%z"), "outputs": str(out)}
    error = None
    try:
        with failure_agreement(env.world_size):  # one rank's exception ends this snapshot on every rank
            results = evaluate(snapshot, metrics, out, options, env)
    except PeerFailure:
        error = ""  # the failed rank's own error is gathered below
    except Exception as exc:  # any broken snapshot, data problem or out-of-memory: report it, go on
        error = f"{type(exc).__name__}: {exc}"
    errors = gather_lists([error], env.world_size)
    if any(e is not None for e in errors):
        reasons = [e if env.world_size == 1 else f"rank {rank}: {e}" for rank, e in enumerate(errors) if e]
        return base | {"status": "failed", "error": "; ".join(reasons), "seconds": time.perf_counter() - start}
    return base | {
        "status": "ok", "images": results["images"], "kimg": results["kimg"], "resolution": results["resolution"],
        "metrics": scalar_metrics(results), "extractor": results.get("extractor"),
        "extractor_sha256": results.get("extractor_sha256"), "fid_skipped": results.get("fid_skipped"),
        "extractor_is_standin": results.get("extractor_is_standin", False), "warnings": results["warnings"],
        "files": results["files"], "seconds": time.perf_counter() - start,
    }  # fmt: skip


def run_nightly(runs_dir: Path, metrics: list[str], options: EvalOptions, env: DistEnv | None = None, *,
                retry_failed: bool = False, log=None) -> NightlySummary:
    """Evaluate every ready, unevaluated snapshot of every run under `runs_dir` (see the module docstring)."""
    env = env or DistEnv()
    log = log or (lambda message: print(f"[sivae eval nightly] {message}", file=sys.stderr, flush=True))
    say = log if env.is_main else (lambda message: None)
    summary = NightlySummary()
    runs = broadcast_object(find_runs(Path(runs_dir)) if env.is_main else None, env.world_size)
    say(f"{len(runs)} run(s) under {runs_dir}")
    for run in runs:
        all_files = list_snapshots(run.snapshots, ready_only=False)
        ready = [p for p in all_files if ready_marker(p).exists()]
        summary.not_ready += [f"{run.root.name}/{p.name}" for p in all_files if p not in ready]
        if env.is_main:
            read_results(run, warn=say)  # damaged lines are reported once per run
        for snapshot in ready:
            name = f"{run.root.name}/{snapshot.name}"
            with try_lock(snapshot_lock(run, snapshot)) if env.is_main else contextlib.nullcontext(True) as held:
                state = "busy" if not held else "done" if snapshot.name in recorded(run, retry_failed) else "todo"
                state = broadcast_object(state if env.is_main else None, env.world_size)
                if state == "busy":
                    summary.busy.append(name)
                    say(f"{name}: being evaluated by another process, skipped")
                    continue
                if state == "done":
                    summary.already += 1
                    continue
                say(f"{name}: evaluating")
                record = evaluate_snapshot(run, snapshot, metrics, options, env)
                if env.is_main:
                    if append_result(run, record):
                        if record["status"] == "ok":
                            write_tensorboard(run, record)
                    else:
                        say(f"{name}: another evaluator recorded it first (it took over our lock), not recorded twice")
                if record["status"] == "ok":
                    summary.evaluated.append(name)
                    features = f" (features {record['extractor']}, sha256 {record['extractor_sha256'] or '-'})" \
                        if record["extractor"] else ""
                    say(f"{name}: done in {record['seconds']:.1f} s: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in record["metrics"].items()) + features)
                else:
                    summary.failed.append(f"{name}: {record['error']}")
                    say(f"{name}: FAILED: {record['error']}")
    return summary
