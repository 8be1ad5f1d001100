"""`sivae interpolate`: frames between seeds or encoded images (spherical in z, linear in w), as an animation
and a strip. Endpoint frames are the endpoints decoded: the seeds' samples, the images' reconstructions
(posterior means, decoded with the constant noise like every frame)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sivae.tools.latents import path_through
from sivae.tools.outputs import save_animation, save_grid, save_image, write_index, write_json
from sivae.tools.session import ToolModel


def interpolate(tool: ToolModel, endpoints: Tensor, names: list[str], out: Path, *, steps: int = 16,
                space: str = "z", fmt: str = "gif", html: bool = False) -> dict[str, Any]:
    """Interpolate between latents `endpoints` [K, latent] (seeds' z or images' posterior means); rank 0."""
    if space == "w":
        tool.require_style("interpolation in w")
    if not tool.env.is_main:
        return {}
    points = tool.styles(endpoints) if space == "w" else endpoints
    path = path_through(points, steps, space)
    frames = []
    for start in tool.context.bar(range(0, len(path), tool.options.batch_size), desc="interpolate"):
        chunk = path[start : start + tool.options.batch_size]
        with torch.no_grad():
            images = tool.synthesize(chunk) if space == "w" else tool.decode(chunk)
        frames.append(tool.pictures(images))
    frames = torch.cat(frames)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        save_image(frame, out / "frames" / f"frame{i:04d}.png")
    save_grid(frames, len(frames), out / "strip.png")
    animation = None
    if fmt != "png":
        animation = f"interpolation.{fmt}"
        save_animation(frames, out / animation)
    endpoint_frames = [i * (steps - 1) for i in range(len(names))]
    summary = {"model": str(tool.loaded.path), "kimg": tool.loaded.kimg, "resolution": tool.resolution,
               "space": space, "steps": steps, "frames": len(frames), "endpoints": names,
               "endpoint_frames": endpoint_frames, "strip": "strip.png", "animation": animation}
    write_json(out / "interpolate.json", summary)
    if html:
        figures = [("strip.png", " -> ".join(names))]
        if animation:
            figures.append((animation, f"{'spherical' if space == 'z' else 'linear'} interpolation in {space}"))
        write_index(out, f"Interpolation by {tool.loaded.path.name}", figures,
                    [f"{tool.size_text}, {'spherical in z' if space == 'z' else 'linear in w'}, {steps} frames "
                     f"per segment"])
    return summary
