"""Whole samples of a built split, metadata included: what evaluation against ground truth reads.

The training stream and the eval pass read images alone; a source that records metadata (a KEY.json
member, such as emoji-poses' identity and pose) is read back here, one split at one level, in shard
order. Samples whose image does not decode are skipped and counted.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.images import ImageProblem, decode
from sivae.data_pipeline.manifest import load_manifest


@dataclass
class SplitSamples:
    keys: list[str]
    images: np.ndarray  # [N, R, R, 3] uint8
    meta: list[dict[str, Any]]  # per sample ({} for a sample without a KEY.json member)
    skipped: int  # samples whose image or metadata did not decode


def read_split(data_dir: str | Path, split: str, resolution: int) -> SplitSamples:
    """Every sample of `split` at `resolution` with its metadata."""
    manifest = load_manifest(data_dir)
    encoding = manifest.encoding(resolution)
    members: dict[str, dict[str, bytes]] = {}
    for shard in manifest.shards(split, resolution):
        try:
            with tarfile.open(shard.path) as tar:
                for info in tar:
                    key, _, ext = info.name.partition(".")
                    members.setdefault(key, {})[ext] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"cannot read shard: {exc}", shard.path) from None
    keys, images, meta, skipped = [], [], [], 0
    for key, parts in members.items():
        try:
            image = decode(parts[encoding], encoding, resolution)
            info = json.loads(parts["json"]) if "json" in parts else {}
        except (KeyError, ImageProblem, ValueError):
            skipped += 1
            continue
        keys.append(key)
        images.append(image)
        meta.append(info)
    stacked = np.stack(images) if images else np.zeros((0, resolution, resolution, 3), np.uint8)
    return SplitSamples(keys, stacked, meta, skipped)
