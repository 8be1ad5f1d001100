"""Point-cloud measures against brute force and the properties that define them: Chamfer distance,
the reference's voxel JSD, MMD / COV / 1-NNA; and the rendering the tools use."""

import itertools

import numpy as np
import pytest
import torch

from sivae.core.elbo import reconstruction_error
from sivae.core.points import chamfer_distance, pairwise_chamfer, point_cloud_grid, render_point_clouds
from sivae.eval.point_measures import (
    coverage,
    distance_set_metrics,
    nearest_cells,
    one_nearest_neighbour_accuracy,
    sphere_grid,
    voxel_jsd,
)


def brute_chamfer(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(sum form, mean form) by two explicit loops over the points, in float64."""
    x_to_y = [min(float(((p - q) ** 2).sum()) for q in y) for p in x]
    y_to_x = [min(float(((p - q) ** 2).sum()) for p in x) for q in y]
    return sum(x_to_y) + sum(y_to_x), np.mean(x_to_y) + np.mean(y_to_x)


def test_chamfer_matches_brute_force_and_is_zero_for_a_set_with_itself():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.5, 0.5, (3, 17, 3)), rng.uniform(-0.5, 0.5, (3, 11, 3))
    sums = chamfer_distance(torch.tensor(x), torch.tensor(y), reduce="sum")
    means = chamfer_distance(torch.tensor(x), torch.tensor(y))
    for i in range(3):
        expected_sum, expected_mean = brute_chamfer(x[i], y[i])
        assert sums[i].item() == pytest.approx(expected_sum, rel=1e-5)
        assert means[i].item() == pytest.approx(expected_mean, rel=1e-5)
    shuffled = torch.tensor(x[:, rng.permutation(17)])
    assert chamfer_distance(torch.tensor(x), shuffled).abs().max().item() < 1e-6  # the same set, reordered
    # the training loss is the sum form
    assert torch.allclose(reconstruction_error(torch.tensor(x), torch.tensor(x[:, ::-1].copy()), "chamfer"),
                          torch.zeros(3, dtype=torch.float32), atol=1e-6)


def test_pairwise_chamfer_is_every_pair_and_blocks_do_not_matter(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = torch.tensor(rng.normal(size=(5, 9, 3)), dtype=torch.float32), torch.tensor(rng.normal(size=(4, 7, 3)),
                                                                                      dtype=torch.float32)
    expected = np.array([[brute_chamfer(a[i].double().numpy(), b[j].double().numpy())[1] for j in range(4)]
                         for i in range(5)])
    np.testing.assert_allclose(pairwise_chamfer(a, b).numpy(), expected, rtol=1e-5)
    monkeypatch.setattr("sivae.core.points._PAIR_BLOCK_ENTRIES", 9 * 7 * 2 + 1)  # two pairs per block
    np.testing.assert_allclose(pairwise_chamfer(a, b).numpy(), expected, rtol=1e-5)
    itself = np.array([[brute_chamfer(p.double().numpy(), q.double().numpy())[1] for q in a] for p in a])
    monkeypatch.setattr("sivae.core.points._PAIR_BLOCK_ENTRIES", 9 * 9 * 2)  # upper blocks of two, mirrored
    np.testing.assert_allclose(pairwise_chamfer(a).numpy(), itself, rtol=1e-5, atol=1e-7)


def test_nearest_cells_match_a_brute_force_search_of_the_sphere_grid():
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.uniform(-0.55, 0.55, (3000, 3)), rng.normal(0, 0.2, (1000, 3))])
    cells = sphere_grid(28)
    assert len(cells) > 0 and np.linalg.norm(cells, axis=1).max() <= 0.5
    brute = ((points[:, None, :] - cells[None].astype(np.float64)) ** 2).sum(-1)
    found = nearest_cells(points)
    chosen = brute[np.arange(len(points)), found]
    np.testing.assert_allclose(chosen, brute.min(axis=1), atol=1e-9)  # ties may pick either cell


def test_voxel_jsd_is_zero_for_a_set_with_itself_and_grows_with_difference():
    rng = np.random.default_rng(3)
    clouds = rng.normal(0, 0.15, (20, 256, 3))
    assert voxel_jsd(clouds, clouds) == pytest.approx(0.0, abs=1e-12)
    near = voxel_jsd(clouds + 0.01, clouds)
    far = voxel_jsd(clouds * 0.3 + 0.2, clouds)
    assert 0 < near < far <= 1.0


def two_classes(rng, n: int, points: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Clouds on a sphere of radius 0.4 and clouds on a flat 0.6 x 0.6 square, each with random jitter."""
    sphere = rng.normal(size=(n, points, 3))
    sphere = 0.4 * sphere / np.linalg.norm(sphere, axis=2, keepdims=True)
    square = np.concatenate([rng.uniform(-0.3, 0.3, (n, points, 2)), np.zeros((n, points, 1))], axis=2)
    jitter = rng.normal(0, 0.01, (2, n, 1, 3))
    return torch.tensor(sphere + jitter[0], dtype=torch.float32), torch.tensor(square + jitter[1], dtype=torch.float32)


def set_metrics(s: torch.Tensor, r: torch.Tensor) -> dict[str, float]:
    return distance_set_metrics(pairwise_chamfer(s, r), pairwise_chamfer(s), pairwise_chamfer(r))


def test_one_nna_is_near_half_for_one_distribution_and_near_one_for_two_classes():
    rng = np.random.default_rng(4)
    spheres_a, squares = two_classes(rng, 40)
    spheres_b, _ = two_classes(rng, 40)
    same = set_metrics(spheres_a, spheres_b)["1nna"]
    assert 0.3 <= same <= 0.7, same
    assert set_metrics(spheres_a, squares)["1nna"] >= 0.99


def test_coverage_and_mmd_of_a_set_with_itself():
    rng = np.random.default_rng(5)
    clouds, _ = two_classes(rng, 12)
    metrics = set_metrics(clouds, clouds)
    assert metrics["cov"] == 1.0
    assert metrics["mmd"] == pytest.approx(0.0, abs=1e-6)
    # by hand: samples 0 and 1 both nearest to reference 0; references 1 and 2 uncovered
    d_sr = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.8, 0.7]])
    assert coverage(d_sr) == pytest.approx(1 / 3)
    # 1-NNA by hand: s0's nearest is r0 (wrong), s1's is s0 (right), r0's is s0 (wrong), r1's is r0 (right)
    d_ss, d_rr = torch.tensor([[0.0, 0.3], [0.3, 0.0]]), torch.tensor([[0.0, 0.4], [0.4, 0.0]])
    d_sr = torch.tensor([[0.1, 0.9], [0.8, 0.95]])
    assert one_nearest_neighbour_accuracy(d_sr, d_ss, d_rr) == pytest.approx(0.5)


def test_rendering_puts_points_where_the_view_projects_them():
    cloud = torch.zeros(2, 1, 3)
    cloud[1, 0] = torch.tensor([0.5, 0.0, 0.0])  # seen from straight ahead: the right edge, middle row
    images = render_point_clouds(cloud, size=33, azimuth=0.0, elevation=0.0)
    assert images.shape == (2, 3, 33, 33) and images.min() >= -1 and images.max() <= 1
    for image, column in zip(images, (15, 30)):
        dark = (image < 0.9).all(dim=0).nonzero().tolist()
        assert sorted(dark) == sorted([15 + dr, column + dc] for dr, dc in itertools.product((0, 1), (0, 1)))
    grid = point_cloud_grid(cloud[:1].expand(5, 1, 3), columns=3, size=20)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 22 + 2, 3 * 22 + 2, 3)
