"""Sample-based metrics of the 2D study, as pure functions on arrays.

`kl`/`jsd` are the textbook divergences of epsilon-smoothed normalised histograms (masses, in
nats). `kl_ref`/`jsd_ref` reproduce the reference code's conventions so numbers compare with
published ones: densities rather than masses, a 1e-14 floor inside the log of the second
argument only, a division by the number of rows (100), and for the JSD KL(M||A) rather than
KL(A||M). `gnelbo` is the grid-normalised negative ELBO.
"""

from __future__ import annotations

import numpy as np

BINS = 100
SMOOTHING = 1e-6  # added to every bin's mass before renormalising (textbook kl/jsd)
REF_FLOOR = 1e-14


def histogram(points: np.ndarray, half_range: float, *, density: bool, bins: int = BINS) -> np.ndarray:
    lim = 2.0 * half_range
    hist, _, _ = np.histogram2d(
        points[:, 0], points[:, 1], bins=bins, range=[[-lim, lim], [-lim, lim]], density=density
    )
    return hist


def _smoothed_mass(counts: np.ndarray) -> np.ndarray:
    mass = counts / max(counts.sum(), 1.0) + SMOOTHING
    return mass / mass.sum()


def _kl_masses(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def histogram_kl(real_counts: np.ndarray, fake_counts: np.ndarray) -> float:
    """KL(p_data || p_model) of smoothed histogram masses."""
    return _kl_masses(_smoothed_mass(real_counts), _smoothed_mass(fake_counts))


def histogram_jsd(real_counts: np.ndarray, fake_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence of smoothed histogram masses (at most ln 2)."""
    p, q = _smoothed_mass(real_counts), _smoothed_mass(fake_counts)
    m = 0.5 * (p + q)
    return 0.5 * _kl_masses(p, m) + 0.5 * _kl_masses(q, m)


def _ref_kl(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * (log a - log(b + 1e-14))) / rows, with 0 * log 0 = 0 (torch kl_div 'batchmean')."""
    terms = np.zeros_like(a)
    pos = a > 0
    terms[pos] = a[pos] * (np.log(a[pos]) - np.log(b[pos] + REF_FLOOR))
    return float(terms.sum() / a.shape[0])


def reference_kl(real_density: np.ndarray, fake_density: np.ndarray) -> float:
    return _ref_kl(real_density, fake_density)


def reference_jsd(real_density: np.ndarray, fake_density: np.ndarray) -> float:
    m = 0.5 * (real_density + fake_density)
    return 0.5 * (_ref_kl(m, real_density) + _ref_kl(m, fake_density))


def grid_normalized_elbo(neg_elbo_grid: np.ndarray, neg_elbo_data: np.ndarray) -> float:
    """Mean over data points of -ELBO(x) / (sum of -ELBO over grid and data points)."""
    total = float(np.sum(neg_elbo_grid, dtype=np.float64) + np.sum(neg_elbo_data, dtype=np.float64))
    return float(np.mean(neg_elbo_data / total))


def sample_metrics(real: np.ndarray, fake: np.ndarray, half_range: float) -> dict[str, float]:
    real_counts = histogram(real, half_range, density=False)
    fake_counts = histogram(fake, half_range, density=False)
    real_density = histogram(real, half_range, density=True)
    fake_density = histogram(fake, half_range, density=True)
    return {
        "kl": histogram_kl(real_counts, fake_counts),
        "jsd": histogram_jsd(real_counts, fake_counts),
        "kl_ref": reference_kl(real_density, fake_density),
        "jsd_ref": reference_jsd(real_density, fake_density),
    }
