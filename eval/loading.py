"""Any saved model -> an inference VAE (EMA weights, eval mode) and what training had reached.

Formats are a small registry: each `ModelFormat` says whether it recognises a path (`claims`) and
loads it (`load`). `load_model(path)` asks them in order, so a new on-disk format plugs in with
`register_format(...)` and no caller changes: snapshots, checkpoint files, and the checkpoint
directories of the DeepSpeed backend (RUN/checkpoints/ckpt-N/). Every
failure -- unreadable, truncated, wrong contents, unsupported -- is one `LoadError`, which callers
report and skip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sivae.core import checkpoint, snapshot
from sivae.core import deepspeed_checkpoint as ds_checkpoint
from sivae.core.checkpoint import CheckpointError
from sivae.core.config import ConfigError, from_dict
from sivae.core.eval_config import EvalConfig
from sivae.core.schedule import LEGACY_FADE_RAMP, FadeRamp, LevelConfig, position
from sivae.data_pipeline.config import DataConfig
from sivae.models import Model, build_model
from sivae.models.config import ModelConfig


class LoadError(RuntimeError):
    """A path that does not give a usable model: report it and go on."""


@dataclass(frozen=True)
class StoredConfig:
    """What eval reads of the resolved run config a model was saved with (`raw`: all of it, as stored).
    Eval depends on the model, data and schedule sections only, never on the trainer's own schema."""

    raw: dict[str, Any]
    model: ModelConfig
    data: DataConfig
    schedule: list[LevelConfig]
    fade_ramp: FadeRamp  # how the schedule's fade-ins ramp (the blend of a checkpoint taken mid-fade)
    reconstruction: str  # the objective's observation model: "mse" (Gaussian) or "bce"
    beta_rec: float  # the objective's weight of the reconstruction term
    eval: EvalConfig  # how the run asks to be scored (flags of `sivae eval` override it)


@dataclass
class LoadedModel:
    model: Model  # EMA weights of every network, eval mode, no gradients, on the requested device
    config: StoredConfig
    images: int  # training images seen when it was saved
    lod: int | None  # the level it was at: it makes images of `resolution` px (None: data without levels)
    blend: float
    resolution: int | None
    path: Path
    format: str  # the registry name that loaded it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kimg(self) -> float:
        return self.images / 1000.0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class Probe:
    """What formats look at to recognise a path; a file is read at most once, however many formats ask."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @functools.cached_property
    def state(self) -> dict[str, Any] | None:
        """The file's contents (torch.load, weights only) or None when it is not a readable torch file."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # truncated zip, bad pickle, I/O error: all mean "not this"
            return None
        return state if isinstance(state, dict) else None

    @property
    def format_tag(self) -> str | None:
        return self.state.get("format") if self.state is not None else None


@dataclass(frozen=True)
class ModelFormat:
    name: str
    claims: Callable[[Probe], bool]
    load: Callable[[Probe, torch.device], LoadedModel]


FORMATS: list[ModelFormat] = []


def register_format(fmt: ModelFormat, *, first: bool = False) -> None:
    """Add (or replace, by name) a format; `first` puts it ahead of the others."""
    FORMATS[:] = [f for f in FORMATS if f.name != fmt.name]
    FORMATS.insert(0, fmt) if first else FORMATS.append(fmt)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The model saved at `path` in any registered format; LoadError when none can give one."""
    probe = Probe(Path(path))
    if not probe.path.exists():
        raise LoadError(f"{probe.path}: no such file or directory")
    for fmt in FORMATS:
        if fmt.claims(probe):
            return fmt.load(probe, torch.device(device))
    if probe.path.is_file() and probe.state is None:
        raise LoadError(f"{probe.path}: unreadable (truncated, corrupt or not a PyTorch file)")
    raise LoadError(f"{probe.path}: unsupported format (known: {', '.join(f.name for f in FORMATS)})")


# ------------------------------------------------------------------------------------------------
# Building the model from a state


def run_config(data: Any, where: Path) -> StoredConfig:
    try:
        if not isinstance(data, dict):
            raise ConfigError("", "not a mapping")
        return StoredConfig(
            raw=data,
            model=from_dict(ModelConfig, data.get("model", {}), "model"),
            data=from_dict(DataConfig, data.get("data", {}), "data"),
            schedule=from_dict(list[LevelConfig], data.get("train", {}).get("schedule"), "train.schedule"),
            fade_ramp=from_dict(FadeRamp, data.get("train", {}).get("fade_ramp", LEGACY_FADE_RAMP), "train.fade_ramp"),
            reconstruction=str(data.get("objective", {}).get("reconstruction", "mse")),
            beta_rec=float(data.get("objective", {}).get("beta_rec", 1.0)),
            eval=from_dict(EvalConfig, data.get("eval", {}), "eval"),  # older snapshots: the defaults
        )
    except (ConfigError, AttributeError) as exc:
        raise LoadError(f"{where}: its stored config is not valid ({exc})") from None


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as the bare module names them: DDP's 'module.' and torch.compile's '_orig_mod.' removed."""
    out = {}
    for key, value in state.items():
        parts = [p for p in key.split(".") if p not in ("module", "_orig_mod")]
        out[".".join(parts)] = value
    return out


def inference_model(cfg: StoredConfig, networks: dict[str, dict[str, torch.Tensor]], device: torch.device,
                    where: Path) -> Model:
    """The stored config's model with the weights of each of its networks (`networks`: name -> state dict)."""
    try:
        model = build_model(cfg.model)
    except ValueError as exc:  # an architecture no registry here knows
        raise LoadError(f"{where}: {exc}") from None
    extra = sorted(set(networks) - set(model.networks))
    if extra:
        raise LoadError(f"{where}: holds networks {extra} that the stored config's model does not have")
    try:
        for name in model.networks:
            model.network(name).load_state_dict(_strip_wrappers(networks[name]))
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise LoadError(f"{where}: weights do not fit the stored config's model ({exc})") from None
    return model.to(device).eval().requires_grad_(False)


def _split_model_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A whole model's state dict as one state dict per network (its keys' first component)."""
    networks: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in _strip_wrappers(state).items():
        name, _, rest = key.partition(".")
        networks.setdefault(name, {})[rest] = value
    return networks


def _snapshot_networks(state: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The networks of a snapshot: its `networks` mapping or, written before it, the VAE's `encoder` and `decoder`."""
    if "networks" in state:
        return state["networks"]
    return {"encoder": state["encoder"], "decoder": state["decoder"]}


def _level(value: Any) -> int | None:
    """A stored level or resolution: None for data without levels (point clouds, 2D points)."""
    return None if value is None else int(value)


def _load_snapshot(probe: Probe, device: torch.device) -> LoadedModel:
    state, path = probe.state, probe.path
    try:
        cfg = run_config(state["config"], path)
        model = inference_model(cfg, _snapshot_networks(state), device, path)
        return LoadedModel(model, cfg, int(state["images"]), _level(state["lod"]), float(state["blend"]),
                           _level(state["resolution"]), path, "snapshot")
    except KeyError as exc:
        raise LoadError(f"{path}: snapshot lacks {exc}") from None


def _load_checkpoint(probe: Probe, device: torch.device) -> LoadedModel:
    return _from_trainer_state(probe.state, probe.path, "checkpoint", device)


def _from_trainer_state(state: dict[str, Any], path: Path, fmt: str, device: torch.device) -> LoadedModel:
    """The EMA networks of a checkpoint's trainer state, at the level its schedule and image count give."""
    try:
        cfg = run_config(state["config"], path)
        model = inference_model(cfg, _split_model_state(state["ema"]), device, path)
        images = int(state["progress"]["images"])
    except (KeyError, TypeError) as exc:
        raise LoadError(f"{path}: checkpoint lacks {exc}") from None
    # a checkpoint does not store the level: it follows from the schedule and the images seen
    pos = position(cfg.schedule, images / 1000.0, cfg.fade_ramp)
    return LoadedModel(model, cfg, images, pos.lod, pos.blend, pos.resolution, path, fmt)


def _is_deepspeed_directory(probe: Probe) -> bool:
    """DeepSpeed's save_checkpoint writes DIR/latest (the tag) and DIR/TAG/mp_rank_*_model_states.pt."""
    path = probe.path
    return path.is_dir() and ((path / "latest").is_file() or any(path.glob("*/mp_rank_*_model_states.pt"))
                              or any(path.glob("mp_rank_*_model_states.pt")))


def _load_deepspeed(probe: Probe, device: torch.device) -> LoadedModel:
    """A checkpoint directory of the DeepSpeed backend (train.deepspeed_checkpoint): the EMA weights and
    position from the trainer state saved with it; DeepSpeed itself is not needed."""
    path = probe.path
    if not (ds_checkpoint.is_complete(path) or ds_checkpoint.is_checkpoint_dir(path)):
        raise LoadError(f"{path}: a DeepSpeed checkpoint directory, but not one of `sivae train` "
                        "(neither a completion marker nor the name ckpt-<images>)")  # fmt: skip
    try:
        state = ds_checkpoint.read_trainer_state(path)
    except CheckpointError as exc:
        raise LoadError(str(exc)) from None
    return _from_trainer_state(state, path, "deepspeed", device)


register_format(ModelFormat("snapshot", lambda p: p.format_tag == snapshot.FORMAT, _load_snapshot))
register_format(ModelFormat("checkpoint", lambda p: p.format_tag == checkpoint.FORMAT, _load_checkpoint))
register_format(ModelFormat("deepspeed", _is_deepspeed_directory, _load_deepspeed))
