"""What the tools write: single images (exact pixels), grids and strips, animations, JSON, an HTML index."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sivae.core.fileio import atomic_write_bytes, atomic_write_text
from sivae.core.images import grid, save_png

GRID_UPSCALE = 768  # grids are enlarged (nearest neighbour) to about this many pixels so small levels stay visible


def save_image(image: Tensor, path: Path) -> Path:
    """One uint8 image [3, H, W] as a PNG of exactly its pixels."""
    return save_png(image.permute(1, 2, 0).cpu().numpy(), path)


def as_unit(images: Tensor) -> Tensor:
    """uint8 -> [-1, 1] floats (what core.images.grid takes)."""
    return images.float() / 127.5 - 1.0


def save_grid(images: Tensor, columns: int, path: Path) -> Path:
    """uint8 images [N, 3, H, W] row-major in a padded grid, enlarged for viewing."""
    return save_png(grid(as_unit(images), columns=columns), path, upscale_to=GRID_UPSCALE)


def save_animation(frames: Tensor, path: Path, fps: int = 12) -> Path:
    """uint8 frames [T, 3, H, W] as an animated GIF or, for a .mp4 path, H.264 video (PyAV)."""
    arrays = [f.permute(1, 2, 0).cpu().numpy() for f in frames]
    scale = max(1, 256 // arrays[0].shape[0])  # small levels enlarged, nearest neighbour
    arrays = [np.repeat(np.repeat(a, scale, axis=0), scale, axis=1) for a in arrays]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        _write_mp4(arrays, path, fps)
        return path
    images = [Image.fromarray(a) for a in arrays]
    tmp = path.with_suffix(".tmp.gif")
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)
    return path


def _write_mp4(arrays: list[np.ndarray], path: Path, fps: int) -> None:
    import av

    height, width = arrays[0].shape[:2]
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p needs even sides
        stream.pix_fmt = "yuv420p"
        for array in arrays:
            padded = np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def write_index(out_dir: Path, title: str, figures: list[tuple[str, str]], notes: list[str] = ()) -> Path:
    """OUT/index.html showing each (relative path, caption) as a captioned image, GIF or (.mp4) video."""
    rows = []
    for rel, caption in figures:
        source, alt = html.escape(rel, quote=True), html.escape(caption, quote=True)
        media = (f'<video src="{source}" controls loop></video>' if rel.endswith(".mp4")
                 else f'<img src="{source}" alt="{alt}">')
        rows.append(f"<figure>{media}<figcaption>{html.escape(caption)}</figcaption></figure>")
    body = "\n".join([f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(n)}</p>" for n in notes), *rows])
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>img{{image-rendering:pixelated;max-width:100%}}"
            "figure{display:inline-block;margin:8px}</style></head>\n<body>\n" + body + "\n</body></html>\n")
    return atomic_write_bytes(out_dir / "index.html", page.encode())


def side_by_side(*images: Tensor, pad: int = 2) -> Tensor:
    """uint8 images [3, H, W] joined left to right with white padding."""
    white = torch.full((3, images[0].shape[1], pad), 255, dtype=torch.uint8)
    parts = [images[0]]
    for image in images[1:]:
        parts += [white, image]
    return torch.cat(parts, dim=2)
