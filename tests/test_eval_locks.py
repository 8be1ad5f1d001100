"""Cluster-safe evaluation: create-exclusive lock files (races, heartbeats, stale takeover of a killed
evaluator's lock) and one failing rank ending a snapshot on every rank."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_helpers import nightly_data
from process_helpers import rendezvous_env, run_together
from test_eval_nightly import cli_args, lines, make_run, options

from sivae.eval.locks import FileLock, read_lock, try_lock
from sivae.eval.nightly import run_nightly, snapshot_lock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return nightly_data(tmp_path_factory.mktemp("locks-data"))


def contend(path: str, start, done, queue) -> None:
    """One contender: all try at once (a barrier), report, and hold until every one has reported (so a
    late starter cannot simply find the lock released)."""
    lock = FileLock(path)
    start.wait()
    queue.put(lock.acquire())
    done.wait(timeout=60)
    lock.release()


def race(path: Path, contenders: int = 4) -> list[bool]:
    ctx = multiprocessing.get_context("spawn")
    queue, start, done = ctx.Queue(), ctx.Barrier(contenders), ctx.Event()
    procs = [ctx.Process(target=contend, args=(str(path), start, done, queue)) for _ in range(contenders)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    done.set()
    for p in procs:
        p.join(timeout=30)
    return results


def write_foreign_lock(path: Path, host: str, pid: int, heartbeat: float, token: str = "theirs") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": f"{host}:{pid}", "host": host, "pid": pid, "token": token,
                                "acquired": heartbeat, "heartbeat": heartbeat}))


def test_of_processes_racing_for_a_free_or_a_stale_lock_exactly_one_wins(tmp_path):
    assert sorted(race(tmp_path / "free.lock")) == [False, False, False, True]
    stale = tmp_path / "stale.lock"
    write_foreign_lock(stale, "node-that-died", 1234, time.time() - 3600)
    assert sorted(race(stale)) == [False, False, False, True]
    assert not stale.exists() and not list(tmp_path.glob("*.stale-*"))  # released, no takeover leftovers


def test_a_live_holder_keeps_its_lock_and_its_heartbeat_advances(tmp_path):
    path = tmp_path / "a.lock"
    holder = FileLock(path, heartbeat_s=0.05, stale_after_s=5.0)
    assert holder.acquire()
    first = read_lock(path)
    assert first.pid == os.getpid() and first.owner.endswith(f":{os.getpid()}")
    time.sleep(0.3)
    assert read_lock(path).heartbeat > first.heartbeat  # the thread keeps it fresh
    with try_lock(path) as other:
        assert other is None  # a live process of this host holds it
    holder.release()
    assert not path.exists()


def test_stale_is_a_dead_process_here_or_an_old_heartbeat_anywhere(tmp_path):
    lock = FileLock(tmp_path / "x.lock", heartbeat_s=1.0, stale_after_s=60.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_foreign_lock(lock.path, os.uname().nodename, dead.pid, time.time())
    assert lock.stale(read_lock(lock.path))  # fresh heartbeat, but its process is gone
    write_foreign_lock(lock.path, "other-node", 1, time.time() - 30)
    assert not lock.stale(read_lock(lock.path))  # another host: judged by the heartbeat only
    assert not lock.acquire()
    write_foreign_lock(lock.path, "other-node", 1, time.time() - 61)
    assert lock.acquire() and read_lock(lock.path).token == lock.token
    lock.release()
    lock.path.write_text("{half writ")  # a holder that died while writing its file: judged by the file's age
    assert not lock.stale(read_lock(lock.path))
    os.utime(lock.path, (time.time() - 120, time.time() - 120))
    assert lock.stale(read_lock(lock.path))


def test_a_holder_whose_lock_was_taken_over_knows_and_does_not_remove_the_new_one(tmp_path):
    path = tmp_path / "b.lock"
    holder = FileLock(path, heartbeat_s=0.05, stale_after_s=5.0)
    assert holder.acquire()
    write_foreign_lock(path, "other-node", 1, time.time())  # as a taker that thought us dead leaves it
    time.sleep(0.3)
    assert holder.lost and not holder.still_held()
    holder.release()
    assert read_lock(path).token == "theirs"


def test_a_killed_evaluators_lock_is_taken_over_and_its_snapshot_evaluated_once(sets, tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs / "r", sets["disks"], [1000, 2000])
    first = run.snapshots / "snapshot-000000001000.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sivae", *cli_args(runs, sets)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = snapshot_lock(run, first)
    deadline = time.monotonic() + 120
    while read_lock(lock) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert read_lock(lock) is not None and read_lock(lock).pid == proc.pid, "the evaluator never took its lock"
    proc.send_signal(signal.SIGKILL)  # mid-evaluation: no cleanup runs, the lock file stays behind
    proc.wait()
    assert read_lock(lock).pid == proc.pid and not lines(run)

    summary = run_nightly(runs, ["recon"], options(sets))
    assert summary.evaluated == ["r/snapshot-000000001000.pt", "r/snapshot-000000002000.pt"] and not summary.busy
    assert sorted(r["snapshot"] for r in lines(run)) == ["snapshot-000000001000.pt", "snapshot-000000002000.pt"]
    assert not lock.exists()


def test_one_rank_failing_mid_evaluation_ends_that_snapshot_on_both_and_the_next_goes_on(sets, tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs / "r", sets["disks"], [1000, 2000])
    env = rendezvous_env(2)
    command = [sys.executable, str(ROOT / "tests" / "nightly_failing_rank.py"), "1", "snapshot-000000001000", "--",
               *cli_args(runs, sets, "--device", "cpu")]
    outputs = run_together(command, [{**env, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(2)], ROOT,
                           timeout=240, expect_status=1)  # both exit (a hang fails here), saying something failed
    records = {r["snapshot"]: r for r in lines(run)}
    assert set(records) == {"snapshot-000000001000.pt", "snapshot-000000002000.pt"} and len(lines(run)) == 2
    failed = records["snapshot-000000001000.pt"]
    assert failed["status"] == "failed" and failed["error"] == "rank 1: RuntimeError: CUDA out of memory (injected)"
    assert records["snapshot-000000002000.pt"]["status"] == "ok"
    assert records["snapshot-000000002000.pt"]["extractor"] == "standin-randconv-v1"
    assert "FAILED r/snapshot-000000001000.pt: rank 1: RuntimeError" in outputs[0]


def test_a_takeover_guard_left_by_a_dead_taker_is_cleared_by_age(tmp_path):
    path = tmp_path / "run.lock"
    write_foreign_lock(path, "node-that-died", 1234, time.time() - 3600)
    guard = tmp_path / "run.lock.takeover"
    guard.write_text("")
    assert not FileLock(path).acquire()  # a fresh guard: another taker is at it, the stale lock stays
    assert read_lock(path).token == "theirs"
    old = time.time() - 3600
    os.utime(guard, (old, old))
    lock = FileLock(path)
    lock.wait(timeout_s=5)
    assert lock.held and read_lock(path).token == lock.token and not guard.exists()
    lock.release()
