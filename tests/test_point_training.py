"""The pointcloud family through the trainer: Soft-IntroVAE (after a VAE warm-up) trains, checkpoints and
resumes bit-identically, writes rendered sample grids, and its snapshot is scored by the point metrics."""

from pathlib import Path

import pytest
import yaml
from test_trainer import assert_identical, final_state

from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.sources import parse_source
from sivae.eval.runner import evaluate
from sivae.launch.cli import main as sivae

TINY = {
    "model": {"arch": "pointcloud", "latent_dim": 8, "points": 32, "point_encoder_channels": [8, 16],
              "point_encoder_hidden": 16, "point_decoder_widths": [16, 32], "prior_std": 0.2},
    "data": {"kind": "points", "path": "REPLACED", "workers": 0, "shuffle_buffer": 8},
    "objective": {"name": "soft-intro", "reconstruction": "chamfer", "beta_rec": 20.0, "beta_kl": 1.0,
                  "beta_neg": 256.0},
    "train": {"schedule": [{"batch": 4, "lr": 0.0005}], "seed": 1, "vae_warmup_kimg": 0.008,
              "ema_halflife_kimg": 0.01, "optimizer": {"betas": [0.9, 0.999]}, "checkpoint_every_kimg": 0.008,
              "snapshot_every_kimg": 0.016, "sample_every_kimg": 0.016, "log_every_kimg": 0.008},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pointcloud")
    data = root / "shapes"
    build_dataset(parse_source("shapes3d:3"), data, BuildOptions(points=32, test_fraction=0.2, workers=0),
                  progress=False)
    config = root / "tiny_points.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "path": str(data)}}))
    return config, data


def train(config: Path, run_dir: Path, kimg: float) -> int:
    return sivae(["train", str(config), "--run-dir", str(run_dir), "--device", "cpu", f"train.total_kimg={kimg}"])


def test_pointcloud_model_trains_checkpoints_and_resumes_bit_identically(tmp_path, setup):
    config, _ = setup
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(config, straight, 0.032) == 0  # 8 iterations of 4 shapes: 2 of VAE warm-up, 6 Soft-IntroVAE
    assert train(config, resumed, 0.016) == 0
    assert final_state(resumed)["progress"]["images"] == 16
    assert train(config, resumed, 0.032) == 0
    a, b = final_state(straight), final_state(resumed)
    assert a["progress"]["images"] == b["progress"]["images"] == 32
    for key in ("model", "ema", "optimizers"):
        assert_identical(a[key], b[key], key)
    assert sorted(p.name for p in (straight / "samples").glob("*.png")) == [
        "reconstructions-000000000016.png", "reconstructions-000000000032.png",
        "samples-000000000016.png", "samples-000000000032.png"]

    snapshot = straight / "snapshots" / "snapshot-000000000032.pt"
    results = evaluate(snapshot, ["all"], tmp_path / "eval")
    assert results["metrics"] == ["points", "points_recon"]
    assert results["points_reference_count"] == 3 and results["recon_num_shapes"] == 3  # 15 shapes, a fifth held out
    for key in ("jsd", "cov_cd", "1nna_cd"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["mmd_cd"] > 0 and results["recon_cd"] > 0
    assert (tmp_path / "eval" / "samples.png").is_file() and (tmp_path / "eval" / "reconstructions.png").is_file()
    with pytest.raises(ValueError, match="applies to points data"):
        evaluate(snapshot, ["fid"], None)
