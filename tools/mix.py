"""`sivae mix`: the style-mixing grid as StyleGAN shows it. Cell (r, c) decodes row source r's styles on the
chosen layers and column source c's on the others; the top row holds the column sources, the left column
the row sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sivae.tools.latents import mix_styles, mixing_levels
from sivae.tools.outputs import save_grid, save_image, write_index, write_json
from sivae.tools.session import ToolError, ToolModel


def mix(tool: ToolModel, row_seeds: list[int], column_seeds: list[int], layers: str, out: Path, *,
        html: bool = False) -> dict[str, Any]:
    tool.require_style("style mixing")
    try:
        levels = mixing_levels(layers, tool.lod)
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    if not tool.env.is_main:
        return {}
    with torch.no_grad():
        row_styles = tool.styles(tool.latents_of_seeds(row_seeds))
        column_styles = tool.styles(tool.latents_of_seeds(column_seeds))
        mixed = mix_styles(row_styles, column_styles, levels).flatten(0, 1)
        rows, columns, cells = (_synthesize(tool, s) for s in (row_styles, column_styles, mixed))
    blank = torch.full_like(rows[0], 255)
    table = [blank, *columns]
    for r, row in enumerate(rows):
        table += [row, *cells[r * len(column_seeds) : (r + 1) * len(column_seeds)]]
    save_grid(torch.stack(table), len(column_seeds) + 1, out / "mix.png")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for r, row_seed in enumerate(row_seeds):
        for c, column_seed in enumerate(column_seeds):
            save_image(cells[r * len(column_seeds) + c], out / "cells" / f"row{row_seed}_col{column_seed}.png")
    resolutions = [4 * 2**level for level in levels]
    summary = {"model": str(tool.loaded.path), "kimg": tool.loaded.kimg, "resolution": tool.resolution,
               "rows": row_seeds, "columns": column_seeds, "layers": layers, "row_levels_px": resolutions,
               "grid": "mix.png"}
    write_json(out / "mix.json", summary)
    if html:
        write_index(out, f"Style mixing by {tool.loaded.path.name}",
                    [("mix.png", f"rows give the {layers} styles ({', '.join(f'{r}px' for r in resolutions)}), "
                                 f"columns the rest")])
    return summary


def _synthesize(tool: ToolModel, styles: torch.Tensor) -> torch.Tensor:
    """uint8 images of per-slot w [N, slots, latent], in batches."""
    size = tool.options.batch_size
    return torch.cat([tool.pictures(tool.synthesize(styles[i : i + size])) for i in range(0, len(styles), size)])
