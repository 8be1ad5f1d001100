"""Inversion: the encoder alone against latent refinement (`sivae reconstruct --refine-steps K`) on a split.

For each K in --steps (0 = the encoder alone) it reconstructs the first --images samples of the split with
the tools' own code and prints images/s and the mean PSNR / SSIM, in one process, one after the other.

    python benchmarks/inversion.py SNAPSHOT [--data DIR] [--split test] [--images 64] [--steps 0 10 50 200]
        [--space z] [--lr 0.03] [--threads 2] [--batch-size 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sivae.core.distributed import single_process_env
from sivae.tools.reconstruct import refine_latents
from sivae.tools.session import ToolOptions, open_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, help="data set (default: the model config's data.path)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 10, 50, 200])
    parser.add_argument("--space", choices=("z", "w"), default="z")
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tool = open_model(args.model, single_process_env(args.device), ToolOptions(batch_size=args.batch_size,
                                                                                progress=False))
    data = args.data or Path(tool.loaded.config.data.path)
    batches = list(tool.context.data_parts(data, args.split, args.images, desc="read"))
    count = sum(len(b.keys) for b in batches)
    print(f"# inversion: {args.model} ({tool.resolution}px, {tool.loaded.kimg:g} kimg), {count} {args.split} images, "
          f"refinement in {args.space} (Adam lr {args.lr}); {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print("| method | images/s | s/image | PSNR dB | SSIM |")
    print("|---|---|---|---|---|")
    for steps in args.steps:
        psnrs, ssims = [], []
        started = time.perf_counter()
        for batch in batches:
            if steps == 0:
                output = tool.context.reconstruct(batch.images, batch.keys)
            else:
                output = refine_latents(tool, batch.images, batch.keys, steps, space=args.space, lr=args.lr)
            measured = tool.kind.scores(tool.context, batch.images, output)
            psnrs.append(measured["psnr"])
            ssims.append(measured["ssim"])
        seconds = time.perf_counter() - started
        name = "encoder alone" if steps == 0 else f"refined, {steps} steps"
        print(f"| {name} | {count / seconds:.2f} | {seconds / count:.4f} | {np.concatenate(psnrs).mean():.3f} | "
              f"{np.concatenate(ssims).mean():.4f} |", flush=True)


if __name__ == "__main__":
    main()
