"""Image functions: levels are exact box averages, conversions to RGB, square crops, encodings."""

import io

import numpy as np
import pytest
from PIL import Image

from sivae.data_pipeline.images import (
    ImageProblem,
    box_downsample,
    decode,
    encode,
    pyramid,
    resize_box,
    resolution_levels,
    square,
    to_rgb,
)


def test_levels_are_powers_of_two_from_4():
    assert resolution_levels(4) == [4]
    assert resolution_levels(128) == [4, 8, 16, 32, 64, 128]
    for bad in (2, 48, 100):
        with pytest.raises(ValueError):
            resolution_levels(bad)


def test_box_downsample_averages_blocks_and_rounds_half_up():
    # 2x2 blocks with sums 3 (0.75 -> 1), 2 (0.5 -> 1), 1 (0.25 -> 0), 1020 (255)
    gray = np.array([[0, 1, 0, 1], [1, 1, 0, 1], [0, 0, 255, 255], [0, 1, 255, 255]], np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    out = box_downsample(rgb, 2)
    assert out.dtype == np.uint8
    assert out[:, :, 0].tolist() == [[1, 1], [0, 255]]


def test_pyramid_levels_are_averages_of_the_top_level():
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    top = np.repeat(np.repeat(colors, 8, axis=0), 8, axis=1)  # 32px of constant 8x8 blocks
    levels = pyramid(top, [4, 8, 16, 32])
    assert np.array_equal(levels[4], colors)
    assert np.array_equal(levels[8], np.repeat(np.repeat(colors, 2, axis=0), 2, axis=1))
    assert levels[32] is top
    # a non-constant block: the mean of 0 and 255 over a 2x2 checker is 127.5 -> 128
    checker = np.zeros((4, 4, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255
    assert (pyramid(checker, [2])[2] == 128).all()


def test_upsampling_repeats_pixels_only_when_allowed():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with pytest.raises(ImageProblem, match="--upsample"):
        resize_box(small, 32, upsample=False)
    big = resize_box(small, 32, upsample=True)
    assert np.array_equal(big, np.repeat(np.repeat(small, 4, axis=0), 4, axis=1))
    assert np.array_equal(box_downsample(big, 4), small)


def test_downsizing_a_non_power_of_two_image_averages_areas():
    flat = np.full((136, 136, 3), 77, np.uint8)
    assert (resize_box(flat, 128, upsample=False) == 77).all()


def test_to_rgb_composites_on_white_and_expands_gray():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black over white
    out = to_rgb(Image.fromarray(rgba, "RGBA"))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert all(abs(int(v) - 127) <= 1 for v in out[1, 0])

    gray = to_rgb(Image.fromarray(np.array([[0, 100]], np.uint8), "L"))
    assert gray.tolist() == [[[0, 0, 0], [100, 100, 100]]]

    deep = to_rgb(Image.fromarray(np.array([[0x1234, 0xFF00]], np.uint16)))  # 16-bit gray keeps its high byte
    assert deep[0, :, 0].tolist() == [0x12, 0xFF]

    palette = Image.new("P", (1, 1), 0)
    palette.info["transparency"] = 0
    assert to_rgb(palette).tolist() == [[[255, 255, 255]]]


def test_square_crops_the_centre_or_refuses():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert np.array_equal(square(image, "crop"), image[:, 1:5])
    assert np.array_equal(square(image.transpose(1, 0, 2), "crop"), image.transpose(1, 0, 2)[1:5])
    with pytest.raises(ImageProblem, match="6x4, not square"):
        square(image, "error")


@pytest.mark.parametrize("encoding", ["npy", "png"])
def test_encodings_round_trip_and_reject_what_they_did_not_write(encoding):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = encode(image, encoding)
    assert np.array_equal(decode(data, encoding, 16), image)
    for bad in (data[: len(data) // 2], b"garbage" + data[7:], b""):
        with pytest.raises(ImageProblem):
            decode(bad, encoding, 16)
    with pytest.raises(ImageProblem):
        decode(data, encoding, 8)  # the wrong level's size


def test_npy_members_are_plain_numpy_files():
    image = np.zeros((8, 8, 3), np.uint8)
    assert np.load(io.BytesIO(encode(image, "npy"))).shape == (8, 8, 3)
    gray_png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gray_png, format="PNG")
    with pytest.raises(ImageProblem, match="expected RGB"):
        decode(gray_png.getvalue(), "png", 8)
