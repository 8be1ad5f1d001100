"""The mathematics of the metrics, as pure functions: no I/O, no models, no global state.

Feature statistics and distances (FID, KID: clean-fid's arithmetic), image-quality measures (MSE,
PSNR, SSIM: our own, as none of the dependencies has them for torch tensors) and the detection
measures of OOD scores (AUROC, AUPRC: scikit-learn's; FPR at a TPR: our own, a threshold rule
scikit-learn leaves to the caller). Runners in `eval.metrics` compose them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor

from sivae.eval.compat import import_cleanfid_fid

# ------------------------------------------------------------------------------------------------
# Feature distances


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N - 1) covariance of [N, D] features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows of shape [N, D], got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Frechet distance of two Gaussians (FID), by
    clean-fid's `frechet_distance` (its eps on the diagonals when the product is nearly singular)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    with warnings.catch_warnings():  # clean-fid passes scipy's deprecated `disp` to sqrtm
        warnings.simplefilter("ignore", DeprecationWarning)
        value = float(import_cleanfid_fid().frechet_distance(mu1, sigma1, mu2, sigma2, eps=eps))
    return max(value, 0.0)  # sqrtm rounding can give -1e-12 for identical statistics


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, *, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: the mean (and standard deviation) over `subsets` random subsets of the unbiased polynomial
    MMD^2, by clean-fid's `kernel_distance`.

    clean-fid draws its subsets from numpy's global RNG and returns only the mean: here that RNG is seeded
    (and restored after), and each subset is one call, which draws exactly what one call over all subsets
    would, so the mean is clean-fid's own and the spread comes with it.
    """
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f"need two [N >= 2, D] feature sets of the same D, got {x.shape} and {y.shape}")
    kernel_distance = import_cleanfid_fid().kernel_distance
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        values = [kernel_distance(x, y, num_subsets=1, max_subset_size=subset_size) for _ in range(subsets)]
    finally:
        np.random.set_state(state)
    return float(np.mean(values)), float(np.std(values))


# ------------------------------------------------------------------------------------------------
# Image quality (images in [0, data_range], shape [B, C, H, W])


def mean_squared_error(x: Tensor, y: Tensor) -> Tensor:
    """Per image: the mean over pixels and channels of (x - y)^2 -> [B]."""
    return (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, max_db: float = 100.0) -> Tensor:
    """Per image: 10 log10(range^2 / MSE) in dB -> [B]; identical images get `max_db` (not infinity)."""
    mse = mean_squared_error(x, y)
    floor = data_range**2 * 10 ** (-max_db / 10)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(floor))


def ssim_window(size: int) -> tuple[int, float]:
    """Gaussian window (side, sigma) for an image side: 11 and 1.5 (Wang et al. 2004), shrunk to the
    largest odd side that fits smaller images (8px: 7, 4px: 3) with sigma scaled alike."""
    side = min(11, size if size % 2 else size - 1)
    if side < 1:
        raise ValueError(f"image side {size} is too small for SSIM")
    return side, 1.5 * side / 11


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Per image: the mean SSIM over channels and window positions -> [B].

    Gaussian-weighted local statistics (population variances), K1 = 0.01, K2 = 0.03, only windows
    that lie wholly inside the image; the common definition of Wang et al.
    """
    x, y = x.double(), y.double()
    channels = x.shape[1]
    side, sigma = ssim_window(min(x.shape[-2:]))
    offsets = torch.arange(side, dtype=torch.float64, device=x.device) - (side - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(channels, 1, side, side)

    def local_mean(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


# ------------------------------------------------------------------------------------------------
# Detection (OOD): in-distribution samples are the positives, a higher score means more in-distribution


def _scores(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("need at least one positive and one negative score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite")
    return pos, neg


def _labelled(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = _scores(positive, negative)
    return np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2
    (scikit-learn's `roc_auc_score`)."""
    return float(roc_auc_score(*_labelled(positive, negative)))


def auprc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision: sum over thresholds (every distinct
    score, high to low) of (recall gained) x (precision at that threshold) (`average_precision_score`)."""
    return float(average_precision_score(*_labelled(positive, negative)))


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate reaches `tpr`.

    Samples with score >= threshold are called positive; the threshold is the k-th highest positive
    score with k the least count such that k / n_pos >= tpr.
    """
    pos, neg = _scores(positive, negative)
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    k = math.ceil(round(tpr * pos.size, 9))  # round: 0.95 * 20 must be 19, not 19.000000000000004
    threshold = np.sort(pos)[::-1][k - 1]
    return float(np.mean(neg >= threshold))
