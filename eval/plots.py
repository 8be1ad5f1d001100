"""Plots for people: score histograms per data set (the paper's OOD figure) and metrics over kimg."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402

from train.fileio import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


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
    return _save(fig, path)


def metric_over_kimg(series: dict[str, list[tuple[float, float]]], path: Path, *, title: str) -> Path:
    """One metric: a line over kimg per metric key (e.g. fid, kid) of one run."""
    keys = list(series)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = sorted(series[key])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(key)
        ax.set_xlabel("kimg")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
