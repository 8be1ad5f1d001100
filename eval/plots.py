"""Plots for people: score histograms per data set (the paper's OOD figure) and metrics over kimg."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sivae.core.figures import save_figure


def score_histograms(scores: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, in_distribution: str,
                     data_dim: int, iw_samples: int) -> Path:
    """Overlaid density histograms of each set's scores: IW log-likelihood (left) and ELBO (right),
    per dimension (nats / dim) so the axes read the same whatever the resolution."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, index, title in ((axes[0], 0, f"log-likelihood (IW, K = {iw_samples})"), (axes[1], 1, "ELBO")):
        values = {name: pair[index] / data_dim for name, pair in scores.items() if pair[index].size}
        everything = np.concatenate(list(values.values()))
        lo, hi = np.percentile(everything, [0.5, 100])  # one far outlier must not squash every histogram
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 50)
        for name, v in values.items():
            label = f"{name} (in-distribution)" if name == in_distribution else name
            ax.hist(np.clip(v, lo, hi), bins=bins, density=True, alpha=0.5, label=f"{label}, n = {v.size}")
        ax.set_title(title)
        ax.set_xlabel("nats per dimension (higher: more in-distribution)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def metric_over_kimg(series: dict[str, list[tuple[float, float]]], path: Path, *, title: str) -> Path:
    """Every metric of one run over kimg, a panel each (four to a row)."""
    keys = list(series)
    columns = min(4, len(keys))
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        points = sorted(series[key])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(key)
        ax.set_xlabel("kimg")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
