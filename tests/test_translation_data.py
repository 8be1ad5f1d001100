"""emoji-poses: the pose transform against hand-made expectations, and a built data set against its metadata
(every sample re-rendered from its metadata alone matches bit for bit; identities never cross the split)."""

import numpy as np
import pytest

from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.images import pyramid, resize_box
from sivae.data_pipeline.poses import ANGLES, SCALES, Pose, parse_poses_spec, pose_grid, render_pose
from sivae.data_pipeline.samples import read_split
from sivae.data_pipeline.sources import DEFAULT_EMOJI_FONT, parse_source


def pattern(side: int = 16) -> np.ndarray:
    """An asymmetric RGB image: a rotation or mirror of it is never itself."""
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)


def test_the_identity_pose_leaves_the_image_unchanged():
    image = pattern()
    assert np.array_equal(render_pose(image, Pose(0.0, 1.0)), image)


def test_a_quarter_turn_is_numpys_rot90():
    image = pattern()
    assert np.array_equal(render_pose(image, Pose(90.0, 1.0)), np.rot90(image))  # counter-clockwise
    assert np.array_equal(render_pose(image, Pose(-90.0, 1.0)), np.rot90(image, -1))


def test_a_shift_moves_the_image_and_fills_white():
    image = pattern()
    moved = render_pose(image, Pose(0.0, 1.0, (0.25, 0.0)))  # 4 px right
    assert np.array_equal(moved[:, 4:], image[:, :-4])
    assert (moved[:, :4] == 255).all()


def test_half_scale_keeps_the_centre_and_whitens_the_border():
    image = np.zeros((16, 16, 3), np.uint8)  # black everywhere: at half size a black 8 x 8 square in the middle
    small = render_pose(image, Pose(0.0, 0.5))
    assert (small[5:11, 5:11] == 0).all() and (small[:3] == 255).all() and (small[:, -3:] == 255).all()


def test_poses_are_distinct_seeded_draws_from_the_grid():
    poses = pose_grid(8, seed=0, position=False)
    assert len(set(poses)) == 8 and poses == pose_grid(8, seed=0, position=False)
    assert poses != pose_grid(8, seed=1, position=False)
    assert all(p.angle in ANGLES and p.scale in SCALES and p.shift == (0.0, 0.0) for p in poses)
    assert any(p.shift != (0.0, 0.0) for p in pose_grid(20, seed=0, position=True))


def test_bad_options_are_refused_by_name():
    with pytest.raises(DataError, match="bad option 'colour=1'"):
        parse_poses_spec("colour=1")
    with pytest.raises(DataError, match="poses='x'"):
        parse_poses_spec("poses=x")
    with pytest.raises(DataError, match="poses must be in"):
        parse_poses_spec("poses=10000")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not DEFAULT_EMOJI_FONT.is_file():
        pytest.skip("fonts-noto-color-emoji is not installed")
    source = parse_source("emoji-poses:identities=12,poses=3,test=0.25")
    out = tmp_path_factory.mktemp("emoji-poses") / "data"
    build_dataset(source, out, BuildOptions(max_resolution=16, workers=0, shard_size=7), progress=False)
    return source, out


def test_every_sample_rerendered_from_its_metadata_matches_bit_for_bit(built):
    source, out = built
    for split in ("train", "test"):
        for resolution in (16, 8):
            samples = read_split(out, split, resolution)
            assert samples.skipped == 0 and len(samples.keys) > 0
            for key, image, meta in zip(samples.keys, samples.images, samples.meta):
                assert key == f"{meta['identity']}_p{meta['pose']:03d}"
                again = pyramid(resize_box(source.render(meta), 16, False), [resolution])[resolution]
                assert np.array_equal(image, again), key


def test_every_identity_has_every_pose_and_test_identities_are_unseen_in_training(built):
    _, out = built
    train, test = read_split(out, "train", 16), read_split(out, "test", 16)
    poses = pose_grid(3, seed=0, position=False)
    for samples in (train, test):
        pairs = {(m["identity"], m["pose"]) for m in samples.meta}
        identities = {m["identity"] for m in samples.meta}
        assert pairs == {(i, j) for i in identities for j in range(3)}
        for m in samples.meta:
            assert Pose(m["angle"], m["scale"], tuple(m["shift"])) == poses[m["pose"]]
    train_ids, test_ids = {m["identity"] for m in train.meta}, {m["identity"] for m in test.meta}
    assert len(test_ids) == 3 and len(train_ids) == 9 and not train_ids & test_ids
