"""YAML configs validated into typed dataclasses.

A config is a tree of dataclasses. `load_config` reads a YAML file, applies `key.sub=value`
overrides from the command line and builds the tree, refusing -- before any work starts -- an
unknown key, a value of the wrong type or an impossible value, with the file and the dotted key
named. Dataclasses state their own constraints in `__post_init__` through `require`, naming the
field; the loader prefixes the path of the enclosing sections.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot be used; `key` is the dotted path, `source` the file."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key, self.message, self.source = key, message, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")

    def under(self, prefix: str) -> ConfigError:
        key = f"{prefix}.{self.key}" if self.key else prefix
        return ConfigError(key, self.message, self.source)

    def in_file(self, source: str) -> ConfigError:
        return ConfigError(self.key, self.message, source)


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError for `key` unless `condition` holds (for use in __post_init__)."""
    if not condition:
        raise ConfigError(key, message)


def from_dict(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass `cls` from plain data, checking every key and type."""
    return _convert(cls, data, key)


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config tree (what `from_dict` reads back)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a.b=3", "c=[1, 2]"]` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key.sub=value", "command line")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if not all(parts):
            raise ConfigError(dotted, "empty key segment", "command line")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(dotted, "conflicts with another override", "command line")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: `update` wins; nested dicts merge, everything else is replaced."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", "config file not found", str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("", f"not valid YAML: {exc}", str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", "the top level must be a mapping of keys", str(path))
    return data


def load_config(
    cls: type[T],
    path: str | Path | None,
    overrides: list[str] = (),
    base: dict | None = None,
    source: str | None = None,
) -> T:
    """Read `path` (optional) over `base`, apply overrides, validate into `cls`.

    Errors in the file (or `base`, attributed to `source`) are reported against it before the
    overrides are looked at; errors the overrides introduce are attributed to the command line.
    """
    source = source or (str(path) if path is not None else "<defaults>")
    data = merge(base or {}, read_yaml(path) if path is not None else {})
    try:
        from_dict(cls, data)
    except ConfigError as exc:
        raise exc.in_file(source) from None
    try:
        return from_dict(cls, merge(data, parse_overrides(list(overrides))))
    except ConfigError as exc:
        raise exc.in_file("command line") from None


def dump_yaml(obj: Any, path: str | Path) -> None:
    """Write the resolved config tree as YAML (atomic)."""
    from sivae.core.fileio import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(obj), sort_keys=False))


def diff(a: Any, b: Any, key: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data trees, as 'key: a -> b' lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{key}.{k}" if key else str(k))
        return out
    return [] if a == b else [f"{key}: {a!r} -> {b!r}"]


# --------------------------------------------------------------------------------------------
# Type-directed conversion


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, key)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(key, f"must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(key, f"expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, key): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "1e-8" as a string; accept numeric strings of that form.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"config field {key!r} has an unsupported type {tp!r}")


def _convert_dataclass(cls: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping of {cls.__name__} keys, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in value if k not in fields]
    if unknown:
        k = unknown[0]
        near = [n for n in fields if n.startswith(str(k)[:3])]
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(_join(key, k), f"unknown key{hint}; known keys: {', '.join(fields)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(key, name), "required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise exc.under(key) if key else exc from None


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


