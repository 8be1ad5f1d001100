"""The tools on a point-cloud model: rendered pictures, raw arrays and Chamfer scores, checked against the
model's own decode, core.points and `sivae eval`'s points_recon metric; and the nightly job on its run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_point_training import tiny_point_set

from sivae.core.config import load_config, to_dict
from sivae.core.images import to_uint8
from sivae.core.points import chamfer_distance, render_point_clouds
from sivae.core.snapshot import write_snapshot
from sivae.data_pipeline.loader import eval_batches
from sivae.eval.loading import load_model
from sivae.eval.runner import evaluate
from sivae.launch.cli import main as sivae_main
from sivae.models import build_model
from sivae.train.schema import RunConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools-points")
    config, data = tiny_point_set(root, 4, 0.25)
    run = load_config(RunConfig, config)
    torch.manual_seed(0)
    model = build_model(run.model)
    (root / "runs" / "points").mkdir(parents=True)
    (root / "runs" / "points" / "config.yaml").write_text(yaml.safe_dump(to_dict(run)))
    networks = {n: model.network(n).state_dict() for n in model.networks}
    snapshot = write_snapshot(root / "runs" / "points" / "snapshots", images=64, config=to_dict(run), lod=None,
                              blend=1.0, resolution=None, networks=networks)
    return {"data": data, "snapshot": snapshot, "runs": root / "runs"}


def sivae(*args) -> int:
    return sivae_main([str(a) for a in args])


def test_generate_writes_each_seeds_cloud_and_its_render(setup, tmp_path):
    assert sivae("generate", setup["snapshot"], "--out", tmp_path, "--seeds", "0-3", "--grid", "2x2", "--html",
                 "--no-progress") == 0  # fmt: skip
    model = load_model(setup["snapshot"]).model
    listed = json.loads((tmp_path / "samples.json").read_text())["samples"]
    assert [s["array"] for s in listed] == [f"seed{s:06d}_psi1.00.npy" for s in range(4)]
    z = torch.randn(model.latent_dim, generator=torch.Generator().manual_seed(2))[None]
    expected = model.decode(z)[0]
    stored = np.load(tmp_path / "seed000002_psi1.00.npy")
    assert stored.shape == (32, 3) and np.allclose(stored, expected.numpy(), atol=1e-6)
    render = to_uint8(render_point_clouds(expected[None]))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "seed000002_psi1.00.png").convert("RGB")), render)
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "index.html").is_file()


def test_reconstruct_scores_chamfer_as_the_points_recon_metric_and_refinement_lowers_it(setup, tmp_path):
    snap, data = setup["snapshot"], setup["data"]
    metrics = evaluate(snap, ["points_recon"], tmp_path / "eval")
    assert sivae("reconstruct", snap, "--out", tmp_path / "rec", "--data", data, "--refine-steps", "30",
                 "--no-progress") == 0  # fmt: skip
    summary = json.loads((tmp_path / "rec" / "reconstruct.json").read_text())
    assert summary["images"] == metrics["recon_num_shapes"]
    assert summary["chamfer"] == pytest.approx(metrics["recon_cd"], rel=1e-5)
    # and by hand: the test shapes against their decoded posterior means
    model = load_model(snap).model
    batch = next(iter(eval_batches(data, "test", 32, 64)))
    x = batch.images[batch.valid]
    by_hand = chamfer_distance(x, model.decode(model.encode(x)[0])).mean().item()
    assert summary["chamfer"] == pytest.approx(by_hand, rel=1e-5)
    assert summary["refined_chamfer"] < summary["chamfer"] and summary["chamfer_gain"] > 0


def test_interpolation_and_encode_work_and_image_only_tools_say_why_not(setup, tmp_path, capsys):
    snap, data = setup["snapshot"], setup["data"]
    assert sivae("generate", snap, "--out", tmp_path / "gen", "--seeds", "5,6", "--no-progress") == 0
    assert sivae("interpolate", snap, "--out", tmp_path / "int", "--seeds", "5,6", "--steps", "4",
                 "--no-progress") == 0  # fmt: skip
    for frame, seed in ((0, 5), (3, 6)):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "int" / "frames" / f"frame{frame:04d}.png")),
                              np.asarray(Image.open(tmp_path / "gen" / f"seed{seed:06d}_psi1.00.png")))
    assert sivae("encode", snap, "--out", tmp_path / "latents.npz", "--data", data, "--split", "test",
                 "--no-progress") == 0  # fmt: skip
    assert np.load(tmp_path / "latents.npz")["mu"].shape[1] == 8
    assert sivae("mix", snap, "--out", tmp_path / "mix", "--rows", "0", "--cols", "1") == 1
    assert "needs a style-based decoder" in capsys.readouterr().err
    (tmp_path / "a.png").write_bytes(b"")
    assert sivae("reconstruct", snap, "--out", tmp_path / "x", tmp_path / "a.png") == 1
    assert "give --data" in capsys.readouterr().err


def test_the_nightly_job_scores_a_point_cloud_run_with_its_metrics(setup, tmp_path):
    runs = setup["runs"]
    assert sivae("eval", "nightly", runs, "--report", tmp_path / "report", "--no-progress") == 0
    lines = [json.loads(line) for line in (runs / "points" / "eval" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["status"] == "ok"
    result = lines[0]["metrics"]
    for key in ("jsd", "mmd_cd", "cov_cd", "1nna_cd", "recon_cd"):
        assert key in result, key
    assert "jsd" in (tmp_path / "report" / "report.md").read_text().lower()
