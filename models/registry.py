"""The architectures a run config may name: `model.arch` -> the function that builds its model.

models.build registers the built-in ones; a new family (in this package, or a test's) calls
`register_architecture` and is then built, trained, checkpointed and loaded like them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sivae.models.base import Model

# the argument is the models.config.ModelConfig, which validates `arch` against this registry
Builder = Callable[[Any], Model]
ARCHITECTURES: dict[str, Builder] = {}


def register_architecture(name: str, build: Builder) -> None:
    """Make `model.arch: name` build its model with `build(model_config)` (a later call replaces it)."""
    ARCHITECTURES[name] = build
