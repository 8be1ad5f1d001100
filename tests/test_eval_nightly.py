"""The nightly evaluator: each ready snapshot exactly once, half-written ones left for later, broken ones
reported, two evaluators at once never duplicating, TensorBoard at the trainer's step, the report."""

import json
import os
import re
import sys
from pathlib import Path

import pytest
from eval_helpers import nightly_data, tiny_run_config, tiny_snapshot
from process_helpers import rendezvous_env, run_together
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sivae.core.config import dump_yaml
from sivae.core.run_dir import RunDir
from sivae.core.snapshot import ready_marker
from sivae.eval.context import EvalOptions
from sivae.eval.locks import try_lock
from sivae.eval.nightly import find_runs, read_results, results_file, run_nightly
from sivae.eval.report import render_report
from sivae.launch.cli import main as sivae_main

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["fid", "recon", "ood"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return nightly_data(tmp_path_factory.mktemp("nightly-data"))


def options(sets, **changes):
    base = dict(num_samples=24, batch_size=24, features="standin", cache=sets["cache"], ood_data=[sets["stripes"]],
                iw_samples=2, test_count=8, reference_count=16, progress=False)
    return EvalOptions(**{**base, **changes})


def make_run(root: Path, data: Path, images: list[int]) -> RunDir:
    run = RunDir(root)
    for path in (run.snapshots, run.checkpoints, run.tb, run.samples):
        path.mkdir(parents=True, exist_ok=True)
    dump_yaml(tiny_run_config(data), run.config)
    for i, n in enumerate(images):
        tiny_snapshot(run.snapshots, data, images=n, seed=i)
    return run


def lines(run: RunDir) -> list[dict]:
    return read_results(run)


def cli_args(runs, sets, *extra):
    return ["eval", "nightly", str(runs), "--metrics", ",".join(METRICS), "--num-samples", "24", "--batch-size", "24",
            "--features", "standin", "--cache", str(sets["cache"]), "--ood-data", str(sets["stripes"]),
            "--iw-samples", "2", "--test-count", "8", "--reference-count", "16", "--no-progress", *extra]


def test_each_snapshot_once_half_written_left_for_later_broken_reported(sets, tmp_path):
    runs = tmp_path / "runs"
    a = make_run(runs / "a", sets["disks"], [1000, 2000, 3000])
    b = make_run(runs / "group" / "b", sets["disks"], [1000, 2000])
    half_written = a.snapshots / "snapshot-000000003000.pt"
    ready_marker(half_written).unlink()  # written, marker not yet: a half-written snapshot
    (a.snapshots / ".snapshot-000000004000.pt.x1.tmp").write_bytes(b"partial")  # an interrupted atomic write
    broken = b.snapshots / "snapshot-000000002000.pt"
    broken.write_bytes(broken.read_bytes()[:500])  # truncated, yet marked ready
    assert [r.root for r in find_runs(runs)] == [a.root, b.root]

    first = run_nightly(runs, METRICS, options(sets))
    assert sorted(first.evaluated) == ["a/snapshot-000000001000.pt", "a/snapshot-000000002000.pt",
                                       "b/snapshot-000000001000.pt"]
    assert first.not_ready == ["a/snapshot-000000003000.pt"]
    assert len(first.failed) == 1 and first.failed[0].startswith("b/snapshot-000000002000.pt: LoadError")
    assert not first.ok
    assert [(r["snapshot"], r["status"]) for r in lines(b)] == [("snapshot-000000001000.pt", "ok"),
                                                                ("snapshot-000000002000.pt", "failed")]
    ok = lines(a)
    assert {r["images"] for r in ok} == {1000, 2000} and all(r["status"] == "ok" for r in ok)
    assert {"fid", "ssim", "psnr", "rfid", "log_likelihood", "auroc"} <= set(ok[0]["metrics"])
    assert all(r["extractor_is_standin"] for r in ok)
    assert (a.root / "eval" / "snapshot-000000001000" / "metrics.json").is_file()

    events = EventAccumulator(str(a.tb / "eval"))
    events.Reload()
    assert sorted(e.step for e in events.Scalars("eval/fid")) == [1000, 2000]  # the trainer's axis: images
    assert sorted(e.value for e in events.Scalars("eval/kimg")) == [1.0, 2.0]

    second = run_nightly(runs, METRICS, options(sets))
    assert second.evaluated == [] and second.failed == [] and second.already == 4 and second.ok
    assert len(lines(a)) == 2 and len(lines(b)) == 2

    ready_marker(half_written).write_text("3000\n")  # the writer finished
    third = run_nightly(runs, METRICS, options(sets))
    assert third.evaluated == ["a/snapshot-000000003000.pt"] and len(lines(a)) == 3

    retried = run_nightly(runs, METRICS, options(sets), retry_failed=True)
    assert retried.evaluated == [] and len(retried.failed) == 1 and len(lines(b)) == 3

    report = render_report(find_runs(runs), runs, tmp_path / "report")
    text = report.read_text()
    assert "STAND-IN" in text and "## a" in text and "## group__b" in text and "snapshot-000000002000.pt" in text
    assert "Features: `standin-randconv-v1`, weights sha256 `- (no weights file)`" in text
    for image in re.findall(r"^!\[[^]]*\]\(([^)]+)\)$", text, flags=re.MULTILINE):
        assert (tmp_path / "report" / image).is_file(), image
    assert {"a-metrics.png", "a-samples.png", "a-reconstructions.png", "a-ood.png"} <= {
        p.name for p in (tmp_path / "report").iterdir()}


def test_a_snapshot_locked_by_another_evaluator_is_skipped_and_damaged_lines_are_reported(sets, tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs / "r", sets["disks"], [1000, 2000])
    with try_lock(run.root / "eval" / "locks" / "snapshot-000000001000.lock") as held:
        assert held
        summary = run_nightly(runs, ["recon"], options(sets))
    assert summary.busy == ["r/snapshot-000000001000.pt"] and summary.evaluated == ["r/snapshot-000000002000.pt"]
    with open(results_file(run), "a") as f:
        f.write('{"snapshot": "snapshot-0000000')  # a line cut off by a crash
    messages = []
    summary = run_nightly(runs, ["recon"], options(sets), log=messages.append)
    assert summary.evaluated == ["r/snapshot-000000001000.pt"]
    assert any("damaged line" in m for m in messages)
    assert [r["snapshot"] for r in lines(run)] == ["snapshot-000000002000.pt", "snapshot-000000001000.pt"]


def test_the_command_exits_non_zero_when_something_failed(sets, tmp_path, capsys):
    runs = tmp_path / "runs"
    run = make_run(runs / "r", sets["disks"], [1000])
    assert sivae_main(cli_args(runs, sets, "--metrics", "recon")) == 0
    (run.snapshots / "snapshot-000000002000.pt").write_bytes(b"garbage")
    ready_marker(run.snapshots / "snapshot-000000002000.pt").write_text("2000\n")
    assert sivae_main(cli_args(runs, sets, "--metrics", "recon", "--report", str(tmp_path / "rep"))) == 1
    out = capsys.readouterr().out
    assert "FAILED r/snapshot-000000002000.pt" in out and (tmp_path / "rep" / "report.md").is_file()


def test_two_evaluators_at_once_evaluate_every_snapshot_exactly_once(sets, tmp_path):
    runs = tmp_path / "runs"
    run_a = make_run(runs / "a", sets["disks"], [1000, 2000, 3000])
    run_b = make_run(runs / "b", sets["disks"], [1000, 2000, 3000])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = run_together([sys.executable, "-m", "sivae", *cli_args(runs, sets)], [env, env], ROOT)
    records = lines(run_a) + lines(run_b)
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    assert sorted((r["run"], r["snapshot"]) for r in records) == sorted(
        {(r["run"], r["snapshot"]) for r in records})  # no snapshot twice
    counts = [int(out.split("evaluated ")[1].split(",")[0]) for out in outputs]
    assert sum(counts) == 6, counts
    for record in records:
        json.dumps(record)  # every line is whole JSON (read_results would have dropped a broken one)


def test_the_nightly_job_under_two_gloo_processes_records_each_snapshot_once(sets, tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs / "r", sets["disks"], [1000, 2000])
    env = rendezvous_env(2)
    command = [sys.executable, "-m", "sivae", *cli_args(runs, sets, "--device", "cpu")]
    run_together(command, [{**env, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(2)], ROOT)
    records = lines(run)
    assert sorted(r["snapshot"] for r in records) == ["snapshot-000000001000.pt", "snapshot-000000002000.pt"]
    assert all(r["status"] == "ok" for r in records)
    metrics = json.loads((run.root / "eval" / "snapshot-000000001000" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["recon_num_images"] == 8
