"""Hand-built inputs for the eval tests: small image data sets and snapshots of tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sivae.core.config import to_dict
from sivae.core.eval_config import EvalConfig
from sivae.core.snapshot import write_snapshot
from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.config import DataConfig
from sivae.data_pipeline.sources import FolderSource
from sivae.models import ModelConfig, build_model
from sivae.train.schema import LevelConfig, ObjectiveConfig, RunConfig, TrainConfig

TINY_MODEL = ModelConfig(max_resolution=16, start_channels=8, max_channels=16, latent_dim=8, mapping_layers=2,
                         encoder_mapping_layers=1)


def disk_images(count: int, side: int, seed: int, *, background: int = 30, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """uint8 [N, side, side, 3]: bright disks of random size, place and colour on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1) * 2 - 1
    out = np.full((count, side, side, 3), background, np.uint8)
    for i in range(count):
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        radius = rng.uniform(0.3, 0.7)
        colour = rng.uniform(120, 255, 3) * np.asarray(tint)
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        out[i][inside] = colour.astype(np.uint8)
    return out


def stripe_images(count: int, side: int, seed: int) -> np.ndarray:
    """uint8 [N, side, side, 3]: bright random horizontal stripes (unlike disks: an OOD set)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, side, side, 3), np.uint8)
    for i in range(count):
        rows = rng.random(side) < 0.5
        out[i][rows] = rng.integers(150, 256, 3).astype(np.uint8)
    return out


def build_image_set(root: Path, images: np.ndarray, *, test_fraction: float = 0.25, shard_size: int = 50) -> Path:
    """A built data set at every level up to the images' size, from a folder of PNGs of `images`."""
    source = root / "src"
    source.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(source / f"img_{i:05d}.png")
    options = BuildOptions(workers=1, max_resolution=images.shape[1], shard_size=shard_size,
                           test_fraction=test_fraction)
    build_dataset(FolderSource(source), root / "set", options, progress=False)
    return root / "set"


def nightly_data(root: Path) -> dict[str, Path]:
    """The nightly tests' data: a disk set (trained on), a stripe set (OOD) and a reference cache directory."""
    return {"disks": build_image_set(root / "disks", disk_images(60, 16, seed=0)),
            "stripes": build_image_set(root / "stripes", stripe_images(24, 16, seed=1)), "cache": root / "cache"}


def tiny_run_config(data: Path, model: ModelConfig = TINY_MODEL, beta_rec: float = 0.5) -> RunConfig:
    levels = [LevelConfig(resolution=4 * 2**i, fade_in_kimg=1.0 if i else 0.0, stable_kimg=1.0)
              for i in range(model.max_lod + 1)]
    return RunConfig(model=model, data=DataConfig(path=str(data), workers=0),
                     objective=ObjectiveConfig(beta_rec=beta_rec, beta_kl=1.0), train=TrainConfig(schedule=levels))


def tiny_snapshot(directory: Path, data: Path, *, images: int = 5000, seed: int = 0, lod: int | None = None,
                  model: ModelConfig = TINY_MODEL, blend: float = 1.0, eval_config: EvalConfig | None = None) -> Path:
    """A snapshot of a freshly initialised tiny model (seeded), as the trainer writes it."""
    import torch

    torch.manual_seed(seed)
    vae = build_model(model)
    cfg = tiny_run_config(data, model)
    if eval_config is not None:
        cfg.eval = eval_config
    lod = model.max_lod if lod is None else lod
    return write_snapshot(directory, images=images, config=to_dict(cfg), lod=lod, blend=blend, resolution=4 * 2**lod,
                          networks={"encoder": vae.encoder.state_dict(), "decoder": vae.decoder.state_dict()})
