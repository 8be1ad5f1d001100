"""The generation metrics of point clouds, as pure functions of clouds and distance matrices.

- `voxel_jsd`: the reference's JSD (Achlioptas et al. 2018): every point of a set of clouds counted in
  its nearest cell of a 28^3 grid over [-0.5, 0.5]^3 (only the cells inside the sphere of radius 0.5),
  then the Jensen-Shannon divergence (base 2) between the two sets' normalised counts.
- `distance_set_metrics`: from Chamfer distances (core.points.pairwise_chamfer) between generated (S)
  and reference (R) clouds, the literature's MMD (mean over references of the distance to the nearest
  sample), COV (the share of references that are some sample's nearest reference) and 1-NNA (the
  leave-one-out accuracy of the 1-nearest-neighbour classifier on S u R: 50% when the sets are alike).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from scipy.stats import entropy
from torch import Tensor

JSD_GRID = 28  # the reference's grid resolution


@functools.cache
def sphere_grid(resolution: int) -> np.ndarray:
    """Centres of the cells of a resolution^3 grid over [-0.5, 0.5]^3 (spacing 1 / (resolution - 1)) that lie
    in the sphere of radius 0.5, in (i, j, k) order, float32 [C, 3]."""
    axis = np.arange(resolution) / (resolution - 1) - 0.5
    cube = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return cube[np.linalg.norm(cube, axis=1) <= 0.5].astype(np.float32)


def nearest_cells(points: np.ndarray, resolution: int = JSD_GRID) -> np.ndarray:
    """Index into `sphere_grid(resolution)` of the cell centre nearest each point [P, 3] -> [P].

    The nearest centre of the whole cube is found by rounding; when it lies outside the sphere, the
    nearest centre inside it is searched (scikit-learn's KD-tree) for those points only.
    """
    from sklearn.neighbors import NearestNeighbors

    cells = sphere_grid(resolution)
    n = resolution - 1
    ijk = np.clip(np.rint((np.asarray(points, np.float64) + 0.5) * n), 0, n).astype(np.int64)
    centres = ijk / n - 0.5
    inside = np.linalg.norm(centres, axis=1) <= 0.5
    cube_to_cell = np.full(resolution**3, -1, np.int64)
    cube_index = np.rint((cells + 0.5) * n).astype(np.int64) @ np.array([resolution**2, resolution, 1])
    cube_to_cell[cube_index] = np.arange(len(cells))
    out = cube_to_cell[ijk @ np.array([resolution**2, resolution, 1])]
    outside = ~inside
    if outside.any():
        tree = NearestNeighbors(n_neighbors=1).fit(cells)
        out[outside] = tree.kneighbors(np.asarray(points)[outside], return_distance=False)[:, 0]
    return out


def occupancy_counts(clouds: np.ndarray | Tensor, resolution: int = JSD_GRID) -> np.ndarray:
    """Points of all clouds [B, N, 3] per cell of the sphere grid -> [C] counts."""
    points = clouds.detach().cpu().numpy() if isinstance(clouds, Tensor) else np.asarray(clouds)
    cells = nearest_cells(points.reshape(-1, 3), resolution)
    return np.bincount(cells, minlength=len(sphere_grid(resolution))).astype(np.float64)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JSD (base 2) of two non-negative count vectors, each normalised to sum 1."""
    p, q = p / p.sum(), q / q.sum()
    return float(entropy((p + q) / 2.0, base=2) - (entropy(p, base=2) + entropy(q, base=2)) / 2.0)


def voxel_jsd(generated: np.ndarray | Tensor, reference: np.ndarray | Tensor, resolution: int = JSD_GRID) -> float:
    """The reference's JSD between the occupancy of two sets of clouds."""
    return jensen_shannon(occupancy_counts(generated, resolution), occupancy_counts(reference, resolution))


def minimum_matching_distance(d_sr: Tensor) -> float:
    """MMD: mean over references (columns) of the distance to the nearest sample (rows)."""
    return float(d_sr.min(dim=0).values.mean())


def coverage(d_sr: Tensor) -> float:
    """COV: the share of references (columns) that are the nearest reference of at least one sample (rows)."""
    return len(torch.unique(d_sr.argmin(dim=1))) / d_sr.shape[1]


def one_nearest_neighbour_accuracy(d_sr: Tensor, d_ss: Tensor, d_rr: Tensor) -> float:
    """1-NNA: each cloud of S u R labelled by the set of its nearest other cloud; the share labelled right."""
    s, r = d_ss.shape[0], d_rr.shape[0]
    full = torch.cat([torch.cat([d_ss, d_sr], dim=1), torch.cat([d_sr.T, d_rr], dim=1)]).double()
    full.fill_diagonal_(float("inf"))  # leave one out
    labels = torch.cat([torch.ones(s, dtype=torch.bool), torch.zeros(r, dtype=torch.bool)]).to(full.device)
    predicted = labels[full.argmin(dim=1)]
    return float((predicted == labels).double().mean())


def distance_set_metrics(d_sr: Tensor, d_ss: Tensor, d_rr: Tensor) -> dict[str, float]:
    """MMD, COV and 1-NNA from the S x R, S x S and R x R distance matrices (COV and 1-NNA as fractions)."""
    return {"mmd": minimum_matching_distance(d_sr), "cov": coverage(d_sr),
            "1nna": one_nearest_neighbour_accuracy(d_sr, d_ss, d_rr)}
