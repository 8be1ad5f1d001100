"""The pointcloud family through the trainer: Soft-IntroVAE (after a VAE warm-up) trains, checkpoints and
resumes bit-identically, writes rendered sample grids, and its snapshot is scored by the point metrics."""

import itertools
from pathlib import Path

import pytest
import yaml
from test_trainer import assert_identical, final_state

from sivae.core.config import load_config
from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.sources import parse_source
from sivae.eval.runner import evaluate
from sivae.launch.cli import main as sivae
from sivae.models import build_model
from sivae.train.schema import RunConfig

CONFIG = Path(__file__).parents[1] / "configs" / "shapes3d.yaml"

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


def tiny_point_set(root: Path, per_class: int, test_fraction: float) -> tuple[Path, Path]:
    """A shapes3d set of 32-point clouds under `root` and the TINY run config (a YAML file) trained on it."""
    data = root / "shapes"
    build_dataset(parse_source(f"shapes3d:{per_class}"), data,
                  BuildOptions(points=32, test_fraction=test_fraction, workers=0), progress=False)
    config = root / "tiny_points.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "path": str(data)}}))
    return config, data


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_point_set(tmp_path_factory.mktemp("pointcloud"), 3, 0.2)


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


def test_shapes3d_config_is_the_reference_setting():
    cfg = load_config(RunConfig, CONFIG)
    o, level = cfg.objective, cfg.train.schedule[0]
    assert (o.name, o.reconstruction, o.beta_rec, o.beta_kl, o.beta_neg) == ("soft-intro", "chamfer", 20, 1, 256)
    assert (cfg.model.latent_dim, cfg.model.points, cfg.model.prior_std) == (128, 2048, 0.2)
    assert (level.batch, level.lr, cfg.train.optimizer.betas) == (32, 5e-4, (0.9, 0.999))
    model = build_model(cfg.model)
    count = {name: sum(p.numel() for p in model.network(name).parameters()) for name in model.networks}
    # by hand: convs 3-64-128-256-256-512 without bias, batch norm (2 per channel), 512-256, two 256-128 heads
    convs = 3 * 64 + 64 * 128 + 128 * 256 + 256 * 256 + 256 * 512
    assert count["encoder"] == convs + 2 * (64 + 128 + 256 + 256 + 512) + (512 * 256 + 256) + 2 * (256 * 128 + 128)
    widths = [128, 64, 128, 512, 1024, 2048 * 3]
    assert count["decoder"] == sum(a * b + b for a, b in itertools.pairwise(widths))
    assert 1 / model.input_dim() == 1 / (3 * 2048)  # the loss scale s of the reference
