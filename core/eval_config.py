"""How a run's snapshots are scored: the `eval` section of a run config.

It lives in core because both sides read it: the trainer validates it with the rest of the config
(a bad key is refused before training starts) and stores it in every snapshot; `sivae eval` takes its
defaults from the snapshot's copy, and its flags override them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sivae.core.config import require

# match: reals pass through the same fade as the snapshot's fakes; skip: no FID/KID mid-fade (reported)
FadedSnapshots = Literal["match", "skip"]


@dataclass
class EvalConfig:
    fid_num_samples: int = 10_000  # generated images for FID/KID (the paper's protocol: 50,000)
    reference_split: str = "train"  # FID/KID reals: this split of the run's data set
    reference_count: int | None = None  # images of it (null: the whole split, the paper's protocol)
    faded_snapshots: FadedSnapshots = "match"

    def __post_init__(self) -> None:
        require(self.fid_num_samples >= 2, "fid_num_samples", "must be >= 2 (a covariance needs two samples)")
        require(self.reference_count is None or self.reference_count >= 2, "reference_count",
                "must be >= 2 (or null: the whole split)")
