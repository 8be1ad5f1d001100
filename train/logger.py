"""What a person watching a run sees: TensorBoard scalars and image grids, PNG grids in
samples/, and one console line per log interval (kimg, level, images/s, ETA, main losses)."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from sivae.core.images import save_png
from sivae.core.run_dir import RunDir
from sivae.core.schedule import Position

CONSOLE_TERMS = ("rec", "kl_real", "kl_fake", "diff_kl", "exp_elbo_fake", "loss_vae")


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else f"{hours:d}:{minutes:02d}:{secs:02d}"


class Logger:
    def __init__(self, run_dir: RunDir, total_images: int, start_images: int, console: bool = True):
        self.run_dir, self.total_images, self.console = run_dir, total_images, console
        self.writer = SummaryWriter(log_dir=str(run_dir.tb))
        self.sums: dict[str, Tensor] = {}
        self.count = 0
        self.last_time, self.last_images = time.perf_counter(), start_images

    def accumulate(self, stats: dict[str, Tensor]) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def write_scalars(self, images: int, pos: Position, lr: float, progress, memory: int) -> None:
        """Means of the loss terms since the last call, the schedule position, speed, memory and
        the skip counters (`progress`: the trainer's Progress)."""
        kimg = images / 1000
        now = time.perf_counter()
        rate = (images - self.last_images) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_images = now, images
        sums = torch.stack([torch.as_tensor(v).float() for v in self.sums.values()]).tolist() if self.sums else []
        means = {k: v / max(self.count, 1) for k, v in zip(self.sums, sums)}  # one host read per interval
        step = images
        for key, value in means.items():
            self.writer.add_scalar(f"loss/{key}", value, step)
        self.writer.add_scalar("progress/kimg", kimg, step)
        if pos.resolution is not None:
            self.writer.add_scalar("progress/lod", pos.lod, step)
            self.writer.add_scalar("progress/resolution", pos.resolution, step)
        self.writer.add_scalar("progress/blend", pos.blend, step)
        self.writer.add_scalar("progress/lr", lr, step)
        self.writer.add_scalar("speed/images_per_second", rate, step)
        self.writer.add_scalar("resources/memory_gib", memory / 2**30, step)
        self.writer.add_scalar("data/skipped_samples", progress.skipped_samples, step)
        for net, count in progress.skipped_updates.items():
            self.writer.add_scalar(f"skipped_updates/{net}", count, step)
        self.writer.flush()
        level = f"{pos.resolution:4d}px blend {pos.blend:.2f}" if pos.resolution is not None else ""
        eta = (self.total_images - images) / rate if rate > 0 else float("inf")
        terms = "  ".join(f"{k} {means[k]:.4g}" for k in CONSOLE_TERMS if k in means)
        if self.console:
            print(
                f"kimg {kimg:9.3f}/{self.total_images / 1000:.1f}  {level}  "
                f"{rate:7.1f} img/s  ETA {format_duration(eta)}  {terms}",
                file=sys.stderr,
                flush=True,
            )
        self.sums, self.count = {}, 0

    def write_image(self, tag: str, array: np.ndarray, images: int) -> None:
        """An HxWx3 uint8 picture (a sample grid, a plot) as samples/TAG-<images>.png and in TensorBoard."""
        save_png(array, self.run_dir.samples / f"{tag}-{images:012d}.png", upscale_to=512)
        self.writer.add_image(tag, torch.from_numpy(array), images, dataformats="HWC")
        self.writer.flush()

    def write_point_clouds(self, tag: str, points: torch.Tensor, images: int) -> None:
        """Point clouds [B, N, 3] for TensorBoard's 3D mesh/point-cloud view (no file of their own)."""
        self.writer.add_mesh(tag, vertices=points.detach().float().cpu(), global_step=images)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
