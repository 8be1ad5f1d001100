"""The pure metric functions against hand-computed cases and second implementations (clean-fid, scikit-learn,
scipy's Gaussian filter)."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from sivae.eval.compat import import_cleanfid_fid
from sivae.eval.measures import (
    auprc,
    auroc,
    feature_statistics,
    fpr_at_tpr,
    frechet_distance,
    kernel_inception_distance,
    mean_squared_error,
    psnr,
    ssim,
)

# ---- FID and KID ----------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    # ||(1, 2)||^2 = 5; Tr(S1 + S2 - 2 sqrt(S1 S2)) = (1 + 4 + 4 + 9) - 2 (sqrt(4) + sqrt(36)) = 2
    value = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0]))
    assert value == pytest.approx(7.0, abs=1e-9)


def test_frechet_distance_matches_clean_fid_and_is_zero_for_identical_statistics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 12)), rng.normal(0.3, 1.5, size=(250, 12)) @ rng.normal(size=(12, 12))
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    reference = import_cleanfid_fid().frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    features = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]])
    mu, sigma = feature_statistics(features)
    np.testing.assert_allclose(mu, [3.0, 4.0])
    # deviations (-2, -2), (0, 2), (2, 0): var x = 8/2, var y = 8/2, cov = 4/2
    np.testing.assert_allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """A second implementation of KID's statistic: unbiased MMD^2 with the kernel (x.y / D + 1)^3."""
    m, dim = x.shape
    kxx, kyy, kxy = ((x @ x.T / dim + 1) ** 3, (y @ y.T / dim + 1) ** 3, (x @ y.T / dim + 1) ** 3)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2)


def test_kid_over_one_full_subset_is_the_polynomial_mmd2():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 8)), rng.normal(0.5, 1.0, size=(40, 8))
    mean, std = kernel_inception_distance(a, b, subsets=3, subset_size=40)
    assert mean == pytest.approx(polynomial_mmd2(b, a), rel=1e-9) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_equals_clean_fids_kernel_distance_over_the_same_subsets_and_leaves_numpys_rng_alone():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 32)), rng.normal(0.2, 1.1, size=(260, 32))
    np.random.seed(11)
    reference = import_cleanfid_fid().kernel_distance(a, b, num_subsets=50, max_subset_size=100)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    mean, std = kernel_inception_distance(a, b, subsets=50, subset_size=100, seed=11)
    assert mean == pytest.approx(reference, rel=1e-6) and std > 0
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the caller's global RNG is restored
    assert kernel_inception_distance(a, b, subsets=50, subset_size=100, seed=12)[0] != mean


def test_kid_by_hand_in_one_dimension():
    # D = 1: k(x, y) = (xy + 1)^3. x = (0, 1), y = (0, 0): k_xx off-diagonal 1 + 1, k_yy 1 + 1, k_xy all 1
    # MMD^2 = (2 + 2) / 2 - 2 * 4 / 4 = 0
    zeros = np.zeros((2, 1))
    assert kernel_inception_distance(np.array([[0.0], [1.0]]), zeros, subsets=1)[0] == pytest.approx(0.0)
    # x = (1, 1), y = (0, 0): k_xx = 8 (off-diagonal pair 2 x 8), k_yy 2 x 1, k_xy 4 x 1 -> (16 + 2) / 2 - 2 = 7
    assert kernel_inception_distance(np.ones((2, 1)), zeros, subsets=1)[0] == pytest.approx(7.0)
    with pytest.raises(ValueError, match="same D"):
        kernel_inception_distance(np.ones((4, 2)), np.ones((4, 3)))


# ---- MSE, PSNR, SSIM ------------------------------------------------------------------------------------


def test_mse_and_psnr_by_hand():
    x, y = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.1)
    y[1] = 0.0
    np.testing.assert_allclose(mean_squared_error(x, y).numpy(), [0.01, 0.0], atol=1e-12)
    np.testing.assert_allclose(psnr(x, y).numpy(), [20.0, 100.0], atol=1e-9)  # identical images: capped, not inf


def ssim_reference(x: np.ndarray, y: np.ndarray, sigma: float, truncate: float) -> float:
    """SSIM with scipy's Gaussian filter (population statistics), borders that the window does not cover
    cropped; channels averaged."""
    c1, c2 = 0.01**2, 0.03**2
    radius = int(truncate * sigma + 0.5)
    values = []
    for a, b in zip(x, y):
        def f(t):
            return ndimage.gaussian_filter(t, sigma, truncate=truncate)

        mu_a, mu_b = f(a), f(b)
        va, vb, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
        values.append(s[radius:-radius, radius:-radius].mean())
    return float(np.mean(values))


@pytest.mark.parametrize("side", [32, 8])
def test_ssim_matches_a_scipy_gaussian_filter_implementation(side):
    rng = np.random.default_rng(side)
    x = rng.random((2, 3, side, side))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    ours = ssim(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    window, sigma = (11, 1.5) if side == 32 else (7, 1.5 * 7 / 11)
    truncate = ((window - 1) / 2) / sigma  # a window of exactly `window` taps
    for i in range(2):
        assert ours[i] == pytest.approx(ssim_reference(x[i], y[i], sigma, truncate), abs=1e-9)


def test_ssim_of_identical_images_is_one_and_of_flat_images_by_hand():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(ssim(x, x).numpy(), 1.0, atol=1e-12)
    a, b = 0.2, 0.6  # flat images: no variance, so SSIM is the luminance term alone
    expected = (2 * a * b + 0.01**2) / (a**2 + b**2 + 0.01**2)
    assert ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)).item() == pytest.approx(expected)


# ---- AUROC, AUPRC, FPR at 95% TPR ----------------------------------------------------------------------


def test_auroc_by_hand_with_a_tie():
    # pairs (pos, neg): (3,1) 1, (3,2) 1, (2,1) 1, (2,2) 1/2 -> 3.5 / 4
    assert auroc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(0.875)


def test_auroc_is_one_when_separated_zero_reversed_and_one_half_for_one_distribution():
    rng = np.random.default_rng(0)
    inside, outside = rng.normal(5, 1, 500), rng.normal(-5, 1, 500)
    assert auroc(inside, outside) == 1.0
    assert auroc(outside, inside) == 0.0
    assert auroc(rng.normal(0, 1, 4000), rng.normal(0, 1, 4000)) == pytest.approx(0.5, abs=0.02)
    assert auroc(np.ones(10), np.ones(7)) == 0.5  # every pair a tie


def test_detection_measures_match_scikit_learn_with_ties():
    rng = np.random.default_rng(3)
    pos, neg = np.round(rng.normal(0.7, 1, 300), 1), np.round(rng.normal(0, 1, 200), 1)  # rounding makes ties
    labels, scores = np.r_[np.ones(300), np.zeros(200)], np.r_[pos, neg]
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auprc(pos, neg) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert fpr_at_tpr(pos, neg, 0.95) == pytest.approx(fpr[np.searchsorted(tpr, 0.95 - 1e-12)], abs=1e-12)


def test_auprc_and_fpr95_by_hand():
    # ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg); AP = 1/2 * 1 + 1/2 * 2/3
    assert auprc([0.9, 0.7], [0.8, 0.1]) == pytest.approx(0.5 + 1 / 3)
    # 20 positives 1..20: 95% TPR needs 19 of them, threshold 2; negatives >= 2: 3 of 4
    assert fpr_at_tpr(np.arange(1.0, 21.0), [0.5, 2.0, 3.0, 30.0]) == pytest.approx(0.75)
    assert fpr_at_tpr([1.0], [0.0, 1.0]) == 0.5 and math.isclose(fpr_at_tpr([5.0, 6.0], [1.0]), 0.0)


def test_detection_measures_refuse_empty_or_non_finite_scores():
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        auprc([np.nan], [1.0])
