"""Train one (dataset, objective) pair of the 2D study and measure it.

`run` is the whole experiment: the study's settings become a run config (`run_config`) that the shared
trainer trains like any other run (checkpoints, resume, TensorBoard, backends), then KL/JSD/gnELBO
and the plots of the trained networks.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from sivae.core.config import dump_yaml, require, to_dict
from sivae.core.distributed import single_process_env
from sivae.core.elbo import kl_divergence, reconstruction_error
from sivae.core.fileio import atomic_write, atomic_write_text
from sivae.core.host_memory import keep_freed_memory
from sivae.core.run_dir import RunDir
from sivae.core.schedule import LevelConfig
from sivae.data_pipeline.config import DataConfig
from sivae.models import build_model
from sivae.models.base import VAE
from sivae.models.config import ModelConfig
from sivae.train.backend import LocalBackend
from sivae.train.exit_codes import EXIT_OK
from sivae.train.schema import ObjectiveConfig, OptimizerConfig, RunConfig, TrainConfig
from sivae.train.toy2d import metrics, plots
from sivae.train.toy2d.datasets import HALF_RANGE, SAMPLERS
from sivae.train.trainer import Trainer, make_optimizers

Dataset = Literal["8gaussians", "2spirals", "checkerboard", "rings"]


@dataclass
class Toy2DConfig:
    dataset: Dataset = "8gaussians"
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    seed: int = 92
    iters: int = 30_000
    vae_warmup_iters: int = 2_000
    batch_size: int = 512
    lr: float = 2e-4
    lr_milestones: list[int] = field(default_factory=lambda: [10_000, 15_000])
    lr_decay: float = 0.1
    latent_dim: int = 2
    hidden: int = 256
    hidden_layers: int = 3
    eval_samples: int = 5_000
    gnelbo_grid: int = 1024
    gnelbo_data_points: int = 12_800
    log_every: int = 100
    checkpoint_every: int = 1_000  # iterations between resumable checkpoints (out/run/checkpoints/)
    # the trainer's backend: "single", or "accelerate" / "deepspeed" under their launchers
    backend: Literal["auto", "single", "accelerate", "deepspeed"] = "single"

    def __post_init__(self) -> None:
        for key in ("iters", "batch_size", "latent_dim", "hidden", "eval_samples", "gnelbo_grid", "log_every",
                    "checkpoint_every"):  # fmt: skip
            require(getattr(self, key) > 0, key, "must be > 0")
        for key in ("vae_warmup_iters", "hidden_layers", "gnelbo_data_points"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 < self.lr_decay <= 1, "lr_decay", "must be in (0, 1]")
        require(all(m > 0 for m in self.lr_milestones), "lr_milestones", "must be positive iterations")


def run_config(cfg: Toy2DConfig) -> RunConfig:
    """The study's settings as a run config of the shared trainer: the MLP VAE on `data.kind: toy2d`, one
    level without resolution, iterations counted as images (iterations x batch), Adam (fused: one kernel
    per step instead of one per parameter and moment, 5-9% of a 2D iteration measured;
    benchmarks/toy2d_speed.py) with the study's step decay, no optimizer reset and a resumable checkpoint
    every `checkpoint_every` iterations."""
    kimg = cfg.batch_size / 1000  # one iteration, in kimg
    return RunConfig(
        model=ModelConfig(arch="mlp", data_dim=2, latent_dim=cfg.latent_dim, hidden=cfg.hidden,
                          hidden_layers=cfg.hidden_layers),
        data=DataConfig(kind="toy2d", dataset=cfg.dataset, workers=0),
        objective=cfg.objective,
        train=TrainConfig(
            schedule=[LevelConfig(resolution=None, stable_kimg=cfg.iters * kimg, batch=cfg.batch_size, lr=cfg.lr)],
            seed=cfg.seed, total_kimg=cfg.iters * kimg, vae_warmup_kimg=cfg.vae_warmup_iters * kimg,
            optimizer=OptimizerConfig(betas=(0.9, 0.999), eps=1e-8, fused=True),
            lr_decay_kimg=[m * kimg for m in cfg.lr_milestones], lr_decay=cfg.lr_decay,
            reset_optimizer_on_level=False, ema_halflife_kimg=0.0, backend=cfg.backend,
            checkpoint_every_kimg=cfg.checkpoint_every * kimg, keep_checkpoints=1,
            log_every_kimg=cfg.log_every * kimg, sample_every_kimg=max(cfg.iters // 6, 1) * kimg,
            snapshot_every_kimg=cfg.iters * kimg,
        ),
    )  # fmt: skip


def step_backend(cfg: Toy2DConfig, fused_adam: bool = True) -> LocalBackend:
    """The study's networks and optimizers, as the trainer builds them, behind a bare single-process backend:
    for measuring one training step alone (benchmarks/toy2d_speed.py, the host-memory test)."""
    run = run_config(cfg)
    run.train.optimizer.fused = fused_adam
    model = build_model(run.model)
    return LocalBackend(model, make_optimizers(model, run))


def read_history(run: RunDir, batch_size: int) -> list[dict[str, float]]:
    """The loss terms the trainer logged (means over each `log_every` iterations), from its TensorBoard log.
    A resumed run logged some steps twice (after the checkpoint, before the kill): the last value counts."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.tb), size_guidance={"scalars": 0})
    events.Reload()
    rows: dict[int, dict[str, float]] = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith("loss/"):
            for event in events.Scalars(tag):
                rows.setdefault(event.step, {})[tag[len("loss/"):]] = event.value
    return [{"iter": step / batch_size, **rows[step]} for step in sorted(rows)]


def train(
    cfg: Toy2DConfig, run_dir: Path, progress: bool = True, on_iter=None
) -> tuple[VAE, list[dict[str, float]], int, float]:
    """Train with the shared trainer in `run_dir` (resuming the run there, if any); returns the trained
    networks, the logged history, the number of updates skipped for a non-finite loss or gradient, and the
    iterations per second of this process's share of the run."""
    env = single_process_env("cpu")
    trainer = Trainer(run_config(cfg), run_dir, env, console=progress,
                      on_iteration=None if on_iter is None else lambda _progress: on_iter())  # fmt: skip
    start_iteration, start = trainer.progress.iteration, time.perf_counter()
    status = trainer.run()
    if status != EXIT_OK:
        raise RuntimeError(f"{cfg.dataset}/{cfg.objective.name}: training stopped with status {status}")
    seconds = time.perf_counter() - start
    rate = (trainer.progress.iteration - start_iteration) / seconds if seconds > 0 else float("nan")
    history = read_history(trainer.run_dir, cfg.batch_size)
    return trainer.model.eval(), history, sum(trainer.progress.skipped_updates.values()), rate


def negative_elbo(model: VAE, points: torch.Tensor, batch: int = 65_536) -> torch.Tensor:
    """-ELBO with beta_rec = beta_kl = 1 and z = mu, per point."""
    out = []
    for chunk in points.split(batch):
        mu, logvar = model.encode(chunk)
        out.append(reconstruction_error(chunk, model.decode(mu)) + kl_divergence(mu, logvar))
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: VAE, cfg: Toy2DConfig) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """KL/JSD (textbook and reference conventions) and gnELBO, from fresh samples."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    c = HALF_RANGE[cfg.dataset]
    sampler = SAMPLERS[cfg.dataset]
    real = sampler(cfg.eval_samples, gen).numpy()
    fake = model.decode(torch.randn(cfg.eval_samples, cfg.latent_dim, generator=gen)).numpy()
    result = metrics.sample_metrics(real, fake, c)

    axis = torch.linspace(-2 * c, 2 * c, cfg.gnelbo_grid)
    grid = torch.cartesian_prod(axis, axis)  # row i*n + j is (axis[i], axis[j])
    neg_elbo_grid = negative_elbo(model, grid).numpy()
    neg_elbo_data = negative_elbo(model, sampler(cfg.gnelbo_data_points, gen)).numpy()
    result["gnelbo"] = metrics.grid_normalized_elbo(neg_elbo_grid, neg_elbo_data)
    density = np.exp(-neg_elbo_grid.astype(np.float64)).reshape(cfg.gnelbo_grid, cfg.gnelbo_grid)
    return result, {"real": real, "fake": fake, "density": density}


def _pool(density: np.ndarray, size: int = 256) -> np.ndarray:
    """Average-pool a square array down to at most `size` per side (for the table figure)."""
    k = max(1, density.shape[0] // size)
    n = density.shape[0] // k * k
    return density[:n, :n].reshape(n // k, k, n // k, k).mean(axis=(1, 3))


# Keys that say how a run is saved, not what it computes: runs that differ only in them are the same run.
OPERATIONAL_KEYS = ("checkpoint_every", "backend")


def same_config(cfg: Toy2DConfig, out: Path) -> bool:
    """Whether `out` holds a run (finished or not) of this configuration."""
    cfg_file = out / "config.yaml"
    if not cfg_file.is_file():
        return False
    saved, wanted = yaml.safe_load(cfg_file.read_text()), to_dict(cfg)
    for key in OPERATIONAL_KEYS:
        saved.pop(key, None)
        wanted.pop(key, None)
    return saved == wanted


def run(
    cfg: Toy2DConfig, out: str | Path, *, progress: bool = True, on_iter=None, threads: int | None = None
) -> dict[str, float]:
    """Train, evaluate and write config.yaml, metrics.json, history.json and the PNGs to `out`.

    `threads` sets torch's intra-op threads (None keeps the current setting). The process keeps freed
    memory for reuse (core.host_memory)."""
    keep_freed_memory()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    run_dir = out / "run"
    if run_dir.exists() and not same_config(cfg, out):
        shutil.rmtree(run_dir)  # a run of another configuration: start afresh
    dump_yaml(cfg, out / "config.yaml")
    train_start = time.perf_counter()
    model, history, skipped, rate = train(cfg, run_dir, progress=progress, on_iter=on_iter)
    train_seconds = time.perf_counter() - train_start
    eval_start = time.perf_counter()
    result, arrays = evaluate(model, cfg)
    result |= {
        "dataset": cfg.dataset,
        "objective": cfg.objective.name,
        "iters": cfg.iters,
        "seed": cfg.seed,
        "seconds": train_seconds + time.perf_counter() - eval_start,
        "train_seconds": train_seconds,
        "iters_per_second": rate,
        "skipped_updates": skipped,
    }
    c = HALF_RANGE[cfg.dataset]
    title = f"{cfg.dataset} / {cfg.objective.name}: KL {result['kl']:.3f}, JSD {result['jsd']:.3f}"
    plots.scatter_png(arrays["real"], c, out / "real.png", "real", "tab:blue")
    plots.scatter_png(arrays["fake"], c, out / "generated.png", "generated", "tab:green")
    plots.density_png(arrays["density"], c, out / "density.png", "exp(ELBO)")
    plots.summary_png(arrays["real"], arrays["fake"], arrays["density"], c, out / "summary.png", title)
    plots.history_png(history, out / "history.png", title)
    atomic_write(
        out / "arrays.npz",
        lambda f: np.savez_compressed(f, real=arrays["real"], fake=arrays["fake"], density=_pool(arrays["density"])),
    )
    atomic_write_text(out / "history.json", json.dumps(history))
    # metrics.json last: its presence marks a finished run.
    atomic_write_text(out / "metrics.json", json.dumps(_finite(result), indent=2))
    shutil.rmtree(RunDir(run_dir).checkpoints, ignore_errors=True)  # finished: metrics.json marks it done
    return result


def _finite(result: dict) -> dict:
    """JSON has no NaN/inf: write them as strings so the file stays standard JSON."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}
