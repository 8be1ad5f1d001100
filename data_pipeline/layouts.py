"""How one kind of sample travels from a shard member into a batch: decoded, then laid out.

Images decode to HWC uint8 and sit in a batch as CHW (flipped when the order says so); point clouds
decode to float32 [N, 3] and sit in a batch as they are (a flip does not apply to them). The loaders
(sivae.data_pipeline.loader, shards) take the layout of the data set's `kind` from its manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sivae.data_pipeline.images import decode
from sivae.data_pipeline.points import decode_points


@dataclass(frozen=True)
class SampleLayout:
    decode: Callable[[bytes, str, int], np.ndarray]  # (member bytes, encoding, level) -> the sample
    shape: Callable[[int], tuple[int, ...]]  # one sample's shape in a batch at a level
    dtype: type  # numpy dtype of batches
    arrange: Callable[[np.ndarray, int], np.ndarray]  # (decoded sample, flip bit) -> as the batch holds it


def _image_in_batch(image: np.ndarray, flip: int) -> np.ndarray:
    return (image[:, ::-1] if flip else image).transpose(2, 0, 1)  # HWC -> CHW, flipped in the same copy


IMAGES = SampleLayout(decode, lambda r: (3, r, r), np.uint8, _image_in_batch)
POINTS = SampleLayout(decode_points, lambda n: (n, 3), np.float32, lambda points, _flip: points)
LAYOUTS = {"images": IMAGES, "points": POINTS}
