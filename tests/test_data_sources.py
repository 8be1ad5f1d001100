"""Sources: each lists its samples with stable keys and loads them as RGB uint8, from hand-built files."""

import io
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from sivae.data_pipeline.build import assign_splits
from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.images import ImageProblem
from sivae.data_pipeline.sources import (
    DEFAULT_EMOJI_FONT,
    Cifar10Source,
    DigitsSource,
    EmojiSource,
    FolderSource,
    SourceItem,
    SvhnSource,
    ensure_emoji_font,
    parse_source,
    tar_key,
)


def test_digits_are_scikit_learns_scaled_to_255():
    from sklearn.datasets import load_digits

    raw = load_digits()
    items = DigitsSource().items()
    assert len(items) == 1797 and len({i.key for i in items}) == 1797
    image = DigitsSource().load(items[5].ref)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert np.array_equal(image[:, :, 0], image[:, :, 2])
    assert np.array_equal(image[:, :, 1], np.rint(raw.images[5] * 255 / 16).astype(np.uint8))
    assert [i.label for i in items[:20]] == raw.target[:20].tolist()


def _cifar_batch(first: int, count: int) -> bytes:
    """A CIFAR-10 python batch as the real files hold it: protocol 2, bytes keys, rows of R, G, B planes."""
    rows = np.zeros((count, 3072), np.uint8)
    for k in range(count):
        rows[k, :1024] = first + k  # red plane
        rows[k, 1024:2048] = 100 + k  # green plane
        rows[k, 2048 + 33] = 250  # blue at row 1, column 1
    batch = {b"batch_label": b"x", b"labels": [(first + k) % 10 for k in range(count)], b"data": rows,
             b"filenames": [b"f%d.png" % k for k in range(count)]}
    return pickle.dumps(batch, protocol=2)


def _write_cifar_tarball(path, per_batch=3):
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for n, name in enumerate(names):
            data = _cifar_batch(10 * n, per_batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cifar10_tarball_keeps_its_split_and_pixel_layout(tmp_path):
    _write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz")
    source = parse_source(f"cifar10:{tmp_path / 'cifar-10-python.tar.gz'}")
    items = source.items()
    assert [i.split for i in items].count("train") == 15 and [i.split for i in items].count("test") == 3
    first_test = next(i for i in items if i.split == "test")
    image = source.load(first_test.ref)
    assert image.shape == (32, 32, 3)
    assert image[0, 0].tolist() == [50, 100, 0] and image[1, 1].tolist() == [50, 100, 250]
    assert first_test.label == 0 and first_test.key == "cifar10_test_00000"


def test_cifar10_extracted_folder_and_hostile_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for n, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(_cifar_batch(n, 2))
    assert len(Cifar10Source(tmp_path).items()) == 12

    # a pickle that would call os.system("touch ...") if loaded with plain pickle
    marker = tmp_path / "hacked"
    (folder / "data_batch_1").write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(DataError, match=r"refusing to load os\.system"):
        Cifar10Source(tmp_path).items()
    assert not marker.exists()
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        Cifar10Source(tmp_path).items()


def test_svhn_folder_keeps_splits_and_maps_label_10_to_0(tmp_path):
    x = np.zeros((32, 32, 3, 4), np.uint8)
    x[0, 0, :, 2] = (1, 2, 3)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [9]], np.uint8)})
    source = SvhnSource(tmp_path)
    items = source.items()
    assert [i.label for i in items] == [0, 1, 2, 9] and {i.split for i in items} == {"test"}
    assert source.load(items[2].ref)[0, 0].tolist() == [1, 2, 3]
    one_file = SvhnSource(tmp_path / "test_32x32.mat").items()
    assert {i.split for i in one_file} == {None}
    (tmp_path / "bad.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=r"bad\.mat"):
        SvhnSource(tmp_path / "bad.mat").items()


def test_folder_lists_images_recursively_with_safe_keys(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "cats" / "a.b.png")
    Image.new("L", (4, 4), 9).save(tmp_path / "z.JPG", format="JPEG")
    Image.new("RGB", (4, 4)).save(tmp_path / ".hidden" / "x.png")
    (tmp_path / "notes.txt").write_text("not an image")
    source = FolderSource(tmp_path)
    items = source.items()
    assert [i.key for i in items] == ["cats/a_b_png", "z_JPG"]
    assert source.load(items[0].ref)[0, 0].tolist() == [1, 2, 3]
    assert source.load(items[1].ref).shape == (4, 4, 3)
    assert source.where(items[0]) == str(tmp_path / "cats" / "a.b.png")

    Image.new("RGB", (4, 4)).save(tmp_path / "cats" / "a_b.png")  # also becomes cats/a_b_png
    with pytest.raises(DataError, match="both map to the sample key"):
        source.items()


def test_zip_lists_image_members(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (5, 6, 7)).save(buf, format="PNG")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("set/one.png", buf.getvalue())
        z.writestr("__MACOSX/set/._one.png", b"resource fork")
        z.writestr("set/broken.png", b"not a png")
    source = parse_source(f"zip:{tmp_path / 'a.zip'}")
    items = source.items()
    assert [i.key for i in items] == ["set/broken_png", "set/one_png"]
    assert source.load(items[1].ref)[0, 0].tolist() == [5, 6, 7]
    with pytest.raises(ImageProblem, match="cannot be decoded"):
        source.load(items[0].ref)


def test_emoji_glyphs_render_square_on_white():
    if not DEFAULT_EMOJI_FONT.is_file():
        pytest.skip("fonts-noto-color-emoji is not installed")
    source = EmojiSource()
    items = source.items()
    assert len(items) > 1000
    grinning = next(i for i in items if i.key == "emoji_u1f600")
    image = source.load(grinning.ref)
    assert image.shape == (128, 128, 3)
    assert image[0, 0].tolist() == [255, 255, 255] and (image != 255).any()
    assert not any(i.key == "emoji_u0020" for i in items)  # space draws nothing


def test_missing_emoji_font_says_how_to_install(tmp_path, monkeypatch):
    import sivae.data_pipeline.sources as sources

    absent = tmp_path / "NotoColorEmoji.ttf"
    monkeypatch.setattr(sources, "DEFAULT_EMOJI_FONT", absent)
    with pytest.raises(DataError, match="apt-get install -y --no-install-recommends fonts-noto-color-emoji"):
        ensure_emoji_font(absent, can_install=False)
    with pytest.raises(DataError, match="font file not found"):
        ensure_emoji_font(tmp_path / "other.ttf")


def test_keys_are_tar_safe_and_unique():
    assert tar_key("a/b c.d.png") == "a/b_c_d_png"
    long_a, long_b = "x" * 200 + "a.png", "x" * 200 + "b.png"
    assert len(tar_key(long_a)) <= 90 and tar_key(long_a) != tar_key(long_b)


def test_unknown_sources_are_refused(tmp_path):
    for spec in ("mnist", "folder:", f"folder:{tmp_path / 'absent'}", "digits:x"):
        with pytest.raises(DataError):
            parse_source(spec)


def test_test_split_is_an_exact_fraction_chosen_by_key():
    items = [SourceItem(key=f"k{i}", ref=i) for i in range(200)]
    splits = assign_splits(items, 0.1)
    assert len(splits["test"]) == 20 and len(splits["train"]) == 180
    again = assign_splits(list(reversed(items)), 0.1)  # the choice does not depend on the order
    assert {i.key for i in again["test"]} == {i.key for i in splits["test"]}
    assert [i.key for i in splits["train"]] == [i.key for i in items if i not in splits["test"]]
    assert "test" not in assign_splits(items, 0.0)
    own = [SourceItem(key="a", ref=0, split="train"), SourceItem(key="b", ref=1, split="test")]
    assert {k: len(v) for k, v in assign_splits(own, None).items()} == {"train": 1, "test": 1}
    with pytest.raises(DataError, match="own train/test split"):
        assign_splits(own, 0.2)
