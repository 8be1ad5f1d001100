"""Figures written as PNG files, crash-safe, for every package that plots (the 2D study, eval reports)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sivae.core.fileio import atomic_write


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 100) -> Path:
    """Save and close `fig` atomically as PNG."""
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return path
