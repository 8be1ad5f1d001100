"""Point clouds shared by training, eval and the tools: the Chamfer distance and rendering to images.

A point cloud is a [N, 3] array (a batch: [B, N, 3]) of coordinates, y pointing up, normalised
into the sphere of radius 0.5 around the origin (sivae.data_pipeline.points).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from sivae.core.images import grid

# pairwise distance entries held at once by `pairwise_chamfer` (float32: 4 bytes each)
_PAIR_BLOCK_ENTRIES = 1 << 24


def _lifted(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """x [..., N, 3] and y [..., M, 3] as [..., N, 5] and [..., 5, M] whose product is the matrix of
    squared distances ||x||^2 + ||y||^2 - 2 x.y: one matrix product, no [N, M] temporaries (fp32)."""
    x, y = x.float(), y.float()
    xx, yy = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1, keepdim=True)
    left = torch.cat([x, xx, torch.ones_like(xx)], dim=-1)
    right = torch.cat([-2.0 * y, torch.ones_like(yy), yy], dim=-1).transpose(-1, -2)
    return left, right


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """||x_i - y_j||^2 for [..., N, 3] and [..., M, 3] -> [..., N, M], in fp32 (rounding may leave values
    a little below 0 where points coincide; the Chamfer functions clamp after the minimum)."""
    left, right = _lifted(x, y)
    return left @ right


def _nearest(d: Tensor) -> tuple[Tensor, Tensor]:
    """The squared distance of each x to its nearest y, and of each y to its nearest x."""
    return d.amin(dim=-1).clamp_min(0.0), d.amin(dim=-2).clamp_min(0.0)


def chamfer_distance(x: Tensor, y: Tensor, reduce: Literal["sum", "mean"] = "mean") -> Tensor:
    """Chamfer distance per pair of clouds [B, N, 3], [B, M, 3] -> [B]: the squared distance of every point
    to its nearest neighbour in the other cloud, summed (the reference's training loss) or averaged
    (the point-cloud literature's CD, used by the metrics) over each cloud, both directions added."""
    x_to_y, y_to_x = _nearest(squared_distances(x, y))
    if reduce == "sum":
        return x_to_y.sum(-1) + y_to_x.sum(-1)
    if reduce == "mean":
        return x_to_y.mean(-1) + y_to_x.mean(-1)
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


@torch.no_grad()
def pairwise_chamfer(a: Tensor, b: Tensor | None = None) -> Tensor:
    """The mean-reduced Chamfer distance of every cloud of `a` [n, N, 3] to every cloud of `b` [m, M, 3]
    -> [n, m], computed in blocks of pairs on the tensors' device (fp32), one distance buffer reused.
    Without `b`: `a` against itself, the blocks above the diagonal only, mirrored (the distance is
    symmetric), at about half the cost."""
    symmetric = b is None
    b = a if b is None else b
    n, m, points_a, points_b = len(a), len(b), a.shape[1], b.shape[1]
    out = torch.empty(n, m, dtype=torch.float32, device=a.device)
    left, right = _lifted(a, b)
    pairs = max(1, _PAIR_BLOCK_ENTRIES // (points_a * points_b))
    cols = min(m, pairs)
    rows = max(1, pairs // cols)
    buffer = torch.empty(rows * cols, points_a, points_b, dtype=torch.float32, device=a.device)
    for i in range(0, n, rows):
        block_a = left[i : i + rows]
        for j in range(0, m, cols):
            if symmetric and j + cols <= i:  # wholly below the diagonal
                continue
            block_b = right[j : j + cols]
            r, c = len(block_a), len(block_b)
            d = torch.bmm(block_a.repeat_interleave(c, dim=0), block_b.repeat(r, 1, 1), out=buffer[: r * c])
            x_to_y, y_to_x = _nearest(d)
            out[i : i + r, j : j + c] = (x_to_y.mean(-1) + y_to_x.mean(-1)).view(r, c)
    return torch.triu(out) + torch.triu(out, 1).T if symmetric else out


# ---------------------------------------------------------------------------------------------
# Rendering


def _view_rotation(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Rotation taking world coordinates (y up) to the camera's: x right, y up, z toward the viewer."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    about_y = np.array([[math.cos(az), 0, math.sin(az)], [0, 1, 0], [-math.sin(az), 0, math.cos(az)]])
    about_x = np.array([[1, 0, 0], [0, math.cos(el), -math.sin(el)], [0, math.sin(el), math.cos(el)]])
    return (about_x @ about_y).astype(np.float32)


def render_point_clouds(points: Tensor | np.ndarray, size: int = 96, *, azimuth: float = -35.0,
                        elevation: float = 25.0, radius: float = 0.5) -> Tensor:
    """Point clouds [B, N, 3] -> images [B, 3, size, size] in [-1, 1] (what core.images.grid takes).

    An orthographic view from (azimuth, elevation) degrees, the sphere of `radius` filling the frame;
    each point a 2-pixel dot shaded by depth (near: dark blue, far: light), nearer dots drawn over
    farther ones, on white.
    """
    clouds = points.detach().float().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points, np.float32)
    rotation = _view_rotation(azimuth, elevation)
    near, far = np.array([20, 60, 160], np.float32), np.array([170, 200, 235], np.float32)
    out = np.full((len(clouds), size, size, 3), 255, np.uint8)
    half = (size - 3) / 2.0
    for image, cloud in zip(out, clouds):
        camera = cloud @ rotation.T
        cols = np.clip(np.rint(half + camera[:, 0] / radius * half), 0, size - 2).astype(np.int64)
        rows = np.clip(np.rint(half - camera[:, 1] / radius * half), 0, size - 2).astype(np.int64)
        depth = np.clip((radius - camera[:, 2]) / (2 * radius), 0.0, 1.0)  # 0 nearest, 1 farthest
        order = np.argsort(-depth, kind="stable")  # far first: near dots overwrite them
        colours = (near + (far - near) * depth[order, None]).astype(np.uint8)
        r, c = rows[order], cols[order]
        for dr in (0, 1):
            for dc in (0, 1):
                image[r + dr, c + dc] = colours
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def point_cloud_grid(points: Tensor | np.ndarray, columns: int = 8, size: int = 96) -> np.ndarray:
    """Point clouds [B, N, 3] rendered (render_point_clouds) into one HxWx3 uint8 grid, row-major."""
    return grid(render_point_clouds(points, size), columns=max(1, min(columns, len(points))))
