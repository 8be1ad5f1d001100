"""Reference features of a data set, cached in the project's own cache directory.

A cache entry is keyed by what determines it: the manifest's digest (a sha256 over every shard's
checksum, so any change to the data gives a new key), the split, the resolution, the fade a snapshot
taken mid-fade applies to the reals, the number of images and the feature extractor's id (which holds
its weights' digest). It holds the features themselves (KID needs them) and their mean and
covariance (FID). Entries are written atomically; an unreadable entry is recomputed. Nothing is ever
written inside the installed clean-fid package.

Cache directory: `--cache DIR`, else `$SIVAE_CACHE/fid`, else `~/.cache/sivae/fid`.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sivae.core.fileio import atomic_write_bytes


def cache_dir(override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    if os.environ.get("SIVAE_CACHE"):
        return Path(os.environ["SIVAE_CACHE"]) / "fid"
    return Path.home() / ".cache" / "sivae" / "fid"


@dataclass(frozen=True)
class ReferenceKey:
    digest: str  # the data set manifest's
    split: str
    resolution: int
    count: int  # images the statistics are over
    extractor: str  # the feature extractor's id
    blend: float = 1.0  # below 1: the reals faded as a snapshot taken mid-fade sees them

    def filename(self) -> str:
        faded = "" if self.blend >= 1.0 else f"-blend{self.blend:.6f}"
        return f"{self.digest[:16]}-{self.split}-{self.resolution}px{faded}-n{self.count}-{self.extractor}.npz"


@dataclass
class ReferenceFeatures:
    features: np.ndarray  # [N, D] float32
    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64
    path: Path  # the cache file
    reused: bool  # read from the cache rather than computed now


def read_entry(path: Path, key: ReferenceKey) -> ReferenceFeatures | None:
    """The cached entry, or None when it is missing, unreadable or holds another key (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key = json.loads(str(data["key"]))
            entry = ReferenceFeatures(data["features"], data["mu"], data["sigma"], path, reused=True)
    except Exception as exc:
        print(f"[sivae eval] ignoring unreadable cache entry {path} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    return entry if stored_key == key.__dict__ else None


def write_entry(path: Path, key: ReferenceKey, features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, key=json.dumps(key.__dict__), features=features.astype(np.float32), mu=mu, sigma=sigma)
    atomic_write_bytes(path, buffer.getvalue())
