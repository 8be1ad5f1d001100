"""The run directory: config.yaml, checkpoints/, snapshots/, tb/, samples/.

Starting a run in a directory that holds one resumes it. The resolved config must match the
stored one except for keys that only say how long or how often (total length, cadences); any
other difference is refused before work starts, with the differences listed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sivae.core.config import ConfigError, diff, dump_yaml, from_dict, to_dict

# Keys a resumed run may change: they do not alter what has been trained so far (nor the algorithm: fused Adam
# is the same update as the for-loop Adam, rounded differently, with the same state).
RESUMABLE_CHANGES = (
    "train.total_kimg",
    "train.checkpoint_every_kimg",
    "train.snapshot_every_kimg",
    "train.sample_every_kimg",
    "train.log_every_kimg",
    "train.check_every_iterations",
    "train.optimizer.fused",
    "train.keep_checkpoints",
    "data.path",
)
# Backends whose checkpoints are single files (train.checkpoint): a run may move between them. DeepSpeed's
# checkpoint directories are another format, so switching to or from "deepspeed" is refused.
SINGLE_FILE_BACKENDS = ("auto", "single", "accelerate")


def _section(tree: dict, dotted: str, create: bool = False) -> tuple[Any, str]:
    """The mapping that holds key `dotted` of a config tree and the key's last part. A missing section is
    created (`create`) or read as empty; under a non-mapping there is none (None)."""
    *parents, name = dotted.split(".")
    node: Any = tree
    for part in parents:
        if not isinstance(node, dict):
            return None, name
        node = node.setdefault(part, {}) if create else node.get(part, {})
    return node, name


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def exists(self) -> bool:
        return self.config.is_file()

    def check_resume(self, cfg: Any) -> None:
        """Refuse a config that conflicts with the stored one."""
        stored = yaml.safe_load(self.config.read_text())
        # a key whose default changed since the run started keeps the value the run had (the old default)
        for dotted, old_default in getattr(type(cfg), "CHANGED_DEFAULTS", {}).items():
            node, name = _section(stored, dotted, create=True)
            if isinstance(node, dict):
                node.setdefault(name, old_default)
        with contextlib.suppress(ConfigError):  # keys added to the schema since the run started take defaults
            stored = to_dict(from_dict(type(cfg), stored))
        new = to_dict(cfg)
        for dotted, alike in getattr(type(cfg), "SAME_TRAINING", {}).items():
            (old_node, name), (new_node, _) = _section(stored, dotted), _section(new, dotted)
            if isinstance(old_node, dict) and name in old_node and old_node[name] in alike \
                    and isinstance(new_node, dict) and new_node.get(name) in alike:
                old_node[name] = new_node[name]
        backends = (stored.get("train", {}).get("backend"), new["train"]["backend"])
        if all(b in SINGLE_FILE_BACKENDS for b in backends):  # the same checkpoints: any process count
            stored["train"]["backend"] = new["train"]["backend"]
        changes = diff(stored, new)
        conflicts = [c for c in changes if not c.split(":")[0].startswith(RESUMABLE_CHANGES)]
        if conflicts:
            listing = "\n  ".join(conflicts)
            raise ConfigError(
                "",
                f"the run in {self.root} was started with a different config; refusing to resume with:\n  {listing}\n"
                f"(use a new --run-dir, or the stored {self.config})",
            )

    def prepare(self, cfg: Any) -> bool:
        """Create the layout and write the resolved config; returns whether an existing run is
        being resumed (after refusing a conflicting config)."""
        resumed = self.exists()
        if resumed:
            self.check_resume(cfg)
        for path in (self.checkpoints, self.snapshots, self.tb, self.samples):
            path.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, self.config)
        return resumed


def latest_grid(samples_dir: Path, kind: str = "samples") -> Path | None:
    paths = sorted(Path(samples_dir).glob(f"{kind}-*.png"))
    return paths[-1] if paths else None
