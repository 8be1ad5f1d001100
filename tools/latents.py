"""The tools' latent arithmetic, pure functions: seed lists, interpolation paths, style-mixing layer ranges."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

MAX_SEEDS = 100_000


def parse_seeds(text: str) -> list[int]:
    """'0-99', '3,7,12' or '0-4,10' -> the seeds in the order given (ranges inclusive)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        try:
            if dash:
                low, high = int(first), int(last)
                if high < low:
                    raise ValueError
                seeds.extend(range(low, high + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"{part!r} is not a seed or a range A-B with A <= B (e.g. 0-99 or 1,5,9)") from None
        if len(seeds) > MAX_SEEDS:
            raise ValueError(f"more than {MAX_SEEDS} seeds")
    if any(s < 0 for s in seeds):
        raise ValueError("seeds are non-negative")
    return seeds


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between rows a and b [B, L] at fractions t [T] -> [T, B, L]: along the
    great circle with the norm interpolated linearly (the path a Gaussian latent keeps typical norms on)."""
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    unit_a, unit_b = a / norm_a, b / norm_b
    omega = torch.arccos((unit_a * unit_b).sum(-1, keepdim=True).clamp(-1.0, 1.0))
    t = t.view(-1, 1, 1).to(a.dtype)
    sin_omega = torch.sin(omega)
    nearly_parallel = sin_omega.abs() < 1e-6
    safe = torch.where(nearly_parallel, torch.ones_like(sin_omega), sin_omega)
    direction = torch.where(nearly_parallel, torch.lerp(unit_a, unit_b, t),
                            (torch.sin((1 - t) * omega) * unit_a + torch.sin(t * omega) * unit_b) / safe)
    return direction * torch.lerp(norm_a, norm_b, t)


def path_through(points: Tensor, steps: int, space: str) -> Tensor:
    """Frames visiting `points` [K, ...] in order, `steps` frames per segment counting both ends:
    [(K - 1) * (steps - 1) + 1, ...]; spherical in z, linear in w. Every endpoint frame is the point
    itself, exactly."""
    if points.shape[0] < 2:
        raise ValueError("an interpolation needs at least two endpoints")
    if steps < 2:
        raise ValueError("--steps must be at least 2 (the two endpoints)")
    t = torch.linspace(0.0, 1.0, steps, device=points.device)[:-1]
    frames = []
    for a, b in itertools.pairwise(points):
        flat_a, flat_b = a.reshape(1, -1), b.reshape(1, -1)
        if space == "z":
            segment = slerp(flat_a, flat_b, t)[:, 0]
        else:
            segment = torch.lerp(flat_a, flat_b, t.view(-1, 1))
        segment[0] = flat_a[0]
        frames.append(segment.reshape(-1, *a.shape))
    frames.append(points[-1:])
    return torch.cat(frames)


# StyleGAN's named ranges of a style-mixing figure, by resolution
COARSE, MIDDLE = (4, 8), (16, 32)


def mixing_levels(layers: str, lod: int) -> list[int]:
    """The levels (0 = 4px) whose styles the row sources give, for `layers` at a model of level `lod`.

    coarse = 4-8px, middle = 16-32px, fine = 64px and up, as StyleGAN names them; a model whose top level
    is below 64px has its top level as fine and the one below it as middle. 'A-B' names resolutions in px."""
    levels = list(range(lod + 1))
    resolution = [4 * 2**level for level in levels]
    if layers in ("coarse", "middle", "fine"):
        if lod >= 4:
            ranges = {"coarse": COARSE, "middle": MIDDLE, "fine": (64, resolution[-1])}
            low, high = ranges[layers]
            chosen = [lv for lv, r in zip(levels, resolution) if low <= r <= high]
        else:
            fine = [lod] if lod >= 1 else []
            middle = [lod - 1] if lod >= 2 else []
            chosen = {"fine": fine, "middle": middle,
                      "coarse": [lv for lv in levels if lv not in fine and lv not in middle]}[layers]
        if not chosen:
            raise ValueError(f"a {resolution[-1]}px model has no {layers} layers")
        return chosen
    first, dash, last = layers.partition("-")
    try:
        low, high = int(first), int(last if dash else first)
    except ValueError:
        raise ValueError(f"--layers {layers!r}: coarse, middle, fine or a resolution range A-B (e.g. 8-16)") from None
    chosen = [lv for lv, r in zip(levels, resolution) if low <= r <= high]
    if not chosen or low not in resolution or high not in resolution:
        raise ValueError(f"--layers {layers}: resolutions between 4 and {resolution[-1]}px, powers of two")
    return chosen


def mix_styles(row_styles: Tensor, column_styles: Tensor, levels: list[int]) -> Tensor:
    """[R, S, L] and [C, S, L] -> [R, C, S, L]: cell (r, c) has row r's styles on the slots of `levels`
    (two per level) and column c's on the rest."""
    slots = row_styles.shape[1]
    from_row = torch.zeros(slots, dtype=torch.bool, device=row_styles.device)
    for level in levels:
        from_row[2 * level : 2 * level + 2] = True
    rows, columns = row_styles[:, None], column_styles[None, :]
    return torch.where(from_row.view(1, 1, slots, 1), rows, columns)
