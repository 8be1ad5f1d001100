"""Full training state on disk: atomic writes, the newest readable checkpoint, RNG state.

A checkpoint holds tensors and plain types only, so `torch.load(weights_only=True)` (the
default since PyTorch 2.6) reads it. It is written to a temporary name, fsynced and renamed,
so a process killed mid-write leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sivae.core.fileio import atomic_write

FORMAT = "sivae-checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")


class CheckpointError(RuntimeError):
    pass


def checkpoint_path(directory: Path, images: int) -> Path:
    return Path(directory) / f"ckpt-{images:012d}.pt"


def save(path: Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, I/O error: all mean "not usable"
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    return state


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint files, oldest first (temporary files of interrupted writes excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def latest(directory: Path, warn: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; unreadable ones are reported and passed over."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load(path)
        except CheckpointError as exc:
            warn(f"skipping {exc}")
    return None


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints; returns what was deleted."""
    old = list_checkpoints(directory)[:-keep] if keep > 0 else []
    for path in old:
        path.unlink(missing_ok=True)
    return old


def capture_rng() -> dict[str, Any]:
    """Every RNG the training touches, as tensors and plain types."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"],
         np_state["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
