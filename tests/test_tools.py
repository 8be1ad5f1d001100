"""The generation and inversion tools end to end (`sivae generate | reconstruct | interpolate | mix | encode`),
against expectations computed here from the model's own networks or from `sivae eval run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import TINY_MODEL, build_image_set, disk_images, tiny_run_config, tiny_snapshot
from PIL import Image
from process_helpers import rendezvous_env, run_together

from sivae.core import checkpoint
from sivae.core.config import to_dict
from sivae.core.images import to_uint8
from sivae.core.snapshot import write_snapshot
from sivae.data_pipeline.loader import eval_batches, to_unit_range
from sivae.eval.loading import load_model
from sivae.launch.cli import main as sivae_main
from sivae.models import ModelConfig, build_model
from sivae.tools.latents import mix_styles, mixing_levels, parse_seeds, path_through, slerp

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Disk images at 16px, and a snapshot of a tiny style model with a non-zero tracked average w."""
    root = tmp_path_factory.mktemp("tools")
    data = build_image_set(root / "disks", disk_images(48, 16, seed=0), test_fraction=0.25)
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    with torch.no_grad():
        model.decoder.w_avg.normal_()
    snapshot = write_snapshot(root / "snapshots", images=5000, config=to_dict(tiny_run_config(data)), lod=2,
                              blend=1.0, resolution=16, networks={n: model.network(n).state_dict()
                                                                  for n in model.networks})  # fmt: skip
    return {"root": root, "data": data, "snapshot": snapshot}


def sivae(*args) -> int:
    return sivae_main([str(a) for a in args])


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def loaded_model(path: Path):
    return load_model(path).model


def seed_latent(seed: int, dim: int) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def as_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


# ---- generate --------------------------------------------------------------------------------------------


def test_a_seed_gives_the_same_image_twice_in_any_batch_and_on_two_processes(setup, tmp_path):
    snap = setup["snapshot"]
    assert sivae("generate", snap, "--out", tmp_path / "a", "--seeds", "0-6", "--batch-size", "4", "--no-progress") == 0
    assert sivae("generate", snap, "--out", tmp_path / "b", "--seeds", "0-6", "--batch-size", "4", "--no-progress") == 0
    assert sivae("generate", snap, "--out", tmp_path / "alone", "--seeds", "5", "--batch-size", "1",
                 "--no-progress") == 0  # fmt: skip
    env = rendezvous_env(2)
    command = [sys.executable, "-m", "sivae", "generate", str(snap), "--out", str(tmp_path / "two"), "--seeds", "0-6",
               "--batch-size", "3", "--device", "cpu", "--no-progress"]
    run_together(command, [{**env, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(2)], ROOT)
    names = [f"seed{s:06d}_psi1.00.png" for s in range(7)]
    listed = json.loads((tmp_path / "two" / "samples.json").read_text())["samples"]
    assert [s["file"] for s in listed] == names and [s["seed"] for s in listed] == list(range(7))
    for name in names:
        first = pixels(tmp_path / "a" / name)
        assert np.array_equal(first, pixels(tmp_path / "b" / name))
        assert np.array_equal(first, pixels(tmp_path / "two" / name)), name
    assert np.array_equal(pixels(tmp_path / "a" / names[5]), pixels(tmp_path / "alone" / names[5]))
    assert not np.array_equal(pixels(tmp_path / "a" / names[0]), pixels(tmp_path / "a" / names[1]))
    # and it is the decoder's image of z drawn from that seed, computed here from the networks
    model = loaded_model(snap)
    z = seed_latent(3, model.latent_dim)[None]
    expected = as_uint8_hwc(model.decoder(z, 2, 1.0, False, noise="const"))[0]
    assert np.abs(expected.astype(int) - pixels(tmp_path / "a" / names[3]).astype(int)).max() <= 1


def test_psi_zero_decodes_every_seed_to_the_average_w(setup, tmp_path):
    snap = setup["snapshot"]
    assert sivae("generate", snap, "--out", tmp_path, "--seeds", "0-3", "--truncation", "0", "--truncation-cutoff",
                 "6", "--grid", "2x2", "--no-progress") == 0  # fmt: skip
    images = [pixels(tmp_path / f"seed{s:06d}_psi0.00.png") for s in range(4)]
    assert all(np.array_equal(images[0], other) for other in images[1:])
    decoder = loaded_model(snap).decoder
    w_avg = decoder.w_avg.view(1, 1, -1).expand(1, 6, -1)  # 16px: 6 style slots
    expected = as_uint8_hwc(decoder.synthesize(w_avg, 2, noise="const"))[0]
    assert np.abs(expected.astype(int) - images[0].astype(int)).max() <= 1
    assert (tmp_path / "grid.png").is_file()
    assert json.loads((tmp_path / "samples.json").read_text())["truncation_psi"] == 0.0


# ---- interpolate -----------------------------------------------------------------------------------------


def test_slerp_and_paths_against_hand_computed_points():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    mid = slerp(a, b, torch.tensor([0.5]))[0, 0]
    # on the quarter circle between the axes, norm half way between 1 and 2
    assert torch.allclose(mid, 1.5 * torch.tensor([1.0, 1.0]) / 2**0.5, atol=1e-6)
    points = torch.randn(3, 4)
    frames = path_through(points, 5, "z")
    assert frames.shape == (9, 4)
    assert torch.equal(frames[0], points[0]) and torch.equal(frames[4], points[1]) and torch.equal(frames[8], points[2])
    linear = path_through(points, 3, "w")
    assert torch.allclose(linear[1], (points[0] + points[1]) / 2)


def test_interpolation_endpoints_are_the_decoded_seeds_and_the_images_reconstructions(setup, tmp_path):
    snap = setup["snapshot"]
    assert sivae("generate", snap, "--out", tmp_path / "gen", "--seeds", "1-3", "--no-progress") == 0
    for space in ("z", "w"):
        out = tmp_path / f"seeds-{space}"
        assert sivae("interpolate", snap, "--out", out, "--seeds", "1,2,3", "--steps", "5", "--space", space,
                     "--html", "--no-progress") == 0  # fmt: skip
        summary = json.loads((out / "interpolate.json").read_text())
        assert summary["frames"] == 9 and summary["endpoint_frames"] == [0, 4, 8]
        for frame, seed in zip((0, 4, 8), (1, 2, 3)):
            assert np.array_equal(pixels(out / "frames" / f"frame{frame:04d}.png"),
                                  pixels(tmp_path / "gen" / f"seed{seed:06d}_psi1.00.png")), (space, frame)
        assert not np.array_equal(pixels(out / "frames" / "frame0002.png"), pixels(out / "frames" / "frame0000.png"))
        assert Image.open(out / "interpolation.gif").n_frames == 9
    # real images: encoded to their posterior mean; the endpoints are those means decoded
    files = []
    for i, image in enumerate(disk_images(2, 16, seed=7)):
        files.append(tmp_path / f"input{i}.png")
        Image.fromarray(image).save(files[-1])
    out = tmp_path / "images"
    assert sivae("interpolate", snap, *files, "--out", out, "--steps", "4", "--format", "mp4", "--no-progress") == 0
    model = loaded_model(snap)
    x = to_unit_range(torch.from_numpy(disk_images(2, 16, seed=7)).permute(0, 3, 1, 2).contiguous())
    mu, _ = model.encode(x, 2, 1.0)
    expected = as_uint8_hwc(model.decoder(mu, 2, 1.0, False, noise="const"))
    assert np.abs(pixels(out / "frames" / "frame0000.png").astype(int) - expected[0]).max() <= 1
    assert np.abs(pixels(out / "frames" / "frame0003.png").astype(int) - expected[1]).max() <= 1
    import av

    with av.open(str(out / "interpolation.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 4


# ---- mix ---------------------------------------------------------------------------------------------------


def test_mixing_level_names_follow_stylegan_by_resolution():
    assert mixing_levels("coarse", 8) == [0, 1]  # 1024px: 4-8px
    assert mixing_levels("middle", 8) == [2, 3]  # 16-32px
    assert mixing_levels("fine", 8) == [4, 5, 6, 7, 8]  # 64-1024px
    assert (mixing_levels("coarse", 3), mixing_levels("middle", 3), mixing_levels("fine", 3)) == ([0, 1], [2], [3])
    assert mixing_levels("8-16", 4) == [1, 2]
    with pytest.raises(ValueError, match="no middle layers"):
        mixing_levels("middle", 1)
    with pytest.raises(ValueError, match="powers of two"):
        mixing_levels("8-12", 4)


def test_the_mixing_grid_takes_the_chosen_layers_from_the_row_sources(setup, tmp_path):
    snap = setup["snapshot"]
    assert sivae("mix", snap, "--out", tmp_path, "--rows", "10,11", "--cols", "20-22", "--layers", "coarse",
                 "--html") == 0  # fmt: skip
    decoder = loaded_model(snap).decoder
    w = {s: decoder.mapping(seed_latent(s, 8)[None])[0] for s in (10, 11, 20, 21, 22)}
    for row in (10, 11):
        for column in (20, 21, 22):
            # 16px: coarse is the 4px level, its two slots from the row source; the other four from the column
            styles = torch.stack([w[row], w[row], w[column], w[column], w[column], w[column]])[None]
            expected = as_uint8_hwc(decoder.synthesize(styles, 2, noise="const"))[0]
            cell = pixels(tmp_path / "cells" / f"row{row}_col{column}.png")
            assert np.abs(expected.astype(int) - cell.astype(int)).max() <= 1, (row, column)
    grid = pixels(tmp_path / "mix.png")
    assert grid.shape[0] < grid.shape[1]  # 3 rows (column sources on top) by 4 columns
    a, b = torch.randn(2, 6, 8), torch.randn(3, 6, 8)
    mixed = mix_styles(a, b, [1])
    assert torch.equal(mixed[1, 2, 2:4], a[1, 2:4]) and torch.equal(mixed[1, 2, :2], b[2, :2])


# ---- reconstruct -------------------------------------------------------------------------------------------


def test_reconstruct_scores_what_eval_run_scores_and_refinement_raises_psnr(setup, tmp_path):
    snap, data = setup["snapshot"], setup["data"]
    proc = subprocess.run([sys.executable, "-m", "sivae", "eval", "run", str(snap), "--out", str(tmp_path / "eval"),
                           "--metrics", "recon", "--features", "standin", "--cache", str(tmp_path / "cache"),
                           "--batch-size", "5", "--no-progress"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    out = tmp_path / "rec"
    assert sivae("reconstruct", snap, "--out", out, "--data", data, "--batch-size", "5", "--refine-steps", "50",
                 "--html", "--no-progress") == 0  # fmt: skip
    summary = json.loads((out / "reconstruct.json").read_text())
    assert summary["images"] == metrics["recon_num_images"] == 12
    assert summary["psnr"] == pytest.approx(metrics["psnr"], abs=1e-9)
    assert summary["ssim"] == pytest.approx(metrics["ssim"], abs=1e-9)
    assert summary["refined_psnr"] > summary["psnr"] + 0.05
    assert all(r["refined_psnr"] >= r["psnr"] for r in summary["per_image"])
    pair = pixels(out / summary["per_image"][0]["file"])
    assert pair.shape == (16, 3 * 16 + 2 * 2, 3)  # input | encoder | refined
    assert sivae("reconstruct", snap, "--out", tmp_path / "w", "--data", data, "--num", "4", "--refine-steps", "20",
                 "--refine-space", "w", "--no-progress") == 0  # fmt: skip
    in_w = json.loads((tmp_path / "w" / "reconstruct.json").read_text())
    assert in_w["images"] == 4 and in_w["refined_psnr"] > in_w["psnr"]


def test_image_files_are_fitted_like_the_data_build_and_bad_ones_are_named(setup, tmp_path, capsys):
    snap = setup["snapshot"]
    big = np.kron(disk_images(1, 16, seed=3)[0], np.ones((4, 4, 1), np.uint8))  # 64px, each pixel 4x4
    Image.fromarray(big).save(tmp_path / "big.png")
    assert sivae("reconstruct", snap, "--out", tmp_path / "out", tmp_path / "big.png", "--no-progress") == 0
    assert "resized to the model's 16px" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "reconstruct.json").read_text())
    assert summary["images"] == 1 and "big.png" in summary["notes"][0]
    # box-resizing a 4x4-repeated image gives the 16px original back
    assert np.array_equal(pixels(tmp_path / "out" / "pairs" / "big.png")[:, :16], disk_images(1, 16, seed=3)[0])
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "notes.png").write_text("not an image")
    for name, message in (("wide.png", "not square"), ("small.png", "smaller than"), ("notes.png", "not an image"),
                          ("missing.png", "no such file")):
        assert sivae("reconstruct", snap, "--out", tmp_path / "bad", tmp_path / name) == 1
        err = capsys.readouterr().err
        assert name in err and message in err, err
    assert sivae("reconstruct", snap, "--out", tmp_path / "crop", tmp_path / "wide.png", "--non-square", "crop",
                 "--no-progress") == 0  # fmt: skip


def test_wrong_paths_and_levels_are_clear_errors(setup, tmp_path, capsys):
    snap = setup["snapshot"]
    for args, message in (((tmp_path / "nope.pt",), "no such file"),
                          ((snap, "--resolution", "32"), "32px was never trained"),
                          ((snap, "--resolution", "12"), "not a level")):
        assert sivae("generate", *args, "--out", tmp_path / "x") == 1
        assert message in capsys.readouterr().err
    assert sivae("encode", snap, "--out", tmp_path / "l.npz", "--data", tmp_path / "no-data") == 1
    assert "no-data" in capsys.readouterr().err
    assert sivae("generate", snap, "--out", tmp_path / "low", "--seeds", "0", "--resolution", "8",
                 "--no-progress") == 0  # fmt: skip
    assert pixels(tmp_path / "low" / "seed000000_psi1.00.png").shape == (8, 8, 3)
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(ValueError, match="not a seed"):
        parse_seeds("3-1")


# ---- encode ----------------------------------------------------------------------------------------------


def test_encode_gives_each_samples_posterior_with_its_key(setup, tmp_path):
    snap, data = setup["snapshot"], setup["data"]
    assert sivae("encode", snap, "--out", tmp_path / "latents.npz", "--data", data, "--split", "test",
                 "--no-progress") == 0  # fmt: skip
    stored = np.load(tmp_path / "latents.npz")
    batch = next(iter(eval_batches(data, "test", 16, 64, as_uint8=True)))  # padded to 64 with invalid rows
    assert list(stored["keys"]) == [key for key, valid in zip(batch.keys, batch.valid.tolist()) if valid]
    mu, logvar = loaded_model(snap).encode(to_unit_range(batch.images[batch.valid]), 2, 1.0)
    assert np.allclose(stored["mu"], mu.numpy(), atol=1e-5) and np.allclose(stored["logvar"], logvar.numpy(), atol=1e-5)


# ---- other saved forms and architectures -------------------------------------------------------------------


def test_a_checkpoint_generates_what_its_ema_weights_give(setup, tmp_path):
    cfg = tiny_run_config(setup["data"])
    torch.manual_seed(1)
    model = build_model(TINY_MODEL)
    path = checkpoint.save(tmp_path / "ckpt-000000006000.pt", {
        "model": build_model(TINY_MODEL).state_dict(), "ema": model.state_dict(), "config": to_dict(cfg),
        "progress": {"images": 6000}})  # fmt: skip
    assert sivae("generate", path, "--out", tmp_path / "out", "--seeds", "4", "--no-progress") == 0
    expected = as_uint8_hwc(model.eval().decoder(seed_latent(4, 8)[None], 2, 1.0, False, noise="const"))[0]
    assert np.abs(pixels(tmp_path / "out" / "seed000004_psi1.00.png").astype(int) - expected).max() <= 1


def test_the_standard_architecture_gets_the_tools_that_make_sense_for_it(setup, tmp_path, capsys):
    standard = ModelConfig(arch="standard", max_resolution=16, latent_dim=8, channels=[8, 16])
    snap = tiny_snapshot(tmp_path / "snapshots", setup["data"], model=standard)
    data = setup["data"]
    for command in (("generate", "--seeds", "0-3"), ("reconstruct", "--data", data, "--refine-steps", "3"),
                    ("interpolate", "--seeds", "0,1", "--steps", "3")):
        assert sivae(command[0], snap, "--out", tmp_path / command[0], *command[1:], "--no-progress") == 0, command
    assert sivae("encode", snap, "--out", tmp_path / "l.npz", "--data", data, "--no-progress") == 0
    for command in (("mix", "--rows", "0", "--cols", "1"), ("generate", "--truncation", "0.5"),
                    ("interpolate", "--seeds", "0,1", "--space", "w"),
                    ("reconstruct", "--data", data, "--refine-steps", "2", "--refine-space", "w")):
        assert sivae(command[0], snap, "--out", tmp_path / "no", *command[1:], "--no-progress") == 1, command
        assert "needs a style-based decoder" in capsys.readouterr().err


# ---- html ----------------------------------------------------------------------------------------------------


class _Sources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []
        self.captions = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("img", "video"):
            self.sources.append(dict(attrs)["src"])
        self.captions += tag == "figcaption"


def test_every_index_links_images_that_exist(setup, tmp_path):
    snap, data = setup["snapshot"], setup["data"]
    runs = {"generate": ("--seeds", "0-3", "--grid", "2x2"), "reconstruct": ("--data", data, "--num", "3"),
            "interpolate": ("--seeds", "0,1", "--steps", "3", "--format", "mp4"),
            "mix": ("--rows", "0,1", "--cols", "2")}
    for command, options in runs.items():
        out = tmp_path / command
        assert sivae(command, snap, "--out", out, *options, "--html", "--no-progress") == 0
        parser = _Sources()
        parser.feed((out / "index.html").read_text())
        assert parser.sources and parser.captions == len(parser.sources), command
        for source in parser.sources:
            assert (out / source).is_file(), (command, source)


def test_the_inversion_benchmark_runs_at_a_tiny_size(setup):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inversion.py"), str(setup["snapshot"]),
                           "--data", str(setup["data"]), "--images", "4", "--steps", "0", "3", "--threads", "1"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith(("| encoder", "| refined"))]
    assert [r[1].strip() for r in rows] == ["encoder alone", "refined, 3 steps"]
    assert float(rows[1][4]) >= float(rows[0][4])  # the refinement keeps each image's best iterate


def test_written_files_follow_the_umask_not_mkstemps_private_mode(tmp_path):
    from sivae.core.fileio import atomic_write_text

    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
