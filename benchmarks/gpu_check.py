"""The device check: what one GPU does with this project, in one short run, written as a table and JSON.

    python benchmarks/gpu_check.py [--out DIR] [--budget-s 420]     # on one H100 / H200: about 7 minutes
    python benchmarks/gpu_check.py --smoke                          # CI, on the CPU: a tiny config, seconds

Sections, in order (each row is skipped, and said so, once the time budget is spent):
1. Training iterations (`benchmarks/model_step.py`'s measurement: an encoder step and a decoder step of
   Soft-IntroVAE through LocalBackend with Adam, blend 1) of configs/ffhq256.yaml and configs/ffhq1024.yaml
   per level at the config's global batch (on one GPU that is the per-GPU batch; halved until it fits,
   and the table says so), bf16, eager at every level and torch.compile'd at `--compile-levels`:
   seconds per iteration, images/s, peak allocated memory, and model FLOP utilisation = FLOPs per image
   (`sivae models summary`'s count) x images/s over the device's dense bf16 peak.
2. The training loader's images/s at 256 and 1024 px (`data_pipeline.bench`) on shards built here from
   procedural images (nothing is downloaded).
3. The trainer end to end: 50 iterations of `sivae train` on the GPU from those shards, stopped and
   resumed (the resumed run must continue from its checkpoint, not start over).
4. DDP: 50 training steps through the Accelerate backend's DDP wrappers on a one-process group over NCCL
   (gloo with --smoke) next to the single-process backend, with the host syncs CUDA's sync debug mode
   reports during them (the hot path should have none).

Writes OUT/gpu_check.md and OUT/gpu_check.json (OUT: --out, else $OUT, else benchmarks/gpu_check-out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from model_step import bench_level, cpu_name

from sivae.core.config import load_config
from sivae.data_pipeline.bench import procedural_images, run_bench
from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.sources import FolderSource
from sivae.models import build_model, lod_of
from sivae.train.accelerate_backend import AccelerateBackend
from sivae.train.backend import LocalBackend
from sivae.train.schema import RunConfig
from sivae.train.steps import training_step
from sivae.train.trainer import make_optimizers

ROOT = Path(__file__).resolve().parents[1]
# dense bf16 tensor-core peak, TFLOP/s (NVIDIA's data sheets; the sparse figures are twice these)
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "A100": 312.0}  # fmt: skip


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def training_rows(config: Path, levels: list[int], compiled: bool, args, budget: Budget,
                  peak: float | None) -> list[dict]:
    run = load_config(RunConfig, config)
    rows = []
    for resolution in levels:
        batch = next(lv.batch for lv in run.train.schedule if lv.resolution == resolution)
        if args.batch:
            batch = min(batch, args.batch)
        row = {"config": config.name, "resolution": resolution, "compiled": compiled, "batch": batch}
        if budget.left() < 0:
            rows.append(row | {"skipped": "time budget spent"})
            continue
        options = argparse.Namespace(device=args.device, precision=args.precision, channels_last=False,
                                     compile=compiled, warmup=args.warmup, iters=args.iters)
        while True:
            try:
                result = bench_level(run, resolution, row["batch"], options)
                break
            except Exception as exc:  # halve the batch on out-of-memory, report anything else
                if not is_out_of_memory(exc) or row["batch"] == 1:
                    result = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                    break
                row["batch"] //= 2
                row["halved_from"] = batch
                torch.cuda.empty_cache()
        row |= result
        if "gflops" in result and peak:
            row["mfu"] = result["gflops"] / (peak * 1000)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def loader_rows(data: Path, resolutions: list[int], workers: list[int], images: int, budget: Budget) -> list[dict]:
    if budget.left() < 0:
        return [{"skipped": "time budget spent"}]
    rows = run_bench(data, resolutions, workers, batch_size=32, images=images)
    return [dataclasses.asdict(row) for row in rows]


def trainer_resume(data: Path, out: Path, args, budget: Budget) -> dict:
    """50 iterations of `sivae train`, then the same command with a larger total: it must resume."""
    if budget.left() < 0:
        return {"skipped": "time budget spent"}
    shutil.rmtree(out / "trainer-run", ignore_errors=True)  # a fresh run: the first part must not resume
    resolution, batch = args.trainer_resolution, args.trainer_batch
    kimg = args.trainer_iters * batch / 1000
    common = [sys.executable, "-m", "sivae", "train", str(ROOT / "configs" / "emoji.yaml"), "--run-dir",
              str(out / "trainer-run"), "--device", args.device, f"data.path={data}", "data.workers=2",
              f"train.schedule=[{{resolution: {resolution}, stable_kimg: 1000, batch: {batch}, lr: 0.002}}]",
              f"model.max_resolution={max(resolution, 4)}", f"train.precision={args.precision}",
              f"train.checkpoint_every_kimg={kimg}", f"train.snapshot_every_kimg={kimg}",
              f"train.sample_every_kimg={kimg}", f"train.log_every_kimg={kimg / 5}", "train.vae_warmup_kimg=0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs = {}
    for name, total in (("first", kimg), ("resumed", 2 * kimg)):
        start = time.perf_counter()
        proc = subprocess.run([*common, f"train.total_kimg={total}"], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=max(60.0, budget.left() + 120))
        found = re.search(r"resumed at kimg ([0-9.]+)", proc.stdout + proc.stderr)
        runs[name] = {"status": proc.returncode, "seconds": time.perf_counter() - start,
                      "resumed_at_kimg": float(found.group(1)) if found else None,
                      "tail": (proc.stdout + proc.stderr)[-600:]}
    checkpoints = sorted(p.name for p in (out / "trainer-run" / "checkpoints").glob("ckpt-*"))
    resumed_at = runs["resumed"]["resumed_at_kimg"]
    ok = runs["first"]["status"] == 0 and runs["resumed"]["status"] == 0 and resumed_at is not None and \
        abs(resumed_at - kimg) < 1e-3 and runs["first"]["resumed_at_kimg"] is None
    return {"resolution": resolution, "batch": batch, "iterations_per_run": args.trainer_iters,
            "checkpoints": checkpoints, "ok": ok, **runs}


def ddp_steps(args, budget: Budget) -> dict:
    """Seconds per training step and host syncs in `args.trainer_iters` steps: single process vs DDP."""
    if budget.left() < 0:
        return {"skipped": "time budget spent"}
    device, cuda = torch.device(args.device), args.device.startswith("cuda")
    resolution, batch = args.trainer_resolution, args.trainer_batch
    cfg = load_config(RunConfig, ROOT / "configs" / "emoji.yaml", [
        f"model.max_resolution={max(resolution, 4)}",
        f"train.schedule=[{{resolution: {resolution}, stable_kimg: 1000, batch: {batch}, lr: 0.002}}]"])
    lod = lod_of(resolution)
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    result: dict = {"resolution": resolution, "batch": batch, "iterations": args.trainer_iters,
                    "syncs_counted": cuda}  # fmt: skip
    try:
        for name in ("single", "ddp"):
            torch.manual_seed(0)
            model = build_model(cfg.model).to(device).train()
            optimizers = make_optimizers(model, cfg)
            if name == "ddp":
                place = SimpleNamespace(device=device, process_index=0, num_processes=1)
                backend = AccelerateBackend(model, optimizers, place, precision=args.precision)
            else:
                backend = LocalBackend(model, optimizers, device=device, precision=args.precision)
            backend.set_level(lod, 1.0)
            x = torch.rand(batch, *model.data_shape_at(lod), device=device) * 2 - 1
            scale = 1.0 / model.input_dim()
            for _ in range(3):  # warm-up: kernels chosen, Adam state and DDP buckets made
                training_step(backend, [x], cfg.objective, scale)
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    for _ in range(args.trainer_iters):
                        training_step(backend, [x], cfg.objective, scale)
                finally:
                    if cuda:
                        torch.cuda.set_sync_debug_mode("default")
            if cuda:
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - start) / args.trainer_iters
            syncs = sum("synchroniz" in str(w.message) for w in caught)
            result[name] = {"seconds_per_iteration": seconds, "host_syncs": syncs, "skips": backend.read_skips()}
    except Exception as exc:  # a report with the error beats no report
        result["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        dist.destroy_process_group()
    return result


def markdown(report: dict) -> str:
    lines = [f"# Device check: {report['device']}", "",
             f"torch {report['torch']}, precision {report['precision']}, {report['seconds']:.0f} s in all "
             f"(budget {report['budget_s']:.0f} s).", "",
             "| config | level | compiled | batch | s/iteration | images/s | peak MiB | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["training"]:
        if "seconds" not in r:
            lines.append(f"| {r['config']} | {r['resolution']}px | {r['compiled']} | {r['batch']} | "
                         f"{r.get('skipped') or r.get('error')} | | | | |")
            continue
        batch = f"{r['batch']} (halved from {r['halved_from']})" if "halved_from" in r else str(r["batch"])
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        lines.append(f"| {r['config']} | {r['resolution']}px | {r['compiled']} | {batch} | {r['seconds']:.4f} | "
                     f"{r['images_per_second']:.1f} | {r['peak_mib']:.0f} | {r['gflops'] / 1000:.2f} | {mfu} |")
    lines += ["", "| loader level | encoding | workers | images/s | uint8 images/s | PIL decode images/s |",
              "|---|---|---|---|---|---|"]
    for r in report["loader"]:
        if "skipped" in r:
            lines.append(f"| {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['resolution']}px | {r['encoding']} | {r['workers']} | {r['loader']:.0f} | "
                     f"{r['loader_uint8']:.0f} | {r['pil_decode']:.0f} |")
    t = report["trainer"]
    lines += [""]
    if "skipped" in t:
        lines.append(f"Trainer: {t['skipped']}.")
    else:
        lines.append(f"Trainer: {t['iterations_per_run']} iterations at {t['resolution']}px, batch {t['batch']}: "
                     f"{t['first']['seconds']:.1f} s (exit {t['first']['status']}), then resumed "
                     f"{t['resumed']['seconds']:.1f} s (exit {t['resumed']['status']}, resumed at kimg "
                     f"{t['resumed']['resumed_at_kimg']}); checkpoints {', '.join(t['checkpoints']) or 'none'}; "
                     f"{'OK' if t['ok'] else 'FAILED'}.")
    d = report["ddp"]
    if "skipped" in d or "error" in d:
        lines.append(f"DDP: {d.get('skipped') or d.get('error')}.")
    else:
        syncs = (f"host syncs in them: single {d['single']['host_syncs']}, DDP {d['ddp']['host_syncs']}"
                 if d["syncs_counted"] else "host syncs not counted (no CUDA)")
        lines.append(f"DDP (one-process group): {d['iterations']} steps at {d['resolution']}px, batch {d['batch']}: "
                     f"single {d['single']['seconds_per_iteration']:.4f} s/it, DDP "
                     f"{d['ddp']['seconds_per_iteration']:.4f} s/it; {syncs}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: that the script runs (CI)")
    p.add_argument("--out", type=Path, help="output directory (default $OUT, else benchmarks/gpu_check-out)")
    p.add_argument("--device", help="default cuda (cpu with --smoke)")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new rows after this many seconds")
    p.add_argument("--configs", nargs="+", type=Path, help="default configs/ffhq256.yaml configs/ffhq1024.yaml")
    p.add_argument("--compile-levels", type=int, nargs="*", help="levels also timed compiled (default 32 256 1024)")
    p.add_argument("--batch", type=int, help="cap every level's batch (default: the config's)")
    p.add_argument("--max-levels", type=int, help="only the first N levels of each config (default: all)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--loader-images", type=int, default=200, help="procedural images of the loader's data set")
    p.add_argument("--trainer-resolution", type=int, default=64)
    p.add_argument("--trainer-batch", type=int, default=64)
    p.add_argument("--trainer-iters", type=int, default=50)
    args = p.parse_args()
    if args.smoke:
        args.device = args.device or "cpu"
        args.configs = args.configs or [ROOT / "configs" / "emoji.yaml"]
        args.compile_levels = args.compile_levels or []
        args.batch, args.warmup, args.iters, args.max_levels = args.batch or 2, 1, 1, args.max_levels or 2
        args.loader_images, args.trainer_resolution, args.trainer_batch, args.trainer_iters = 12, 8, 4, 2
        loader_resolutions, loader_workers, top = [16], [0], 16
    else:
        args.device = args.device or "cuda"
        args.configs = args.configs or [ROOT / "configs" / "ffhq256.yaml", ROOT / "configs" / "ffhq1024.yaml"]
        args.compile_levels = [32, 256, 1024] if args.compile_levels is None else args.compile_levels
        loader_resolutions, loader_workers, top = [256, 1024], [0, min(4, os.cpu_count() or 1)], 1024
    out = args.out or Path(os.environ.get("OUT") or ROOT / "benchmarks" / "gpu_check-out")
    out.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            p.error("no CUDA device here: run with --smoke (CPU) or on a GPU machine")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name(0) if cuda else cpu_name()
    peak = peak_tflops(device_name) if cuda else None
    budget, start = Budget(args.budget_s), time.perf_counter()
    print(f"device check on {device_name} ({platform.node()}), budget {args.budget_s:.0f} s", flush=True)

    training = []
    for compiled in (False, True):  # every eager row first: compilation is what may run out of budget
        for config in args.configs:
            levels = [lv.resolution for lv in load_config(RunConfig, config).train.schedule][: args.max_levels]
            if compiled:
                levels = [r for r in levels if r in args.compile_levels]
            training += training_rows(config, levels, compiled, args, budget, peak)

    data = out / "procedural-data"
    if not (data / "manifest.json").is_file():
        procedural_images(out / "procedural-images", args.loader_images, top)
        build_dataset(FolderSource(out / "procedural-images"), data,
                      BuildOptions(max_resolution=top, workers=min(8, os.cpu_count() or 1), test_fraction=0.1),
                      force=True, progress=False)
    loader = loader_rows(data, loader_resolutions, loader_workers, args.loader_images // 2, budget)
    print(json.dumps(loader), flush=True)
    trainer = trainer_resume(data, out, args, budget)
    print(json.dumps({k: v for k, v in trainer.items() if k not in ("first", "resumed")}), flush=True)
    ddp = ddp_steps(args, budget)
    print(json.dumps(ddp), flush=True)

    report = {"device": device_name, "host": platform.node(), "torch": torch.__version__,
              "precision": args.precision, "peak_bf16_tflops": peak, "budget_s": args.budget_s,
              "training": training, "loader": loader, "trainer": trainer, "ddp": ddp,
              "seconds": time.perf_counter() - start}  # fmt: skip
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if trainer.get("ok", True) and not any("error" in r for r in training) else 1


if __name__ == "__main__":
    sys.exit(main())
