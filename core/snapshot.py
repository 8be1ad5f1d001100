"""Inference snapshots: the contract between the trainer and the eval package.

A snapshot holds the EMA weights of every network of the model (`networks`: name -> state dict),
the resolved run config and where training stood (images, kimg, level, blend). Snapshots written
before `networks` held the VAE's two under `encoder` and `decoder`; readers accept both. It is
written atomically, then a `.ready` marker beside it says it is complete; readers ignore snapshots
without a marker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sivae.core.fileio import atomic_write, atomic_write_text

FORMAT = "sivae-snapshot/1"
_NAME = re.compile(r"^snapshot-(\d{12})\.pt$")


class SnapshotError(RuntimeError):
    pass


def snapshot_path(directory: Path, images: int) -> Path:
    return Path(directory) / f"snapshot-{images:012d}.pt"


def ready_marker(path: Path) -> Path:
    return Path(path).with_suffix(".ready")


def write_snapshot(
    directory: Path,
    *,
    images: int,
    config: dict[str, Any],
    lod: int,
    blend: float,
    resolution: int,
    networks: dict[str, dict[str, torch.Tensor]],
) -> Path:
    path = snapshot_path(directory, images)
    state = {
        "format": FORMAT,
        "images": images,
        "kimg": images / 1000.0,
        "lod": lod,
        "blend": blend,
        "resolution": resolution,
        "config": config,
        "networks": {name: {k: v.detach().cpu() for k, v in state.items()} for name, state in networks.items()},
    }
    atomic_write(path, lambda f: torch.save(state, f))
    atomic_write_text(ready_marker(path), f"{images}\n")
    return path


def list_snapshots(directory: Path, ready_only: bool = True) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    paths = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    return [p for p in paths if ready_marker(p).exists()] if ready_only else paths


def read_snapshot(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SnapshotError(f"{path}: unreadable snapshot ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SnapshotError(f"{path}: not a {FORMAT} file")
    return state
