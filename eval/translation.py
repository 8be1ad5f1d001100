"""Translation models (models.translation) scored on held-out identities with ground truth, and their swap grids.

On a data set whose samples say their identity and pose (emoji-poses: every identity under every
pose), the translation of a pair (a, b) -- the class of a in the content of b -- has a ground truth:
the sample of a's identity in b's pose. `translation_scores` measures, on the test split (identities
never trained on):

- swap: PSNR, SSIM and the feature extractor's distance (the FID features, L2 per pair) of the swap
  against that ground truth, over seeded pairs of different identity and different pose; the same
  numbers for the trivial baseline that outputs a unchanged ("no transfer");
- leakage: cross-validated accuracy of a linear probe (scikit-learn's logistic regression) predicting
  the pose from the class code and the identity from the content code (the ideal is chance, reported
  beside each), and the two informative probes (identity from the class code, pose from the content code);
- reconstruction: PSNR and SSIM of the test images against their reconstructions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from sivae.core.images import grid, to_uint8
from sivae.data_pipeline.loader import to_unit_range
from sivae.data_pipeline.samples import SplitSamples
from sivae.eval.measures import psnr, ssim
from sivae.models.translation import TranslationModel

Features = Callable[[Tensor], np.ndarray]  # uint8 [B, 3, R, R] -> [B, D]


def probe_accuracy(codes: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """(mean held-out accuracy of a linear classifier predicting `labels` from `codes` over stratified folds,
    chance: the share of the most frequent label)."""
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    folds = min(folds, int(counts.min()))
    if folds < 2:
        raise ValueError("a probe needs at least two samples of every label")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(probe, codes, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return float(scores.mean()), float(counts.max() / len(labels))


def ground_truth_pairs(meta: list[dict[str, Any]], count: int, seed: int) -> np.ndarray:
    """[count, 3] rows (a, b, target): samples a and b of different identity and pose, and the sample of a's
    identity in b's pose; drawn with a seeded generator (all such pairs when fewer exist)."""
    where = {(m["identity"], m["pose"]): i for i, m in enumerate(meta)}
    candidates = [(a, b, where[ma["identity"], mb["pose"]]) for a, ma in enumerate(meta) for b, mb in enumerate(meta)
                  if ma["identity"] != mb["identity"] and ma["pose"] != mb["pose"]
                  and (ma["identity"], mb["pose"]) in where]  # fmt: skip
    if not candidates:
        raise ValueError("no pair of samples with a ground-truth swap (every identity needs every pose)")
    rows = np.asarray(candidates, dtype=np.int64)
    if count < len(rows):
        rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), size=count, replace=False))]
    return rows


def as_input(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 [N, R, R, 3] -> the model's input [N, 3, R, R] in [-1, 1]."""
    return to_unit_range(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)).to(device)  # a writable copy


@torch.no_grad()
def _batched(fn: Callable[..., Tensor], *inputs: Tensor, batch: int = 64) -> Tensor:
    return torch.cat([fn(*(x[i : i + batch] for x in inputs)).cpu() for i in range(0, len(inputs[0]), batch)])


def _quality(output: Tensor, target: Tensor) -> dict[str, float]:
    """uint8 images -> mean PSNR (dB) and SSIM in [0, 1] units."""
    x, y = output.double() / 255.0, target.double() / 255.0
    return {"psnr": float(psnr(x, y).mean()), "ssim": float(ssim(x, y).mean())}


def _feature_distance(features: Features, output: Tensor, target_features: np.ndarray) -> float:
    return float(np.linalg.norm(features(output) - target_features, axis=1).mean())


@torch.no_grad()
def translation_scores(model: TranslationModel, samples: SplitSamples, features: Features, *, pairs: int = 256,
                       seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The scores of the module docstring on `samples` (a split read with its metadata), as plain numbers."""
    if not samples.meta or any("identity" not in m or "pose" not in m for m in samples.meta):
        raise ValueError("translation scores need samples whose metadata holds identity and pose (emoji-poses)")
    device = next(model.parameters()).device
    x = as_input(samples.images, device)
    real = to_uint8(x.cpu())
    rows = ground_truth_pairs(samples.meta, pairs, seed)
    a, b, target = (torch.from_numpy(rows[:, k]) for k in range(3))
    swapped = to_uint8(_batched(model.translate, x[a], x[b]))
    mu = _batched(lambda t: model.encode(t)[0], x)
    reconstructed = to_uint8(_batched(model.decode, mu.to(device)))
    class_code, content_code = (part.numpy() for part in model.split(mu))
    identity = np.asarray([m["identity"] for m in samples.meta])
    pose = np.asarray([m["pose"] for m in samples.meta])

    out: dict[str, Any] = {"images": len(samples.keys), "identities": len(set(identity)), "poses": len(set(pose)),
                           "pairs": len(rows)}  # fmt: skip
    target_features = features(real[target])
    out["swap"] = {**_quality(swapped, real[target]),
                   "feature_distance": _feature_distance(features, swapped, target_features)}
    out["unchanged_baseline"] = {**_quality(real[a], real[target]),
                                 "feature_distance": _feature_distance(features, real[a], target_features)}
    out["reconstruction"] = _quality(reconstructed, real)
    for name, codes, labels in (("pose_from_class_code", class_code, pose),
                                ("identity_from_content_code", content_code, identity),
                                ("identity_from_class_code", class_code, identity),
                                ("pose_from_content_code", content_code, pose)):  # fmt: skip
        accuracy, chance = probe_accuracy(codes, labels, seed=seed)
        out[name] = {"accuracy": accuracy, "chance": chance}
    return out


def grid_sources(meta: list[dict[str, Any]], rows: int = 8) -> tuple[list[int], list[int]]:
    """Samples for a swap grid of a split with metadata: (class sources: `rows` other identities in one pose,
    content sources: every pose of the first sample's identity)."""
    first = meta[0]
    columns = [i for i, m in enumerate(meta) if m["identity"] == first["identity"]]
    sources = [i for i, m in enumerate(meta) if m["identity"] != first["identity"] and m["pose"] == first["pose"]]
    return sources[:rows], columns


@torch.no_grad()
def swap_grid(model: TranslationModel, class_sources: Tensor, content_sources: Tensor) -> np.ndarray:
    """The paper's figure: a blank corner, the content sources along the top, the class sources down the left,
    and in row i, column j the class of class source i in the content of content source j (inputs in [-1, 1])."""
    rows, columns = len(class_sources), len(content_sources)
    cells = [torch.ones_like(content_sources[:1]), content_sources.cpu()]
    for i in range(rows):
        repeated = class_sources[i : i + 1].expand(columns, -1, -1, -1)
        cells += [class_sources[i : i + 1].cpu(), model.translate(repeated, content_sources).cpu()]
    return grid(torch.cat(cells), columns=columns + 1)
