"""Train one (dataset, objective) pair of the 2D study and measure it.

`run` is the whole experiment: seed, MLP encoder/decoder, Adam with step decay, the shared
training steps of train.steps through a LocalBackend, then KL/JSD/gnELBO and the plots.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from tqdm import tqdm

from sivae.core.config import dump_yaml, require, to_dict
from sivae.core.elbo import kl_divergence, reconstruction_error
from sivae.core.fileio import atomic_write, atomic_write_text
from sivae.models.base import VAE
from sivae.models.mlp import mlp_vae
from sivae.train.backend import LocalBackend
from sivae.train.host_memory import keep_freed_memory
from sivae.train.schema import ObjectiveConfig
from sivae.train.steps import training_step
from sivae.train.toy2d import metrics, plots
from sivae.train.toy2d.datasets import HALF_RANGE, SAMPLERS

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
    checkpoint_every: int = 1_000  # iterations between resumable checkpoints (out/checkpoint.pt)

    def __post_init__(self) -> None:
        for key in ("iters", "batch_size", "latent_dim", "hidden", "eval_samples", "gnelbo_grid", "log_every",
                    "checkpoint_every"):  # fmt: skip
            require(getattr(self, key) > 0, key, "must be > 0")
        for key in ("vae_warmup_iters", "hidden_layers", "gnelbo_data_points"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 < self.lr_decay <= 1, "lr_decay", "must be in (0, 1]")
        require(all(m > 0 for m in self.lr_milestones), "lr_milestones", "must be positive iterations")


def build(
    cfg: Toy2DConfig, fused_adam: bool = True
) -> tuple[VAE, LocalBackend, list[torch.optim.lr_scheduler.LRScheduler]]:
    """The MLP VAE, its Adam per net (fused: one kernel per step instead of one per parameter and moment,
    5-9% of a 2D iteration measured; benchmarks/toy2d_speed.py) and their lr step decays."""
    model = mlp_vae(2, cfg.latent_dim, cfg.hidden, cfg.hidden_layers)
    optimizers = {
        name: torch.optim.Adam(getattr(model, name).parameters(), lr=cfg.lr, betas=(0.9, 0.999), fused=fused_adam)
        for name in ("encoder", "decoder")
    }
    schedulers = [
        torch.optim.lr_scheduler.MultiStepLR(opt, cfg.lr_milestones, gamma=cfg.lr_decay) for opt in optimizers.values()
    ]
    return model, LocalBackend(model, optimizers), schedulers


def train(
    cfg: Toy2DConfig, progress: bool = True, on_iter=None, checkpoint: Path | None = None
) -> tuple[VAE, list[dict[str, float]], int, float]:
    """Train from the seed; returns the model, the history logged every `log_every` iterations,
    the number of updates skipped for a non-finite loss or gradient, and the training seconds.

    With `checkpoint`, the whole state (networks, Adam, lr schedules, both RNG streams, history) is
    written there every `checkpoint_every` iterations, and a run finding one resumes from it: the
    result is bit-identical to an uninterrupted run on the same thread count."""
    torch.manual_seed(cfg.seed)
    data_gen = torch.Generator().manual_seed(cfg.seed + 1)
    model, backend, schedulers = build(cfg)
    sampler = SAMPLERS[cfg.dataset]
    scale = cfg.objective.scale or 1.0 / model.input_dim()
    history: list[dict[str, float]] = []
    start_iter, seconds_before = 0, 0.0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        backend.load_state_dict(state["backend"])
        backend.skipped.update(state["skipped"])
        for sched, sched_state in zip(schedulers, state["schedulers"]):
            sched.load_state_dict(sched_state)
        torch.set_rng_state(state["torch_rng"])
        data_gen.set_state(state["data_rng"])
        history, start_iter, seconds_before = state["history"], state["iteration"], state["train_seconds"]
        print(f"{cfg.dataset}/{cfg.objective.name}: resumed at iteration {start_iter}", file=sys.stderr)
    start = time.perf_counter()
    bar = tqdm(
        range(start_iter, cfg.iters),
        initial=start_iter,
        total=cfg.iters,
        desc=f"{cfg.dataset}/{cfg.objective.name}",
        disable=not progress,
        smoothing=0.05,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s
    )
    for it in bar:
        x = sampler(cfg.batch_size, data_gen)
        stats = training_step(backend, x, cfg.objective, scale, warmup=it < cfg.vae_warmup_iters)
        for sched in schedulers:
            sched.step()
        if it % cfg.log_every == 0 or it == cfg.iters - 1:
            row = {"iter": float(it), **{k: float(v) for k, v in stats.items()}}
            history.append(row)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("rec", "kl_real", "kl_fake")})
        done = it + 1
        if checkpoint is not None and done % cfg.checkpoint_every == 0 and done < cfg.iters:
            state = {
                "backend": backend.state_dict(),
                "skipped": dict(backend.skipped),
                "schedulers": [sched.state_dict() for sched in schedulers],
                "torch_rng": torch.get_rng_state(),
                "data_rng": data_gen.get_state(),
                "history": history,
                "iteration": done,
                "train_seconds": seconds_before + time.perf_counter() - start,
            }
            atomic_write(checkpoint, lambda f, state=state: torch.save(state, f))
        if on_iter is not None:
            on_iter()
    return model, history, sum(backend.skipped.values()), seconds_before + time.perf_counter() - start


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
OPERATIONAL_KEYS = ("checkpoint_every",)


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
    memory for reuse (train.host_memory)."""
    keep_freed_memory()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file() and not same_config(cfg, out):
        checkpoint.unlink()  # a checkpoint of another configuration: start afresh
    dump_yaml(cfg, out / "config.yaml")
    model, history, skipped, train_seconds = train(cfg, progress=progress, on_iter=on_iter, checkpoint=checkpoint)
    eval_start = time.perf_counter()
    result, arrays = evaluate(model, cfg)
    result |= {
        "dataset": cfg.dataset,
        "objective": cfg.objective.name,
        "iters": cfg.iters,
        "seed": cfg.seed,
        "seconds": train_seconds + time.perf_counter() - eval_start,
        "train_seconds": train_seconds,
        "iters_per_second": cfg.iters / train_seconds,
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
    checkpoint.unlink(missing_ok=True)
    return result


def _finite(result: dict) -> dict:
    """JSON has no NaN/inf: write them as strings so the file stays standard JSON."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}
