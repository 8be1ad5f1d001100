"""Importance-weighted log-likelihood on a model whose likelihood is known exactly: a linear-Gaussian decoder.

z ~ N(0, I_L), x | z ~ N(W z + b, sigma^2 I_D) with sigma^2 = 1 / (2 beta_rec) gives p(x) = N(b, W W^T + sigma^2 I),
computed here by scipy. With orthogonal columns of W the exact posterior is diagonal, so an encoder can give it
exactly (then every importance weight equals p(x)); a deliberately wider, shifted posterior is the imperfect case.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from sivae.eval.likelihood import gaussian_observation_constant, importance_weighted_bounds, log_likelihood_estimates

L, D, BETA = 2, 6, 2.0
SIGMA2 = 1.0 / (2.0 * BETA)
N = 200


@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=torch.float64))
    w = q * torch.tensor([2.0, 1.0], dtype=torch.float64)  # orthogonal columns: a diagonal posterior
    b = 0.5 * torch.randn(D, generator=g, dtype=torch.float64)
    cov = w @ w.T + SIGMA2 * torch.eye(D, dtype=torch.float64)
    x = torch.from_numpy(np.random.default_rng(0).multivariate_normal(b.numpy(), cov.numpy(), N))
    exact = multivariate_normal(b.numpy(), cov.numpy()).logpdf(x.numpy())
    posterior_cov = torch.linalg.inv(torch.eye(L, dtype=torch.float64) + w.T @ w / SIGMA2)

    def encoder(variance_scale: float, shift: float):
        def encode(data):
            mu = (data - b) @ w @ posterior_cov.T / SIGMA2 + shift
            return mu, torch.log(torch.diag(posterior_cov) * variance_scale).expand(data.shape[0], L)

        return encode

    def decode(z):
        return z @ w.T + b

    return x, exact, encoder, decode


def estimates(model, k, variance_scale=1.0, shift=0.0, seed=1):
    x, exact, encoder, decode = model
    noise = torch.randn(N, k, L, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    iw, elbo = log_likelihood_estimates(x, encoder(variance_scale, shift), decode, noise, beta_rec=BETA,
                                        decode_batch=97)  # an odd chunk size: chunks straddle samples
    return iw.numpy(), elbo.numpy(), exact


def test_with_the_exact_posterior_every_estimate_is_the_exact_log_likelihood(model):
    for k in (1, 16):
        iw, elbo, exact = estimates(model, k)
        np.testing.assert_allclose(iw, exact, atol=1e-5)  # the squared error is summed in fp32
        np.testing.assert_allclose(elbo, exact, atol=1e-5)


def test_iw_is_at_least_the_elbo_and_tightens_toward_the_exact_value_as_k_grows(model):
    """Imperfect posterior (variance x3, mean shifted by 0.3). Tolerance: the mean over 200 points of
    IW_128 within 0.05 nats of the exact log p(x) (measured 0.012); IW_1 equals the one-sample ELBO."""
    gaps = {}
    for k in (1, 16, 128):
        iw, elbo, exact = estimates(model, k, variance_scale=3.0, shift=0.3)
        assert (iw >= elbo - 1e-9).all()
        assert (iw.mean() <= exact.mean() + 0.05)  # a lower bound in expectation
        gaps[k] = float(np.mean(exact - iw))
        if k == 1:
            np.testing.assert_allclose(iw, elbo, atol=1e-12)
    assert gaps[1] > gaps[16] > gaps[128] >= -0.05
    assert abs(gaps[128]) < 0.05
    assert gaps[1] > 1.0  # the ELBO of this posterior is far from tight


def test_observation_constant_makes_log_p_x_given_z_a_gaussian_density():
    # -log N(x; m, sigma^2 I) = ||x - m||^2 / (2 sigma^2) + (d/2) log(2 pi sigma^2), sigma^2 = 1 / (2 beta)
    x, m, beta = np.array([0.3, -0.2, 0.9]), np.array([0.1, 0.1, 0.4]), 0.7
    expected = -multivariate_normal(m, np.eye(3) / (2 * beta)).logpdf(x)
    assert beta * np.sum((x - m) ** 2) + gaussian_observation_constant(3, beta) == pytest.approx(expected)
    with pytest.raises(ValueError, match="beta_rec"):
        gaussian_observation_constant(3, 0.0)


def test_bounds_from_log_weights_by_hand():
    log_w = torch.log(torch.tensor([[1.0, 3.0]], dtype=torch.float64))
    iw, elbo = importance_weighted_bounds(log_w)
    assert iw.item() == pytest.approx(math.log(2.0)) and elbo.item() == pytest.approx(0.5 * math.log(3.0))
