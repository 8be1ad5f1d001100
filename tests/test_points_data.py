"""Point-cloud data: the surface sampler against the mesh's own geometry, normalisation, `points:DIR`
builds (classes from folders, corrupt files skipped and named), shards read back, shapes3d."""

import json

import numpy as np
import pytest
import trimesh
from scipy.stats import chisquare

from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.loader import TrainStream, eval_batches
from sivae.data_pipeline.manifest import load_manifest
from sivae.data_pipeline.points import RADIUS, normalise, sample_surface
from sivae.data_pipeline.shapes3d import CLASSES
from sivae.data_pipeline.sources import parse_source


def separate_triangles() -> trimesh.Trimesh:
    """Four disjoint triangles in different planes with areas in the ratio 1 : 2 : 4 : 9 (by hand)."""
    triangles = [
        [[0, 0, 0], [1, 0, 0], [0, 1, 0]],  # area 0.5, plane z = 0
        [[0, 0, 2], [2, 0, 2], [0, 1, 2]],  # area 1.0, plane z = 2
        [[5, 0, 0], [5, 2, 0], [5, 0, 2]],  # area 2.0, plane x = 5
        [[0, 5, 0], [3, 5, 0], [0, 5, 3]],  # area 4.5, plane y = 5
    ]
    vertices = np.array(triangles, dtype=np.float64).reshape(-1, 3)
    return trimesh.Trimesh(vertices=vertices, faces=np.arange(12).reshape(4, 3), process=False)


def distance_to_triangles(points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point, the smallest distance to the plane of a triangle whose inside it projects into (by
    barycentric coordinates, written out here), and which triangle that is."""
    best = np.full(len(points), np.inf)
    which = np.full(len(points), -1)
    for t, (a, b, c) in enumerate(triangles):
        normal = np.cross(b - a, c - a)
        normal /= np.linalg.norm(normal)
        offset = (points - a) @ normal
        projected = points - offset[:, None] * normal
        v0, v1, v2 = b - a, c - a, projected - a
        d00, d01, d11 = v0 @ v0, v0 @ v1, v1 @ v1
        d20, d21 = v2 @ v0, v2 @ v1
        denom = d00 * d11 - d01 * d01
        v = (d11 * d20 - d01 * d21) / denom
        w = (d00 * d21 - d01 * d20) / denom
        inside = (v >= -1e-9) & (w >= -1e-9) & (v + w <= 1 + 1e-9)
        distance = np.where(inside, np.abs(offset), np.inf)
        closer = distance < best
        best[closer], which[closer] = distance[closer], t
    return best, which


def test_surface_points_lie_on_the_mesh_and_cover_faces_in_proportion_to_area():
    mesh = separate_triangles()
    points, _ = sample_surface(mesh, 20_000, seed=123)
    distance, face = distance_to_triangles(points, mesh.vertices[mesh.faces])
    assert distance.max() < 1e-6
    counts = np.bincount(face, minlength=4)
    expected = np.array([1, 2, 4, 9]) / 16 * len(points)
    assert chisquare(counts, expected).pvalue > 0.01, counts  # at this fixed seed
    # and a sampler ignoring area (a quarter each) is rejected by the same test
    assert chisquare(np.full(4, len(points) // 4), expected).pvalue < 1e-6


def test_normalise_centres_the_bounding_box_and_fits_the_sphere():
    rng = np.random.default_rng(0)
    cloud = rng.uniform([-3, 10, 4], [5, 12, 5], size=(500, 3))
    out = normalise(cloud)
    assert out.dtype == np.float32
    np.testing.assert_allclose((out.min(0) + out.max(0)) / 2, 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1).max(), RADIUS, rtol=1e-6)
    # a similarity transform (shift, scale) of the input changes nothing
    np.testing.assert_allclose(normalise(cloud * 7 - 3), out, atol=1e-6)
    with pytest.raises(ValueError, match="no extent"):
        normalise(np.ones((10, 3)))


@pytest.fixture(scope="module")
def shape_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    (root / "boxes").mkdir()
    (root / "balls").mkdir()
    for i in range(3):
        trimesh.creation.box(extents=(1 + i, 1, 0.5)).export(root / "boxes" / f"box{i}.obj")
    trimesh.creation.icosphere(subdivisions=2, radius=2).export(root / "balls" / "ball.off")
    trimesh.creation.icosphere(subdivisions=1).export(root / "balls" / "ball2.ply")
    np.save(root / "balls" / "cloud.npy", np.random.default_rng(1).normal(size=(3000, 3)))
    np.save(root / "balls" / "exact.npy", np.random.default_rng(3).uniform(-2, 3, size=(64, 3)))
    np.savez(root / "balls" / "small.npz", points=np.random.default_rng(2).normal(size=(40, 3)))
    (root / "boxes" / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\x00\xff")
    np.save(root / "boxes" / "flat.npy", np.zeros((10, 2)))
    (root / "boxes" / "notes.txt").write_text("not a shape")
    return root


def test_a_folder_of_meshes_and_arrays_builds_with_classes_and_corrupt_files_skipped(tmp_path, shape_folder):
    out = tmp_path / "set"
    manifest = build_dataset(parse_source(f"points:{shape_folder}"), out,
                             BuildOptions(points=64, test_fraction=0.0, workers=0), progress=False)
    assert manifest.kind == "points" and manifest.resolutions == [64]
    assert manifest.classes == ["balls", "boxes"] and manifest.labels
    assert manifest.split_sizes == {"train": 8}  # 3 boxes, 2 balls, 3 arrays
    skipped = {entry["where"]: entry["reason"] for entry in manifest.skipped_sources}
    assert set(skipped) == {str(shape_folder / "boxes" / "broken.ply"), str(shape_folder / "boxes" / "flat.npy")}
    assert "mesh" in skipped[str(shape_folder / "boxes" / "broken.ply")]
    assert "shape (10, 2)" in skipped[str(shape_folder / "boxes" / "flat.npy")]
    assert json.loads((out / "manifest.json").read_text())["skipped_sources"] == manifest.skipped_sources

    batch = next(iter(eval_batches(out, "train", 64, 16)))
    clouds = batch.images[batch.valid].numpy()
    assert clouds.shape == (8, 64, 3) and clouds.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(clouds, axis=2).max(axis=1), RADIUS, rtol=1e-5)
    by_key = dict(zip([k for k in batch.keys if k], clouds))
    given = np.load(shape_folder / "balls" / "exact.npy")  # 64 points: kept as they are, then normalised
    centre = (given.min(axis=0) + given.max(axis=0)) / 2
    np.testing.assert_allclose(by_key["balls/exact_npy"],
                               (given - centre) * (0.5 / np.sqrt(((given - centre) ** 2).sum(1)).max()), atol=1e-6)
    extents = np.ptp(by_key["boxes/box2_obj"], axis=0)  # a 3 x 1 x 0.5 box keeps its proportions
    np.testing.assert_allclose(extents / extents[0], [1, 1 / 3, 1 / 6], atol=0.03)


def test_a_rerun_gives_the_same_shards_and_points_do_not_depend_on_workers(tmp_path, shape_folder):
    source = parse_source(f"points:{shape_folder}")
    one = build_dataset(source, tmp_path / "a", BuildOptions(points=32, workers=0, shard_size=2), progress=False)
    two = build_dataset(source, tmp_path / "b", BuildOptions(points=32, workers=2, shard_size=2), progress=False)
    assert one.digest == two.digest


def test_training_stream_of_points_resumes_exactly(tmp_path):
    out = tmp_path / "s3d"
    manifest = build_dataset(parse_source("shapes3d:4"), out, BuildOptions(points=32, workers=0), progress=False)
    assert manifest.classes == list(CLASSES) and sum(manifest.split_sizes.values()) == 4 * len(CLASSES)
    straight = TrainStream(out, 32, 4, workers=0, flip=False)
    batches = [b.images for _, b in zip(range(6), straight)]
    assert batches[0].shape == (4, 32, 3) and batches[0].dtype.is_floating_point
    resumed = TrainStream(out, 32, 4, workers=0, flip=False, start_batch=3)
    for expected, (_, got) in zip(batches[3:], zip(range(3), resumed)):
        assert (expected == got.images).all()
    with pytest.raises(DataError, match="clouds of 32 points, not 64"):
        load_manifest(out).check("train", 64)
