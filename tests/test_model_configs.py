"""Every run config in configs/ loads and builds its model; the reference schedules add up."""

from pathlib import Path

import pytest
import torch

from sivae.core.config import ConfigError, load_config
from sivae.models import build_model
from sivae.train.schema import RunConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "toy2d.yaml")  # toy2d has its own format


def test_the_expected_configs_exist():
    assert {p.name for p in RUN_CONFIGS} >= {"ffhq256.yaml", "celebahq256.yaml", "ffhq1024.yaml", "cifar10.yaml",
                                             "emoji.yaml"}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds_its_model(path):
    cfg = load_config(RunConfig, path)
    with torch.device("meta"):  # sizes only: no memory for the large ones
        model = build_model(cfg.model)
    top = cfg.train.schedule[-1].resolution
    if top is None:  # data that does not grow (the 2D study's run, point clouds)
        flat = (cfg.model.points, 3) if cfg.data.kind == "points" else (cfg.model.data_dim,)
        assert model.data_shape == flat and len(cfg.train.schedule) == 1
        return
    assert model.data_shape == (cfg.model.image_channels, top, top)
    assert all(model.data_shape_at(model.max_lod - k)[1] == top >> k for k in range(len(cfg.train.schedule)))


@pytest.mark.parametrize("name, images_k, epochs", [("ffhq256", 60, 300), ("ffhq1024", 60, 300),
                                                     ("celebahq256", 29, 300)])
def test_style_schedules_are_the_reference_epochs_in_kimg(name, images_k, epochs):
    cfg = load_config(RunConfig, CONFIGS / f"{name}.yaml")
    schedule = cfg.train.schedule
    assert sum(level.fade_in_kimg + level.stable_kimg for level in schedule) == images_k * epochs
    per_level = schedule[0].stable_kimg
    assert all(level.fade_in_kimg == per_level / 2 for level in schedule[1:])
    assert [level.beta_neg for level in schedule[:7]] == [2048, 2048, 2048, 1024, 512, 512, 512]
    assert cfg.train.optimizer.betas == (0.0, 0.99) and cfg.train.ema_halflife_kimg == 10
    assert cfg.train.vae_warmup_kimg == images_k  # one plain-VAE epoch


def test_cifar10_is_the_papers_setting():
    cfg = load_config(RunConfig, CONFIGS / "cifar10.yaml")
    assert (cfg.model.arch, cfg.model.max_resolution, cfg.model.latent_dim, cfg.model.channels) == (
        "standard", 32, 128, [64, 128, 256])
    o, level = cfg.objective, cfg.train.schedule[0]
    assert (o.beta_kl, o.beta_rec, o.beta_neg, level.batch, level.lr) == (1.0, 1.0, 256, 32, 2e-4)


def test_standard_channels_must_match_the_resolution(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {arch: standard, max_resolution: 64, channels: [64, 128, 256]}\n"
                    "train: {schedule: [{resolution: 64}]}\n")
    with pytest.raises(ConfigError, match=r"model\.channels"):
        load_config(RunConfig, path)
