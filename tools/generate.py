"""`sivae generate`: one PNG per seed (seed and psi in its name and in samples.json), an optional grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sivae.core.distributed import gather_lists, part
from sivae.tools.outputs import save_grid, save_image, write_index, write_json
from sivae.tools.session import ToolError, ToolModel


def sample_name(seed: int, psi: float | None) -> str:
    return f"seed{seed:06d}_psi{1.0 if psi is None else psi:.2f}.png"


def array_name(seed: int, psi: float | None) -> str:
    """The raw sample (a point cloud's [N, 3] coordinates) beside its picture."""
    return sample_name(seed, psi).removesuffix(".png") + ".npy"


def generate(tool: ToolModel, seeds: list[int], out: Path, *, truncation_psi: float | None = None,
             cutoff: int | None = None, grid: tuple[int, int] | None = None, html: bool = False) -> dict[str, Any]:
    """Decode the prior sample of each seed (truncated on the first `cutoff` style slots, None: the model's
    truncation_cutoff); this rank takes its contiguous share of the seeds."""
    if truncation_psi is not None:
        tool.require_style("--truncation")
    if grid is not None and grid[0] * grid[1] > len(seeds):
        raise ToolError(f"--grid {grid[0]}x{grid[1]} needs {grid[0] * grid[1]} seeds; {len(seeds)} given")
    env, size = tool.env, tool.options.batch_size
    out.mkdir(parents=True, exist_ok=True)
    mine = part(len(seeds), env.rank, env.world_size)  # positions in `seeds`
    shown = grid[0] * grid[1] if grid else 0
    kept = []  # images of this rank's seeds that the grid shows
    chunks = range(mine.start, mine.stop, size)
    for start in tool.context.bar(chunks, desc="generate", total=len(chunks)):
        positions = range(start, min(start + size, mine.stop))
        batch = [seeds[i] for i in positions]
        outputs = tool.decode(tool.latents_of_seeds(batch), truncation_psi, cutoff)
        for i, seed, image, output in zip(positions, batch, tool.pictures(outputs), outputs):
            save_image(image, out / sample_name(seed, truncation_psi))
            if tool.kind.arrays:
                np.save(out / array_name(seed, truncation_psi), output.float().cpu().numpy())
            if i < shown:
                kept.append(image)
    grid_images = gather_lists(kept, env.world_size) if grid else []  # a few small images: pickled
    done = gather_lists([seeds[i] for i in mine], env.world_size)  # every rank has written its files
    if not env.is_main:
        return {}
    samples = [{"seed": s, "truncation_psi": truncation_psi, "file": sample_name(s, truncation_psi)}
               | ({"array": array_name(s, truncation_psi)} if tool.kind.arrays else {}) for s in done]
    figures = [(item["file"], f"seed {item['seed']}") for item in samples]
    if grid:
        save_grid(torch.stack(grid_images), grid[0], out / "grid.png")
        figures.insert(0, ("grid.png", f"seeds {seeds[0]}.. ({grid[0]}x{grid[1]})"))
    summary = {"model": str(tool.loaded.path), "kimg": tool.loaded.kimg, "resolution": tool.resolution,
               "truncation_psi": truncation_psi, "noise": "const", "samples": samples,
               "grid": "grid.png" if grid else None}
    write_json(out / "samples.json", summary)
    if html:
        psi = "none" if truncation_psi is None else f"{truncation_psi:g}"
        write_index(out, f"Samples of {tool.loaded.path.name}", figures,
                    [f"{tool.size_text}, {tool.loaded.kimg:g} kimg, truncation psi {psi}"])
    return summary
