"""benchmarks/gpu_check.py: its CPU smoke mode runs every section end to end (the GPU figures themselves go to
RESULTS.md from a lent device; no timing is checked here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_the_smoke_mode_measures_every_section_and_resumes_the_trainer(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(r["resolution"], r["compiled"]) for r in report["training"]] == [(4, False), (8, False)]
    assert all(r["seconds"] > 0 and r["images_per_second"] > 0 and r["gflops"] > 0 for r in report["training"])
    assert report["loader"] and all(r["loader"] > 0 for r in report["loader"])
    trainer = report["trainer"]
    assert trainer["ok"] and trainer["resumed"]["resumed_at_kimg"] == trainer["iterations_per_run"] * 4 / 1000
    ddp = report["ddp"]
    assert "error" not in ddp, ddp.get("error")
    assert ddp["single"]["seconds_per_iteration"] > 0 and ddp["ddp"]["seconds_per_iteration"] > 0
    assert ddp["single"]["skips"] == ddp["ddp"]["skips"] == 0 and not ddp["syncs_counted"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| emoji.yaml | 8px | False | 2 |" in table and "resumed at kimg 0.008" in table
    assert "DDP (one-process group): 2 steps at 8px, batch 4" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr
