"""What every data source is: a list of items (key, split, label) and a way to load one.

The kinds of source live beside it: images in sivae.data_pipeline.sources, point clouds in
sivae.data_pipeline.points.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sivae.data_pipeline.errors import DataError

_MAX_KEY = 90  # tar (ustar) names hold 100 characters; the key leaves room for ".png"


@dataclass(frozen=True)
class SourceItem:
    key: str  # unique, tar-safe: [A-Za-z0-9_/-]
    ref: Any  # what the source's `load` turns into an image (picklable)
    split: str | None = None  # the source's own split; None: assigned by --test-fraction
    label: int | None = None
    meta: dict[str, Any] | None = None  # stored as the sample's KEY.json member (for evaluation, never trained on)


class Source(ABC):
    spec: str  # the command-line form, recorded in the manifest
    modality: ClassVar[str] = "images"  # the kind of sample it gives: "images" (load) or "points"
    native_size: int | None = None  # side of every image when fixed (None: it varies per image)

    @abstractmethod
    def items(self) -> list[SourceItem]:
        """Every sample, in a fixed order."""

    @abstractmethod
    def load(self, ref: Any) -> np.ndarray:
        """One sample's image as HWC uint8 RGB (maybe not square); ImageProblem or OSError if unreadable."""

    def size(self, ref: Any) -> tuple[int, int]:
        """(width, height) of a sample, found cheaply (files: the header only); ImageProblem if unreadable."""
        return self.native_size, self.native_size

    def where(self, item: SourceItem) -> str:
        """Where a sample comes from, for error messages."""
        return f"{self.spec} sample {item.key}"


def tar_key(name: str) -> str:
    """A WebDataset key for a file name: no dots (they start the extension), tar-safe, at most 90 characters."""
    key = re.sub(r"[^A-Za-z0-9_/-]", "_", name).strip("/")
    if len(key) > _MAX_KEY:
        key = f"{key[: _MAX_KEY - 17]}_{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return key


def unique_items(items: list[SourceItem], spec: str, what: str = "images") -> list[SourceItem]:
    """The items, or a DataError when two share a key or there are none."""
    seen: dict[str, SourceItem] = {}
    for item in items:
        if item.key in seen:
            raise DataError(f"{seen[item.key].ref} and {item.ref} both map to the sample key {item.key!r}", spec)
        seen[item.key] = item
    if not items:
        raise DataError(f"no {what} found", spec)
    return items
