"""Speed and memory of one Soft-IntroVAE training iteration (encoder step + decoder step) per level.

For each level of a run config's model (default: the FFHQ-256 configuration) this runs
train.steps.soft_intro_step through train.backend.LocalBackend with the run config's Adam (fused by default
since issue 12; the issue-4 figures in RESULTS ran the for-loop Adam), as the trainer does, at blend = 1,
and prints per level: the batch, seconds per iteration, images/s, the achieved GFLOP/s
(FLOPs per image from `models.summary`, FlopCounterMode), and peak memory:
- on CUDA: torch.cuda.max_memory_allocated during the timed iterations (model and optimizer state
  included);
- on CPU: the peak resident-set size during the warm-up and timed iterations minus the RSS after the
  model and optimizers were built (sampled every 2 ms from /proc/self/statm, freed heap returned to
  the system first with malloc_trim): gradients, Adam state (created at the first step), activations
  and allocator slack, next to the fp32 bytes autograd saves for backward per image from
  `models.summary` times the batch.

    python benchmarks/model_step.py [--config configs/ffhq256.yaml] [--levels 4 8 16]
        [--batches 8 8 8] [--warmup 1] [--iters 2] [--threads 2]
        [--device cuda] [--precision bf16] [--channels-last] [--compile]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import threading
import time
from pathlib import Path

import torch

from sivae.core.config import load_config
from sivae.models import build_model, lod_of
from sivae.train.backend import LocalBackend
from sivae.train.performance import start_level_compilation
from sivae.train.schema import RunConfig
from sivae.train.steps import soft_intro_step
from sivae.train.summary import summarize_level
from sivae.train.trainer import make_optimizers

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system, so that RSS counts live memory."""
    gc.collect()
    if platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Samples the resident set size in a background thread while active."""

    def __enter__(self) -> PeakRSS:
        release_free_memory()
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class CompiledBackend(LocalBackend):
    """LocalBackend whose forward passes go through torch.compile'd encoder and decoder."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compiled = {name: torch.compile(getattr(self.model, name)) for name in ("encoder", "decoder")}

    def callable(self, name):
        return self.compiled[name]


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return f"{names[0] if names else platform.processor()}, {os.cpu_count()} cores"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_level(run: RunConfig, resolution: int, batch: int, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    level = next(lv for lv in run.train.schedule if lv.resolution == resolution)
    lod = lod_of(resolution)
    torch.manual_seed(0)
    model = build_model(run.model).to(device).train()
    x = torch.rand(batch, *model.data_shape_at(lod), device=device) * 2 - 1
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizers = make_optimizers(model, run)
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["lr"] = level.lr
    if args.compile:
        start_level_compilation()  # as the trainer at a level switch: the level's graphs fit in the cache
    backend_cls = CompiledBackend if args.compile else LocalBackend
    backend = backend_cls(model, optimizers, device=device, precision=args.precision)
    backend.set_level(lod, 1.0)
    objective = run.objective
    if level.beta_neg is not None:
        objective = type(objective)(**{**vars(objective), "beta_neg": level.beta_neg})
    scale = objective.scale or 1.0 / model.input_dim(lod)

    with PeakRSS() as rss:
        for _ in range(args.warmup):  # first iterations: allocator growth, kernel selection, compilation
            soft_intro_step(backend, x, objective, scale)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            soft_intro_step(backend, x, objective, scale)
        synchronize(device)
        seconds = (time.perf_counter() - start) / args.iters
    summary = summarize_level(run.model, lod)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak - rss.base
    return {
        "resolution": resolution,
        "batch": batch,
        "seconds": seconds,
        "images_per_second": batch / seconds,
        "gflops": summary.flops_per_image * batch / seconds / 1e9,
        "peak_mib": peak / 2**20,
        "saved_mib": summary.activation_bytes_per_image * batch / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ffhq256.yaml")
    parser.add_argument("--levels", type=int, nargs="+", help="resolutions to run (default: the schedule's)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch per level (one value: all levels; "
                        "default: the schedule's global batch)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run = load_config(RunConfig, args.config)
    levels = args.levels or [lv.resolution for lv in run.train.schedule]
    if args.batches and len(args.batches) not in (1, len(levels)):
        parser.error("--batches takes one value or one per level")
    if args.batches:
        batches = args.batches * len(levels) if len(args.batches) == 1 else args.batches
    else:
        batches = [next(lv.batch for lv in run.train.schedule if lv.resolution == r) for r in levels]

    device = args.device
    machine = torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu_name()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# {args.config.name}: device {device} ({machine}), precision {args.precision}, "
          f"channels_last {args.channels_last}, compile {args.compile}, threads {torch.get_num_threads()}, "
          f"{args.warmup} warm-up + {args.iters} timed iterations per level; load average {load}")
    memory = "peak allocated MiB" if device.startswith("cuda") else "peak RSS over the built model, MiB"
    print(f"| level | batch | s/iteration | images/s | GFLOP/s | {memory} | saved-for-backward MiB (fp32) |")
    print("|---|---|---|---|---|---|---|")
    for resolution, batch in zip(levels, batches):
        r = bench_level(run, resolution, batch, args)
        print(f"| {r['resolution']}px | {r['batch']} | {r['seconds']:.3f} | {r['images_per_second']:.2f} | "
              f"{r['gflops']:.0f} | {r['peak_mib']:.0f} | {r['saved_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
