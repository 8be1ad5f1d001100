"""`sivae eval run` end to end: metrics.json and plots, checkpoints, clear errors, and two gloo processes
giving what one process gives, with every test image counted exactly once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eval_helpers import build_image_set, disk_images, stripe_images, tiny_run_config, tiny_snapshot
from process_helpers import rendezvous_env, run_together

from sivae.core import checkpoint
from sivae.core.config import to_dict
from sivae.data_pipeline.manifest import load_manifest
from sivae.models import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-run")
    disks = build_image_set(root / "disks", disk_images(100, 16, seed=0))
    stripes = build_image_set(root / "stripes", stripe_images(40, 16, seed=1))
    small = build_image_set(root / "small", disk_images(20, 8, seed=2))
    return {"root": root, "disks": disks, "stripes": stripes, "small": small,
            "snapshot": tiny_snapshot(root / "snapshots", disks, images=3000)}


def sivae(*args, env=None, check=True):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "sivae", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=environment, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def run_args(sets, out, *extra):
    return ("eval", "run", sets["snapshot"], "--out", out, "--num-samples", 48, "--batch-size", 16, "--features",
            "standin", "--cache", sets["root"] / "cache", "--ood-data", sets["stripes"], "--iw-samples", 4,
            "--no-progress", *extra)


def test_eval_run_writes_metrics_and_plots_and_says_the_extractor_is_a_stand_in(sets, tmp_path):
    proc = sivae(*run_args(sets, tmp_path / "out"))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("fid", "kid", "mse", "psnr", "ssim", "rfid", "auroc", "auprc", "fpr95", "log_likelihood", "elbo"):
        assert isinstance(metrics[key], float), key
    assert metrics["extractor"] == "standin-randconv-v1" and metrics["extractor_is_standin"]
    assert any("STAND-IN" in w for w in metrics["warnings"]) and "STAND-IN" in proc.stderr + proc.stdout
    assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["fid"] > 0
    assert metrics["log_likelihood"] >= metrics["elbo"]
    manifest = load_manifest(sets["disks"])
    assert metrics["recon_num_images"] == manifest.split_sizes["test"] == metrics["ood"]["disks/set"]["count"]
    assert metrics["ood"]["stripes/set"]["count"] == load_manifest(sets["stripes"]).split_sizes["test"]
    assert metrics["fid_num_samples"] == 48 and metrics["fid_reference"]["count"] == manifest.split_sizes["train"]
    for png in ("samples.png", "reconstructions.png", "ood_histogram.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000


def test_two_gloo_processes_give_the_single_process_results(sets, tmp_path):
    single = sivae(*run_args(sets, tmp_path / "one", "--cache", tmp_path / "cache1"))
    assert single.returncode == 0
    env = rendezvous_env(2)
    command = [sys.executable, "-m", "sivae", *map(str, run_args(sets, tmp_path / "two", "--cache",
                                                                       tmp_path / "cache2", "--device", "cpu"))]
    run_together(command, [{**env, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(2)], ROOT)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2
    for key in ("fid_num_samples", "recon_num_images"):
        assert two[key] == one[key]
    assert two["fid_reference"]["count"] == one["fid_reference"]["count"]
    for name in one["ood"]:
        assert two["ood"][name]["count"] == one["ood"][name]["count"]
    for key in ("fid", "kid", "mse", "psnr", "ssim", "rfid", "log_likelihood", "elbo", "auroc", "auprc", "fpr95"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key


def test_a_full_checkpoint_evaluates_like_its_snapshot(sets, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_run_config(sets["disks"]).model)
    state = {"model": model.state_dict(), "ema": model.state_dict(), "config": to_dict(tiny_run_config(sets["disks"])),
             "progress": {"images": 6000}}
    path = checkpoint.save(tmp_path / "ckpt-000000006000.pt", state)
    sivae("eval", "run", path, "--out", tmp_path / "out", "--metrics", "recon", "--features", "standin", "--cache",
          tmp_path / "cache", "--no-progress")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["format"] == "checkpoint" and metrics["resolution"] == 16 and metrics["images"] == 6000
    assert "fid" not in metrics and 0 < metrics["ssim"] <= 1


def test_clear_errors_for_a_data_set_without_the_resolution_and_for_a_broken_snapshot(sets, tmp_path):
    proc = sivae("eval", "run", sets["snapshot"], "--out", tmp_path / "a", "--metrics", "ood", "--ood-data",
                 sets["small"], "--no-progress", check=False)
    assert proc.returncode == 2 and "no 16px level" in proc.stderr and "works at 16px" in proc.stderr
    broken = tmp_path / "snapshot-000000000001.pt"
    broken.write_bytes(sets["snapshot"].read_bytes()[:1000])
    proc = sivae("eval", "run", broken, "--out", tmp_path / "b", "--no-progress", check=False)
    assert proc.returncode == 1 and "unreadable" in proc.stderr and "Traceback" not in proc.stderr
    proc = sivae("eval", "run", sets["snapshot"], "--out", tmp_path / "c", "--metrics", "fid,bogus", check=False)
    assert proc.returncode != 0 and "bogus" in proc.stderr


class SquaredDistance(torch.nn.Module):
    """Stands in for an LPIPS TorchScript module: per-image mean squared difference of [-1, 1] images."""

    def forward(self, x, y):
        return (x - y).pow(2).mean(dim=(1, 2, 3))


def test_lpips_weights_add_an_lpips_figure(sets, tmp_path):
    from sivae.eval.runner import EvalOptions, evaluate

    path = tmp_path / "lpips.pt"
    torch.jit.script(SquaredDistance()).save(str(path))
    results = evaluate(sets["snapshot"], ["recon"], None, EvalOptions(features="standin", cache=tmp_path / "c",
                                                                      lpips=path, progress=False))
    # on [-1, 1] the squared difference is 4x that on [0, 1], which is what mse reports
    assert results["lpips"] == pytest.approx(4 * results["mse"], rel=1e-5)
