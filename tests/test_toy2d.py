"""The 2D study: samplers, metrics against hand-computed values, and short runs via the CLI."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sivae.core.config import to_dict
from sivae.train.schema import ObjectiveConfig
from sivae.train.toy2d import metrics
from sivae.train.toy2d.datasets import HALF_RANGE, SAMPLERS
from sivae.train.toy2d.study import Toy2DConfig, run, same_config, train


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_shape_range_and_determinism(name):
    a = SAMPLERS[name](1001, torch.Generator().manual_seed(0))
    b = SAMPLERS[name](1001, torch.Generator().manual_seed(0))
    assert a.shape == (1001, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    inside = (a.abs() <= 2 * HALF_RANGE[name]).all(dim=1).float().mean()
    assert inside > 0.99


def test_eight_gaussians_geometry():
    x = SAMPLERS["8gaussians"](4000, torch.Generator().manual_seed(0))
    radius = x.norm(dim=1)
    assert radius.mean().item() == pytest.approx(2 / 1.414, abs=0.01)
    angles = torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)
    assert (angles - angles.round()).abs().max() < 0.1  # clustered at multiples of 45 degrees


def test_histogram_divergences_hand_computed():
    p = np.array([[3.0, 1.0], [0.0, 0.0]])  # masses 0.75, 0.25
    q = np.array([[1.0, 1.0], [0.0, 0.0]])  # masses 0.5, 0.5
    # smoothing (1e-6 per bin) changes these by ~1e-5
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert metrics.histogram_kl(p, q) == pytest.approx(kl, abs=1e-4)
    m = [0.625, 0.375]
    jsd = 0.5 * (0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1])) + 0.5 * (
        0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    )
    assert metrics.histogram_jsd(p, q) == pytest.approx(jsd, abs=1e-4)
    assert metrics.histogram_kl(p, p) == pytest.approx(0.0, abs=1e-12)
    # disjoint supports: JSD reaches ln 2
    assert metrics.histogram_jsd(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(math.log(2), abs=1e-3)


def test_reference_conventions_hand_computed():
    # 2 x 2 "densities" P, Q; rows = 2 so the reference divides by 2.
    P = np.array([[2.0, 0.0], [1.0, 1.0]])
    Q = np.array([[1.0, 1.0], [0.0, 2.0]])
    # kl_ref = sum_{P>0} P (log P - log(Q + 1e-14)) / 2
    kl = (2 * math.log(2 / 1) + 1 * (math.log(1) - math.log(1e-14)) + 1 * math.log(1 / 2)) / 2
    assert metrics.reference_kl(P, Q) == pytest.approx(kl, rel=1e-9)
    # M = (P + Q) / 2 = [[1.5, 0.5], [0.5, 1.5]]; jsd_ref = 0.5 (KL(M||P) + KL(M||Q)), each / 2 rows
    floor = -math.log(1e-14)
    kl_m_p = (1.5 * math.log(1.5 / 2) + 0.5 * (math.log(0.5) + floor) + 0.5 * math.log(0.5) + 1.5 * math.log(1.5)) / 2
    kl_m_q = (1.5 * math.log(1.5) + 0.5 * math.log(0.5) + 0.5 * (math.log(0.5) + floor) + 1.5 * math.log(1.5 / 2)) / 2
    assert metrics.reference_jsd(P, Q) == pytest.approx(0.5 * (kl_m_p + kl_m_q), rel=1e-9)


def test_gnelbo_hand_computed():
    grid = np.array([1.0, 2.0, 3.0])
    data = np.array([2.0, 2.0])
    # each data value / (6 + 4) = 0.2, mean 0.2
    assert metrics.grid_normalized_elbo(grid, data) == pytest.approx(0.2)


def run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "sivae", "toy2d", *args], capture_output=True, text=True, timeout=timeout
    )


def test_short_run_writes_metrics_and_plots(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "--dataset", "rings", "--objective", "soft-intro", "--out", str(out), "--iters", "150", "--no-progress",
        "vae_warmup_iters=50", "batch_size=128", "gnelbo_grid=64", "eval_samples=1000", "gnelbo_data_points=500",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "metrics.json").read_text())
    for key in ("kl", "jsd", "gnelbo", "kl_ref", "jsd_ref", "iters", "seconds"):
        assert key in result
    assert result["iters"] == 150
    assert all(math.isfinite(result[k]) for k in ("kl", "jsd", "gnelbo", "kl_ref", "jsd_ref"))
    assert 0 <= result["jsd"] <= math.log(2) + 1e-9
    for png in ("real.png", "generated.png", "density.png", "summary.png", "history.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "batch_size: 128" in (out / "config.yaml").read_text()


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_straight_result(tmp_path):
    """Killed after iteration 50 with checkpoints every 20: the second start resumes at 40 and ends with
    the weights, history and metrics of a run never interrupted (same thread count: bit for bit)."""
    cfg = Toy2DConfig(dataset="2spirals", objective=ObjectiveConfig(name="soft-intro", beta_neg=0.9), iters=90,
                      vae_warmup_iters=30, batch_size=64, lr_milestones=[60], checkpoint_every=20, log_every=10,
                      eval_samples=500, gnelbo_grid=32, gnelbo_data_points=200)  # fmt: skip
    straight, straight_history, _, _ = train(cfg, tmp_path / "straight", progress=False)
    assert [row["iter"] for row in straight_history] == [10.0 * k for k in range(1, 10)]

    out = tmp_path / "run"
    calls = 0

    def kill_after_50():
        nonlocal calls
        calls += 1
        if calls == 50:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(cfg, out, progress=False, on_iter=kill_after_50)
    checkpoints = sorted((out / "run" / "checkpoints").glob("*.pt"))
    assert [p.name for p in checkpoints] == [f"ckpt-{40 * 64:012d}.pt"] and not (out / "metrics.json").exists()
    other_config_dir = tmp_path / "other"
    shutil.copytree(out, other_config_dir)

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(out / "run", resumed_dir)
    resumed, history, _, _ = train(cfg, resumed_dir, progress=False)
    assert history == straight_history
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    result = run(cfg, out, progress=False)  # finishes from the same checkpoint, then removes it
    assert result["iters"] == 90 and not (out / "run" / "checkpoints").exists()

    # another configuration in the same directory never resumes that checkpoint: all 90 iterations run
    iterations = 0

    def count():
        nonlocal iterations
        iterations += 1

    run(Toy2DConfig(**{**cfg.__dict__, "seed": 7}), other_config_dir, progress=False, on_iter=count)
    assert iterations == 90

def test_runs_differing_only_in_how_they_are_saved_are_the_same_run(tmp_path):
    """A finished run counts as done whatever its checkpoint cadence (older runs have no such key); any key that
    changes the result makes it another run."""
    cfg = Toy2DConfig(dataset="rings")
    saved = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    del saved["checkpoint_every"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert same_config(cfg, tmp_path)
    assert same_config(Toy2DConfig(dataset="rings", checkpoint_every=7), tmp_path)
    assert not same_config(Toy2DConfig(dataset="rings", seed=93), tmp_path)
    assert not same_config(Toy2DConfig(dataset="rings", objective=ObjectiveConfig(beta_neg=0.5)), tmp_path)


def test_bad_override_is_refused_before_work(tmp_path):
    proc = run_cli("--out", str(tmp_path / "x"), "objective.beta_negg=1")
    assert proc.returncode == 2
    assert "objective.beta_negg" in proc.stderr and "unknown key" in proc.stderr
    proc = run_cli("--out", str(tmp_path / "x"), "batch_size=-4")
    assert proc.returncode == 2 and "batch_size" in proc.stderr
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_all_writes_table_and_resumes(tmp_path):
    args = ("--all", "--out", str(tmp_path), "--iters", "30", "--jobs", "2", "vae_warmup_iters=10", "batch_size=64",
            "gnelbo_grid=32", "eval_samples=500", "gnelbo_data_points=100")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "RESULTS.md").read_text()
    assert table.count("| 8gaussians |") == 3 and table.count("| soft-intro |") == 4
    assert (tmp_path / "samples.png").exists() and (tmp_path / "density.png").exists()
    stamp = (tmp_path / "rings-vae" / "metrics.json").stat().st_mtime_ns
    proc = run_cli(*args)  # everything is finished: nothing reruns
    assert proc.returncode == 0 and "runs to do" not in proc.stdout
    assert (tmp_path / "rings-vae" / "metrics.json").stat().st_mtime_ns == stamp


def test_the_run_config_file_is_what_the_study_trains():
    from sivae.core.config import load_config
    from sivae.train.schema import RunConfig
    from sivae.train.toy2d.presets import preset_config
    from sivae.train.toy2d.study import run_config

    repo = Path(__file__).parents[1]
    study = run_config(preset_config(repo / "configs" / "toy2d.yaml", "8gaussians", "soft-intro"))
    from_file = load_config(RunConfig, repo / "configs" / "toy2d_8gaussians.yaml")
    from_file.train.backend = study.train.backend  # the file leaves the backend to the launcher ("auto")
    assert to_dict(from_file) == to_dict(study)


def test_a_2d_run_trains_under_accelerate_with_two_processes(tmp_path):
    """The 2D study's run config through `sivae train` and Accelerate's DDP: both ranks end with the same
    weights, from different batches, and the checkpoint knows it was 2 processes."""
    from sivae.core.distributed import free_port

    repo = Path(__file__).parents[1]
    record = tmp_path / "record"
    record.mkdir()
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "SIVAE_TEST_RECORD": str(record)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]  # fmt: skip
    args = ["train", str(repo / "configs" / "toy2d_8gaussians.yaml"), "--run-dir", str(tmp_path / "ddp"),
            "train.total_kimg=10.24", "train.vae_warmup_kimg=5.12", "train.checkpoint_every_kimg=5.12",
            "train.log_every_kimg=2.56"]  # fmt: skip
    proc = subprocess.run([*launch, str(repo / "tests" / "train_driver.py"), *args], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(record / f"rank{r}.pt") for r in (0, 1))
    for name in rank0["params"]:
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
    assert len(rank0["batches"]) == len(rank1["batches"]) == 20  # 10.24 kimg / 512 per iteration
    assert not set(rank0["batches"]) & set(rank1["batches"]), "the ranks drew the same batches"
    final = sorted((tmp_path / "ddp" / "checkpoints").glob("*.pt"))[-1]
    assert torch.load(final, weights_only=False)["world_size"] == 2
