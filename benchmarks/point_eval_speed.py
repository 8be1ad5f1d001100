"""What the point-cloud metrics cost: pairwise Chamfer distances (MMD / COV / 1-NNA) and the voxel JSD.

The `points` metric of `sivae eval` with R reference shapes computes three distance matrices between R
samples and R references (S x R, and the symmetric S x S and R x R by their upper halves: about 2 R^2
Chamfer distances of two N-point clouds) and the JSD
of 3 trials of 3 R samples. This script times `core.points.pairwise_chamfer` on a few hundred pairs and
`eval.point_measures.voxel_jsd` on a few thousand clouds (random clouds: the cost does not depend on
them), in CPU seconds of this process, and scales both to R reference shapes (pairs grow as R^2, the
JSD as R).

    python benchmarks/point_eval_speed.py [--points 2048 256] [--reference 1000] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from sivae.core.points import pairwise_chamfer
from sivae.eval.point_measures import voxel_jsd


def cpu_seconds(fn, *args) -> float:
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[2048, 256])
    parser.add_argument("--reference", type=int, default=1000, help="reference shapes to scale to")
    parser.add_argument("--pairs", type=int, default=24, help="clouds per side of the timed matrix")
    parser.add_argument("--jsd-clouds", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    r = args.reference
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {args.threads} thread(s), torch {torch.__version__}, "
          f"device {device}; scaled to {r} reference shapes")
    print("| points | Chamfer pairs/s | 2 R^2 pairs (s) | JSD clouds/s | 12 R clouds JSD (s) | total (s) |")
    print("|---|---|---|---|---|---|")
    for n in args.points:
        clouds = torch.tensor(rng.uniform(-0.35, 0.35, (args.pairs, n, 3)), dtype=torch.float32, device=device)
        pairwise_chamfer(clouds[:2], clouds[:2])  # warm-up
        seconds = cpu_seconds(pairwise_chamfer, clouds, clouds)
        pair_rate = args.pairs**2 / seconds
        many = rng.uniform(-0.35, 0.35, (args.jsd_clouds, n, 3)).astype(np.float32)
        jsd_seconds = cpu_seconds(voxel_jsd, many[: args.jsd_clouds // 2], many[args.jsd_clouds // 2:])
        jsd_rate = args.jsd_clouds / jsd_seconds
        pairs_total = (r * r + r * (r + 1)) / pair_rate  # S x R, and the upper halves of S x S and R x R
        jsd_total = 3 * (3 * r + r) / jsd_rate  # 3 trials of 3R samples against the R references
        print(f"| {n} | {pair_rate:.0f} | {pairs_total:.0f} | {jsd_rate:.0f} | {jsd_total:.1f} | "
              f"{pairs_total + jsd_total:.0f} |")


if __name__ == "__main__":
    main()
