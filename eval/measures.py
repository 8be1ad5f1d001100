"""The mathematics of the metrics, as pure functions: no I/O, no models, no global state.

Feature statistics and distances (FID, KID), image-quality measures (MSE, PSNR, SSIM) and the
detection measures of OOD scores (AUROC, AUPRC, FPR at a TPR). Runners in `eval.metrics`
compose them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from scipy.stats import rankdata
from torch import Tensor

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
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Frechet distance of two Gaussians (FID).

    A nearly singular product (fewer samples than feature dimensions) gets `eps` added to both
    diagonals, the usual remedy; a small imaginary part from rounding is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real  # rounding leaves a tiny imaginary part on a PSD product
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # sqrtm rounding can give -1e-12 for identical statistics


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between two equal-sized feature sets with the kernel (x.y / D + 1)^3 (KID's)."""
    m, dim = x.shape
    if y.shape != x.shape or m < 2:
        raise ValueError(f"need two [m >= 2, D] sets of the same shape, got {x.shape} and {y.shape}")
    kxx = (x @ x.T / dim + 1.0) ** 3
    kyy = (y @ y.T / dim + 1.0) ** 3
    kxy = (x @ y.T / dim + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, *, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: the mean (and standard deviation) over `subsets` random subsets of the polynomial MMD^2.

    Subsets are drawn without replacement, of size min(subset_size, N1, N2), from a seeded RNG.
    """
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    m = min(subset_size, x.shape[0], y.shape[0])
    rng = np.random.default_rng(seed)
    values = [
        polynomial_mmd2(x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)])
        for _ in range(subsets)
    ]
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


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2
    (the Mann-Whitney U statistic over n_pos n_neg)."""
    pos, neg = _scores(positive, negative)
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks: ties share
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def auprc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision: sum over thresholds (every
    distinct score, high to low) of (recall gained) x (precision at that threshold)."""
    pos, neg = _scores(positive, negative)
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # a threshold takes a tie whole
    true_pos = np.cumsum(labels)[last_of_tie]
    predicted = last_of_tie + 1
    precision = true_pos / predicted
    recall = true_pos / pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


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
