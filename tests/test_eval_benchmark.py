"""benchmarks/eval_speed.py runs end to end (no timings are checked: speed figures live in RESULTS.md)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_eval_speed_benchmark_runs_at_a_tiny_size():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "eval_speed.py"), "--resolutions", "8", "--ks", "1", "4",
         "--images", "2", "--iw-decodes", "8", "--threads", "1"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 8px")]
    assert len(rows) == 3  # one feature row, two IW rows (K = 1, 4)
    assert [row.split("|")[3].strip() for row in rows[1:]] == ["1", "4"]
