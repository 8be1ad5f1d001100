"""Figures of a point-cloud model for RESULTS: an interpolation between test shapes of two classes.

The first test shape of each of two classes is encoded (posterior mean), the latents are mixed linearly in
`--steps` steps, and each mix is decoded; the row goes to PNG through core.points.point_cloud_grid (the
function the generation tools render with). Samples and reconstructions come from `sivae eval run`.

    python benchmarks/point_figures.py SNAPSHOT --out benchmarks/figures/pc-interp.png [--classes chair airplane]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sivae.core.images import save_png
from sivae.core.points import point_cloud_grid
from sivae.data_pipeline.loader import eval_batches
from sivae.data_pipeline.manifest import load_manifest
from sivae.eval.loading import load_model


def first_of_class(data: Path, points: int, name: str) -> torch.Tensor:
    """The first readable test shape of class `name` (keys of shapes3d: CLASS_NNNNN; of points:DIR: CLASS/...)."""
    for batch in eval_batches(data, "test", points, 64):
        for cloud, key, valid in zip(batch.images, batch.keys, batch.valid.tolist()):
            if valid and key.split("/")[0].split("_")[0] == name:
                return cloud
    raise SystemExit(f"no test shape of class {name!r} in {data}")


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshot", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="data set (default: the snapshot's data.path)")
    parser.add_argument("--classes", nargs=2, default=["chair", "airplane"])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    loaded = load_model(args.snapshot)
    data = args.data or Path(loaded.config.data.path)
    unknown = set(args.classes) - set(load_manifest(data).classes)
    if unknown:
        raise SystemExit(f"{data} has no class {', '.join(sorted(unknown))}")
    ends = torch.stack([first_of_class(data, loaded.config.model.points, name) for name in args.classes])
    mu, _ = loaded.model.encode(ends)
    weights = torch.linspace(0, 1, args.steps)[:, None]
    clouds = loaded.model.decode((1 - weights) * mu[0] + weights * mu[1])
    row = torch.cat([ends[:1], clouds, ends[1:]])  # the real shapes at both ends
    save_png(point_cloud_grid(row, columns=len(row)), args.out)
    print(f"wrote {args.out}: {args.classes[0]} -> {args.classes[1]} in {args.steps} steps, real shapes at the ends")


if __name__ == "__main__":
    main()
