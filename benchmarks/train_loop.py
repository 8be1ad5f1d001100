"""The training loop's overhead over the bare model step, side by side in one run.

- bare step: `train.steps.training_step` on one pre-made batch, repeated (no data, no EMA, no logging);
- loop: `sivae train` (the Trainer) at the same level and batch, with the data stream, fade-in
  handling, EMA, logging, sample grids and checkpoints at the config's cadences. Its start-up (model
  build, first-batch latency, worker start) is cancelled by timing two runs of different lengths:
  loop time per image = (T_long - T_short) / (images_long - images_short).

    python benchmarks/train_loop.py [--config configs/emoji.yaml] [--resolution 16] [--batch 32] [--device cpu]

The overhead is loop / bare - 1 (target: under 10%).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch

from sivae.core.config import load_config
from sivae.core.distributed import single_process_env
from sivae.models import build_model, lod_of
from sivae.train.backend import LocalBackend
from sivae.train.schema import LevelConfig, RunConfig
from sivae.train.steps import training_step
from sivae.train.trainer import Trainer, make_optimizers

ROOT = Path(__file__).resolve().parents[1]


def bare_step_seconds(cfg: RunConfig, resolution: int, batch: int, iters: int, device: torch.device) -> float:
    """Seconds per iteration of the training step alone on a fixed batch."""
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    backend = LocalBackend(model, make_optimizers(model, cfg), device=device, precision=cfg.train.precision)
    lod = lod_of(resolution)
    backend.set_level(lod, 1.0)
    x = torch.rand(batch, cfg.model.image_channels, resolution, resolution, device=device) * 2 - 1
    scale = 1.0 / model.input_dim()
    for _ in range(3):
        training_step(backend, [x], cfg.objective, scale)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        training_step(backend, [x], cfg.objective, scale)
    _sync(device)
    return (time.perf_counter() - start) / iters


def loop_seconds(cfg: RunConfig, iters: int, device: torch.device) -> float:
    """Wall seconds of a whole `Trainer.run` of `iters` iterations (start-up included)."""
    batch = cfg.train.schedule[0].batch
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, total_kimg=iters * batch / 1000))
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        Trainer(cfg, Path(run_dir), single_process_env(str(device))).run()
        _sync(device)
        return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "emoji.yaml")
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=40, help="iterations of the short loop run (the long one: 3x)")
    p.add_argument("--workers", type=int, default=None, help="data.workers (default: the config's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    device = torch.device(args.device)
    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"data.workers={args.workers}")
    cfg = load_config(RunConfig, args.config, overrides)
    cfg.data.path = str((ROOT / cfg.data.path).resolve()) if not Path(cfg.data.path).is_absolute() else cfg.data.path
    level = LevelConfig(resolution=args.resolution, stable_kimg=1e9, batch=args.batch, lr=cfg.train.schedule[0].lr)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, schedule=[level], vae_warmup_kimg=0.0))

    print(f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, device {device}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"config {args.config.name} at {args.resolution}px, batch {args.batch}, data.workers {cfg.data.workers}, "
          f"cadences: log {cfg.train.log_every_kimg} / samples {cfg.train.sample_every_kimg} / checkpoint "
          f"{cfg.train.checkpoint_every_kimg} kimg")
    bare = bare_step_seconds(cfg, args.resolution, args.batch, args.iters, device)
    short = loop_seconds(cfg, args.iters, device)
    long = loop_seconds(cfg, 3 * args.iters, device)
    loop = (long - short) / (2 * args.iters)
    print("\n| | s/iteration | images/s |")
    print("|---|---|---|")
    print(f"| bare step | {bare:.4f} | {args.batch / bare:.1f} |")
    print(f"| training loop | {loop:.4f} | {args.batch / loop:.1f} |")
    print(f"\nloop overhead over the bare step: {100 * (loop / bare - 1):+.1f}%  (start-up of a run: "
          f"{short - args.iters * loop:.1f} s)")


if __name__ == "__main__":
    main()
