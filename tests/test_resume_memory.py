"""benchmarks/resume_memory.py: its smoke mode trains and resumes a tiny two-rank run from the code tree it is
given and reports each rank's memory (the figures themselves go to RESULTS.md; no size is checked here)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "resume_memory.py"


def test_the_smoke_mode_resumes_two_ranks_of_the_given_tree_and_reports_their_memory(tmp_path):
    tree = tmp_path / "tree"  # a copy: the ranks must import it, not the installed checkout
    for name in ("sivae", "core", "data_pipeline", "models", "train", "eval", "launch"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tree)  # how the tree maps the sivae namespace onto its folders
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--tree", f"copy={tree}", "--work",
                           str(tmp_path / "work"), "--json", str(tmp_path / "memory.json")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "memory.json").read_text())
    assert sorted(report) == ["copy/rank0", "copy/rank1"]
    for rank in report.values():
        assert rank["trainer_file"] == str((tree / "train" / "trainer.py").resolve())
        assert rank["checkpoint_mib"] > 0 and len(rank["rounds"]) == 1
        # torch alone is over 100 MiB; the peak so far can only grow, and the process's peak includes the resume's
        assert 100 < rank["at_resume_mib"] <= rank["resume_peak_mib"] <= rank["process_peak_mib"] + 1
    assert "| copy | " in proc.stdout and "rank 1 resume peak" in proc.stdout
