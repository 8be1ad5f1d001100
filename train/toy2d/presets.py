"""Compose a toy2d run config from the presets file: base + preset[dataset][objective] + overrides."""

from __future__ import annotations

from pathlib import Path

from sivae.core.config import ConfigError, load_config, read_yaml
from sivae.train.toy2d.study import Toy2DConfig


def preset_config(presets_file: Path, dataset: str, objective: str, overrides: list[str] = ()) -> Toy2DConfig:
    data = read_yaml(presets_file)
    unknown = set(data) - {"base", "presets"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown key; a presets file has 'base' and 'presets'", str(presets_file))
    weights = (data.get("presets") or {}).get(dataset, {}).get(objective)
    if weights is None:
        raise ConfigError(f"presets.{dataset}.{objective}", "no preset for this pair", str(presets_file))
    base = dict(data.get("base") or {})
    base.update(dataset=dataset, objective={"name": objective, **weights})
    return load_config(Toy2DConfig, None, overrides, base=base, source=str(presets_file))
