"""benchmarks/model_step.py runs end to end (no timings are checked: speed figures live in RESULTS.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_step_benchmark_runs_on_a_tiny_config(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {max_resolution: 8, start_channels: 4, max_channels: 8, latent_dim: 8, mapping_layers: 1}\n"
        "train: {schedule: [{resolution: 4, batch: 4}, {resolution: 8, batch: 4}]}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "model_step.py"), "--config", str(config), "--warmup", "0",
         "--iters", "1", "--batches", "2", "--threads", "1"],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 4px") or line.startswith("| 8px")]
    assert len(rows) == 2 and all(row.split("|")[2].strip() == "2" for row in rows)


def test_hot_path_benchmark_imports_each_tree_it_is_given():
    """--smoke: this checkout as both trees, each child importing sivae from it (the script refuses a child
    that imported another copy), one row with a before/after ratio."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hot_path_speed.py"), "--smoke"],
                          capture_output=True, text=True, cwd=ROOT, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"before: {ROOT} (fused Adam True), after: {ROOT}" in proc.stdout
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| 8px")]
    assert len(rows) == 1 and rows[0][3].strip() == "fp32" and float(rows[0][6]) > 0


def test_vs_reference_says_how_to_get_the_official_code_and_its_sivae_side_runs(tmp_path):
    script = str(ROOT / "benchmarks" / "vs_reference.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in ([], ["--reference", str(tmp_path)]):
        proc = subprocess.run([sys.executable, script, *extra], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 2 and "git clone https://github.com/taldatech/soft-intro-vae-pytorch" in proc.stderr
    # the timed child of our side: one FFHQ-256 iteration at 4px (the official side needs the checkout)
    proc = subprocess.run([sys.executable, script, "--child", "sivae", "--level", "4", "--batch", "2", "--threads",
                           "1", "--warmup", "0", "--iters", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["seconds"] > 0
    # its profiled form: the op families add up to the total, and the convolutions are in it
    proc = subprocess.run([sys.executable, script, "--child", "sivae", "--level", "4", "--batch", "2", "--threads",
                           "1", "--warmup", "0", "--iters", "1", "--child-profile"], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    families = json.loads(proc.stdout.strip().splitlines()[-1])
    total = families.pop("total")
    assert families["convolution forward"] > 0 and families["convolution backward"] > 0
    assert abs(sum(families.values()) - total) < 1e-6 * total
