"""PNG figures of the 2D study: real points, generated points, exp(ELBO) density, loss curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sivae.core.figures import save_figure


def _points(ax: plt.Axes, points: np.ndarray, half_range: float, color: str, title: str) -> None:
    lim = 2 * half_range
    ax.scatter(points[:, 0], points[:, 1], s=2, c=color, alpha=0.6, linewidths=0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def _density(ax: plt.Axes, density: np.ndarray, half_range: float, title: str) -> None:
    lim = 2 * half_range
    # density[i, j] is at x = grid[i], y = grid[j]; imshow wants rows = y.
    ax.imshow(density.T, origin="lower", extent=(-lim, lim, -lim, lim), cmap="jet", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def scatter_png(points: np.ndarray, half_range: float, path: Path, title: str, color: str) -> Path:
    fig, ax = plt.subplots(figsize=(4, 4))
    _points(ax, points, half_range, color, title)
    return save_figure(fig, path)


def scatter_array(points: np.ndarray, half_range: float, title: str, color: str) -> np.ndarray:
    """The scatter plot as an HxWx3 uint8 picture (for TensorBoard and the run's samples/)."""
    fig, ax = plt.subplots(figsize=(4, 4))
    _points(ax, points, half_range, color, title)
    fig.canvas.draw()
    array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return array


def density_png(density: np.ndarray, half_range: float, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4, 4))
    _density(ax, density, half_range, title)
    return save_figure(fig, path)


def summary_png(
    real: np.ndarray, fake: np.ndarray, density: np.ndarray, half_range: float, path: Path, title: str
) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    _points(axes[0], real, half_range, "tab:blue", "real")
    _points(axes[1], fake, half_range, "tab:green", "generated")
    _density(axes[2], density, half_range, "exp(ELBO)")
    fig.suptitle(title)
    return save_figure(fig, path)


def history_png(history: list[dict[str, float]], path: Path, title: str) -> Path:
    """One panel per logged term against the iteration."""
    keys = [k for k in history[0] if k != "iter"] if history else []
    cols = 4
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    iters = [h["iter"] for h in history]
    for ax, key in zip(axes.flat, keys):
        ax.plot(iters, [h.get(key, np.nan) for h in history], lw=1)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def table_png(
    images: dict[tuple[str, str], np.ndarray | None],
    rows: list[str],
    cols: list[str],
    half_ranges: dict[str, float],
    path: Path,
    kind: str,
) -> Path:
    """A rows x cols grid of generated-point scatters ('samples') or densities ('density')."""
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3 * len(cols), 3 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax, data = axes[i, j], images.get((r, c))
            if data is None:
                ax.axis("off")
                continue
            title = f"{r} / {c}"
            if kind == "density":
                _density(ax, data, half_ranges[r], title)
            else:
                _points(ax, data, half_ranges[r], "tab:green", title)
    fig.tight_layout()
    return save_figure(fig, path)
