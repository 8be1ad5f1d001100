"""Configs: unknown keys, wrong types and impossible values are refused with file and key named."""

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from sivae.core.config import ConfigError, diff, dump_yaml, load_config, parse_overrides, require, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    steps: list[int] = field(default_factory=lambda: [1, 2])

    def __post_init__(self):
        require(self.lr > 0, "lr", "must be > 0")


@dataclass
class Outer:
    name: str = "run"
    mode: Literal["a", "b"] = "a"
    batch: int = 8
    flag: bool = False
    scale: float | None = None
    inner: Inner = field(default_factory=Inner)


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_and_values(tmp_path):
    cfg = load_config(Outer, write(tmp_path, "batch: 4\ninner:\n  lr: 2.0e-4\n"))
    assert cfg.batch == 4 and cfg.inner.lr == 2e-4 and cfg.inner.steps == [1, 2] and cfg.scale is None


def test_yaml11_exponent_strings_become_floats(tmp_path):
    # PyYAML reads "1e-8" (no dot) as a string; a float field still accepts it.
    assert load_config(Outer, write(tmp_path, "inner: {lr: 1e-8}\n")).inner.lr == 1e-8


@pytest.mark.parametrize(
    "text, key, message",
    [
        ("batchh: 3\n", "batchh", "unknown key"),
        ("inner:\n  lrr: 3\n", "inner.lrr", "unknown key"),
        ("batch: three\n", "batch", "expected an integer"),
        ("batch: 2.5\n", "batch", "expected an integer"),
        ("flag: 1\n", "flag", "expected true or false"),
        ("mode: c\n", "mode", "must be one of"),
        ("inner:\n  lr: -1\n", "inner.lr", "must be > 0"),
        ("inner:\n  steps: [1, x]\n", "inner.steps[1]", "expected an integer"),
        ("inner: 5\n", "inner", "expected a mapping"),
    ],
)
def test_bad_file_values_name_file_and_key(tmp_path, text, key, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path)
    assert info.value.key == key
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_overrides_apply_and_are_checked(tmp_path):
    path = write(tmp_path, "batch: 4\n")
    cfg = load_config(Outer, path, ["inner.lr=0.5", "mode=b", "inner.steps=[3, 4]", "scale=0.25"])
    assert cfg.inner.lr == 0.5 and cfg.mode == "b" and cfg.inner.steps == [3, 4] and cfg.scale == 0.25
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path, ["inner.momentum=0.9"])
    assert info.value.key == "inner.momentum" and info.value.source == "command line"
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_overrides(["batch"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, write(tmp_path, "- 1\n- 2\n"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Outer, write(tmp_path, "name: x\n"), ["inner.lr=0.125"])
    out = tmp_path / "run" / "config.yaml"
    dump_yaml(cfg, out)
    assert yaml.safe_load(out.read_text()) == to_dict(cfg)
    assert load_config(Outer, out) == cfg


def test_diff_lists_changed_keys():
    a = to_dict(Outer())
    b = to_dict(Outer(batch=16, inner=Inner(lr=0.1)))
    assert diff(a, b) == ["batch: 8 -> 16", "inner.lr: 0.001 -> 0.1"]
