"""The one error type of the data pipeline."""

from __future__ import annotations

from pathlib import Path

from sivae.core.config import ConfigError


class DataError(ConfigError):
    """Unusable input data: a source file, a shard, a manifest; `where` names it.

    A subclass of ConfigError so that every `sivae` command (a trainer given a wrong `data.path`
    included) reports it as a clear one-line error instead of a traceback.
    """

    def __init__(self, message: str, where: str | Path | None = None):
        super().__init__("", message, str(where) if where is not None else None)
