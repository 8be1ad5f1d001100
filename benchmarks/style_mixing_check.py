"""Does a style model's mixing behave as StyleGAN's: coarse styles carry the layout, fine ones the detail?

For row seeds R and column seeds C, each cell of a `sivae mix` grid takes the `--layers` styles from its
row source and the rest from its column source. A cell counts as closer to its row source when the MSE
of the two images' 4x4 average-pooled pixels is smaller against the row source than against the column
source. Printed for coarse, middle and fine layers, on the pixels as they are and with each image's mean
colour removed first (the top style slot sets the mean colour exactly: see benchmarks/RESULTS.md).
Expected of a model that separates layout from detail: coarse well above 50%, fine well below.

    python benchmarks/style_mixing_check.py SNAPSHOT [--rows 100-107] [--cols 200-207]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from sivae.core.distributed import single_process_env
from sivae.tools.latents import mix_styles, mixing_levels, parse_seeds
from sivae.tools.session import ToolOptions, open_model


def closer_to_rows(rows: torch.Tensor, columns: torch.Tensor, cells: torch.Tensor, centred: bool) -> float:
    """Fraction of cells [R, C, 3, H, W] whose pooled pixels are nearer their row source than their column
    source (rows [R, 3, H, W], columns [C, 3, H, W])."""

    def pooled(x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x.float(), 4)
        return x - x.mean(dim=(-2, -1), keepdim=True) if centred else x

    p_rows, p_columns = pooled(rows), pooled(columns)
    p_cells = pooled(cells.flatten(0, 1)).unflatten(0, cells.shape[:2])
    to_row = (p_cells - p_rows[:, None]).pow(2).mean(dim=(2, 3, 4))
    to_column = (p_cells - p_columns[None]).pow(2).mean(dim=(2, 3, 4))
    return float((to_row < to_column).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--rows", default="100-107")
    parser.add_argument("--cols", default="200-207")
    args = parser.parse_args()
    tool = open_model(args.model, single_process_env(), ToolOptions())
    row_seeds, column_seeds = parse_seeds(args.rows), parse_seeds(args.cols)
    print(f"{args.model}: {tool.resolution}px, {tool.loaded.kimg} kimg; rows {args.rows}, columns {args.cols}")
    print("| layers from the rows | cells closer to the row source | same, mean colour removed |")
    print("|---|---|---|")
    with torch.no_grad():
        row_styles = tool.styles(tool.latents_of_seeds(row_seeds))
        column_styles = tool.styles(tool.latents_of_seeds(column_seeds))
        rows, columns = tool.pictures(tool.synthesize(row_styles)), tool.pictures(tool.synthesize(column_styles))
        for layers in ("coarse", "middle", "fine"):
            mixed = mix_styles(row_styles, column_styles, mixing_levels(layers, tool.lod))
            cells = tool.pictures(tool.synthesize(mixed.flatten(0, 1))).unflatten(0, mixed.shape[:2])
            print(f"| {layers} | {closer_to_rows(rows, columns, cells, False):.0%} | "
                  f"{closer_to_rows(rows, columns, cells, True):.0%} |")


if __name__ == "__main__":
    main()
