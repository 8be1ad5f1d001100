"""The point-cloud metrics with real shapes in place of samples: the floor a perfect generator reaches.

Training shapes stand in for generated ones, exactly as the `points` metric uses samples: 3 trials of 3R
shapes (disjoint) for the voxel JSD against the R test shapes, and R of them for MMD, COV and 1-NNA with
Chamfer distance. Small R and few points make these floors far from 0 (JSD) and 100% (COV): compare a
model with them, not with the literature's 2048-point figures.

    python benchmarks/point_data_baseline.py DATA_DIR [--test-count R]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from sivae.core.points import pairwise_chamfer
from sivae.data_pipeline.loader import eval_batches
from sivae.data_pipeline.manifest import load_manifest
from sivae.eval.point_measures import distance_set_metrics, voxel_jsd


def clouds(data: Path, split: str, points: int) -> np.ndarray:
    parts = [b.images[b.valid].numpy() for b in eval_batches(data, split, points, 256)]
    return np.concatenate(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--test-count", type=int)
    args = parser.parse_args()
    points = load_manifest(args.data).resolutions[0]
    reference = clouds(args.data, "test", points)[: args.test_count]
    train = clouds(args.data, "train", points)
    r = len(reference)
    if len(train) < 9 * r:
        raise SystemExit(f"{len(train)} training shapes: the JSD trials need 9 x {r}")
    jsd = [voxel_jsd(train[k * 3 * r:(k + 1) * 3 * r], reference) for k in range(3)]
    samples, ref = torch.from_numpy(train[:r]), torch.from_numpy(reference)
    sets = distance_set_metrics(pairwise_chamfer(samples, ref), pairwise_chamfer(samples), pairwise_chamfer(ref))
    print(f"{args.data}: {r} test shapes of {points} points; training shapes as samples")
    print(f"jsd {np.mean(jsd):.4f} (std {np.std(jsd):.4f})  mmd_cd {sets['mmd']:.5f}  cov_cd {sets['cov']:.3f}  "
          f"1nna_cd {sets['1nna']:.3f}")


if __name__ == "__main__":
    main()
