"""DeepSpeed checkpoint directories of a run, readable without DeepSpeed (eval and conversion use them).

Layout, one directory per checkpoint beside (never mixed with) the single-file checkpoints:

    RUN/checkpoints/ckpt-<images, 12 digits>/
        <network>/ ...             one per network of the model (encoder/ decoder/ for the VAE): each
                                   engine's save_checkpoint (tag = the network), written by every rank:
                                   mp_rank_00_model_states.pt (module weights, client state) and, under
                                   ZeRO 1/2, one zero_pp_rank_<r>_mp_rank_00_optim_states.pt per rank
        complete                   JSON {images, world_size, zero_stage, networks}, written atomically
                                   by rank 0 after every rank finished: without it the directory is an
                                   interrupted write and nothing reads it

The trainer's state (progress, EMA weights, every rank's RNG state, the resolved config) is the
client state of the first network's engine under the key `CLIENT_KEY` of its model-states file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from sivae.core.checkpoint import CheckpointError
from sivae.core.fileio import atomic_write_text

CLIENT_KEY = "sivae"
COMPLETE = "complete"
MODEL_STATES = "mp_rank_00_model_states.pt"
VAE_NETWORKS = ("encoder", "decoder")  # the networks of markers written before they were recorded
_NAME = re.compile(r"^ckpt-(\d{12})$")


def checkpoint_dir(directory: Path, images: int) -> Path:
    return Path(directory) / f"ckpt-{images:012d}"


def is_checkpoint_dir(path: Path) -> bool:
    """Whether `path` is a directory named as this module names checkpoints (complete or not)."""
    return Path(path).is_dir() and bool(_NAME.match(Path(path).name))


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def mark_complete(path: Path, images: int, world_size: int, zero_stage: int, networks: tuple[str, ...]) -> None:
    record = {"images": images, "world_size": world_size, "zero_stage": zero_stage, "networks": list(networks)}
    atomic_write_text(Path(path) / COMPLETE, json.dumps(record) + "\n")


def read_marker(path: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / COMPLETE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable completion marker ({exc})") from None


def networks_of(marker: dict[str, Any]) -> tuple[str, ...]:
    """The networks (engine subdirectories) of a checkpoint, from its completion marker."""
    return tuple(marker.get("networks", VAE_NETWORKS))


def list_checkpoint_dirs(directory: Path) -> list[Path]:
    """Checkpoint directories, complete or not, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and _NAME.match(p.name))


def latest_complete(directory: Path) -> Path | None:
    complete = [p for p in list_checkpoint_dirs(directory) if is_complete(p)]
    return complete[-1] if complete else None


def prune(directory: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints; delete older ones and interrupted writes older than
    the newest complete one (a later one may be in progress). Returns what was deleted."""
    dirs = list_checkpoint_dirs(directory)
    complete = [p for p in dirs if is_complete(p)]
    if not complete:
        return []
    kept = set(complete[-keep:])
    doomed = [p for p in dirs if p not in kept and p.name < complete[-1].name]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state saved with a complete checkpoint directory (EMA, progress, config, ...)."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path}: not a complete checkpoint (no '{COMPLETE}' marker: an interrupted write?)")
    states = path / networks_of(read_marker(path))[0] / MODEL_STATES
    try:
        saved = torch.load(states, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing, truncated or foreign: all mean "not usable"
        raise CheckpointError(f"{states}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get(CLIENT_KEY), dict):
        raise CheckpointError(f"{states}: holds no sivae trainer state (key '{CLIENT_KEY}')")
    return saved[CLIENT_KEY]
