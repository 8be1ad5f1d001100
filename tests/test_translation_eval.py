"""Translation scores: the leakage probe against chance, ground-truth pairs against their definition, the
baseline row against numpy, and `sivae translate` / `sivae eval run --metrics translation` end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sivae.core.images import to_uint8
from sivae.data_pipeline.build import BuildOptions, build_dataset
from sivae.data_pipeline.samples import SplitSamples
from sivae.data_pipeline.sources import DEFAULT_EMOJI_FONT, parse_source
from sivae.eval.loading import load_model
from sivae.eval.translation import as_input, ground_truth_pairs, probe_accuracy, translation_scores
from sivae.launch.cli import main as sivae
from sivae.models import build_model
from sivae.models.config import ModelConfig

TINY = {"arch": "translation", "max_resolution": 8, "latent_dim": 6, "class_latent_dim": 4,
        "content_latent_dim": 2, "channels": [4]}


def informative_codes(n: int = 600, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes whose label is the argmax of a linear map of them: a linear probe can read it."""
    rng = np.random.default_rng(seed)
    codes = rng.normal(size=(n, 5))
    return codes, np.argmax(codes @ rng.normal(size=(5, classes)), axis=1)


def test_the_probe_reads_a_linear_label_and_reports_chance_on_shuffled_labels():
    codes, labels = informative_codes()
    accuracy, chance = probe_accuracy(codes, labels)
    assert accuracy > 0.9
    shuffled = np.random.default_rng(1).permutation(labels)
    accuracy, chance = probe_accuracy(codes, shuffled)
    assert chance == pytest.approx(np.bincount(labels).max() / len(labels))
    assert abs(accuracy - chance) < 0.08  # chance +- 4 standard errors of 600 guesses


def meta_grid(identities: int, poses: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    cells = [{"identity": f"id{i}", "pose": j} for i in range(identities) for j in range(poses)]
    return [cells[k] for k in rng.permutation(len(cells))]


def test_ground_truth_pairs_are_the_identity_of_one_in_the_pose_of_the_other():
    meta = meta_grid(3, 4)
    rows = ground_truth_pairs(meta, count=10**6, seed=0)
    assert len(rows) == 12 * (2 * 3)  # every sample with each of the others of another identity and pose
    for a, b, target in rows:
        assert meta[a]["identity"] != meta[b]["identity"] and meta[a]["pose"] != meta[b]["pose"]
        assert (meta[target]["identity"], meta[target]["pose"]) == (meta[a]["identity"], meta[b]["pose"])
    some = ground_truth_pairs(meta, count=5, seed=3)
    assert len(some) == 5 and {tuple(r) for r in some} <= {tuple(r) for r in rows}


def test_the_unchanged_baseline_row_is_the_source_image_scored_against_the_ground_truth():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY)).eval()
    meta = meta_grid(6, 4)
    images = np.random.default_rng(2).integers(0, 256, size=(len(meta), 8, 8, 3), dtype=np.uint8)
    samples = SplitSamples([f"k{i}" for i in range(len(meta))], images, meta, 0)
    pixels = lambda batch: batch.flatten(1).double().numpy()  # noqa: E731 -- the "features" are the pixels
    scores = translation_scores(model, samples, pixels, pairs=40, seed=0)
    rows = ground_truth_pairs(meta, 40, 0)
    source, truth = images[rows[:, 0]].astype(np.float64), images[rows[:, 2]].astype(np.float64)
    mse = ((source / 255 - truth / 255) ** 2).reshape(len(rows), -1).mean(axis=1)
    baseline = scores["unchanged_baseline"]
    assert baseline["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / mse)))
    distance = np.linalg.norm((source - truth).reshape(len(rows), -1), axis=1).mean()
    assert baseline["feature_distance"] == pytest.approx(distance)
    assert scores["pairs"] == 40 and scores["identities"] == 6 and scores["poses"] == 4
    swapped = to_uint8(model.translate(as_input(images[rows[:, 0]], "cpu"), as_input(images[rows[:, 1]], "cpu")))
    swap_mse = ((swapped.double() / 255 - torch.from_numpy(truth).permute(0, 3, 1, 2) / 255) ** 2).flatten(1).mean(1)
    assert scores["swap"]["psnr"] == pytest.approx(float((10 * torch.log10(1 / swap_mse)).mean()))
    assert scores["pose_from_class_code"]["chance"] == pytest.approx(0.25)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, digits16) -> Path:
    """A translation model trained for 64 images on 8px digits."""
    root = tmp_path_factory.mktemp("translate")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": TINY, "data": {"path": str(digits16), "workers": 0, "flip": False},
        "objective": {"name": "translation-soft-intro"},
        "train": {"schedule": [{"resolution": 8, "stable_kimg": 0.064, "batch": 16}], "snapshot_every_kimg": 0.064,
                  "checkpoint_every_kimg": 0.064, "sample_every_kimg": 0.064, "log_every_kimg": 0.064}}))
    assert sivae(["train", str(config), "--run-dir", str(root / "run"), "--device", "cpu"]) == 0
    return root / "run" / "snapshots" / "snapshot-000000000064.pt"


def test_translate_pairs_makes_the_grid_of_every_class_source_with_every_content_source(tmp_path, snapshot,
                                                                                        digits16, capsys):
    rng = np.random.default_rng(0)
    files = []
    for name in ("a", "b", "c"):
        files.append(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(files[-1])
    a, b, c = map(str, files)
    assert sivae(["translate", str(snapshot), "--out", str(tmp_path / "out"), "--pairs", f"{a},{b}", f"{c},{b}"]) == 0
    figure = np.asarray(Image.open(tmp_path / "out" / "swaps.png"))
    factor = 512 // 32  # 3 rows (the content sources, then 2 class sources) x 2 columns of 8px cells, 2px padding
    assert figure.shape == (32 * factor, 22 * factor, 3)
    cells = figure[::factor, ::factor]
    cell = lambda row, column: cells[2 + 10 * row : 10 + 10 * row, 2 + 10 * column : 10 + 10 * column]  # noqa: E731
    assert (cell(0, 0) == 255).all()  # the blank corner
    assert np.array_equal(cell(0, 1), np.asarray(Image.open(b)))
    assert np.array_equal(cell(2, 0), np.asarray(Image.open(c)))
    model = load_model(snapshot).model
    inputs = [as_input(np.asarray(Image.open(p))[None], "cpu") for p in (c, b)]
    assert np.array_equal(cell(2, 1), to_uint8(model.translate(*inputs))[0].permute(1, 2, 0).numpy())
    assert sivae(["translate", str(snapshot), "--out", str(tmp_path / "bad"), "--pairs", a]) == 2
    assert "expected CLASS_SOURCE,CONTENT_SOURCE" in capsys.readouterr().err
    assert sivae(["translate", str(snapshot), "--out", str(tmp_path / "bad"), "--data", str(digits16)]) == 2
    assert "carry no identity and pose" in capsys.readouterr().err


def test_the_translation_metric_scores_held_out_identities_of_emoji_poses(tmp_path, snapshot):
    if not DEFAULT_EMOJI_FONT.is_file():
        pytest.skip("fonts-noto-color-emoji is not installed")
    data = tmp_path / "poses"
    build_dataset(parse_source("emoji-poses:identities=24,poses=3,test=0.25"), data,
                  BuildOptions(max_resolution=8, workers=0, upsample=False), progress=False)
    out = tmp_path / "eval"
    assert sivae(["eval", "run", str(snapshot), "--out", str(out), "--data", str(data), "--metrics", "translation",
                  "--features", "standin", "--no-progress"]) == 0
    scores = json.loads((out / "metrics.json").read_text())["translation"]
    assert (scores["identities"], scores["poses"], scores["images"]) == (6, 3, 18)
    for probe, chance in (("pose_from_class_code", 1 / 3), ("identity_from_content_code", 1 / 6)):
        assert scores[probe]["chance"] == pytest.approx(chance) and 0 <= scores[probe]["accuracy"] <= 1
    assert (out / "swaps.png").is_file()
    assert sivae(["translate", str(snapshot), "--out", str(tmp_path / "grid"), "--data", str(data)]) == 0
