"""The trainer: exact resume, crash safety, multi-process sync, progressive levels, precision,
non-finite updates, config refusal, and what TensorBoard's own reader sees."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_helpers import build_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sivae.core import checkpoint
from sivae.core.distributed import free_port
from sivae.data_pipeline.manifest import load_manifest
from sivae.eval.loading import load_model
from sivae.launch.cli import main as sivae
from sivae.train import trainer
from sivae.train.exit_codes import EXIT_DIVERGED

TINY = Path(__file__).parent / "tiny_run.yaml"
DRIVER = Path(__file__).parent / "train_driver.py"
REPO = Path(__file__).parents[1]


def run_training(run_dir: Path, data: Path, *overrides: str) -> int:
    return sivae(["train", str(TINY), "--run-dir", str(run_dir), "--device", "cpu", f"data.path={data}", *overrides])


def final_state(run_dir: Path) -> dict:
    found = checkpoint.latest(run_dir / "checkpoints")
    assert found is not None, f"no checkpoint in {run_dir}"
    return found[1]


def assert_identical(a, b, where="state"):
    """Bit-identical nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, digits16) -> Path:
    """24 iterations straight through: 4px, then 8px fading in (iterations 8-16) and stable."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    assert run_training(run_dir, digits16, "train.total_kimg=0.384") == 0
    return run_dir


def test_stopped_and_resumed_run_is_bit_identical(tmp_path, digits16, straight):
    run_dir = tmp_path / "resumed"
    assert run_training(run_dir, digits16, "train.total_kimg=0.192") == 0  # stops mid fade-in
    assert final_state(run_dir)["progress"]["images"] == 192
    assert run_training(run_dir, digits16, "train.total_kimg=0.384") == 0
    a, b = final_state(straight), final_state(run_dir)
    assert a["progress"]["images"] == b["progress"]["images"] == 384
    for key in ("model", "ema", "optimizers", "scalers"):
        assert_identical(a[key], b[key], key)


def test_process_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path, digits16, straight):
    run_dir = tmp_path / "killed"
    env = {**os.environ, "SIVAE_TEST_KILL_IN_CHECKPOINT": "2", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = ["train", str(TINY), "--run-dir", str(run_dir), "--device", "cpu", f"data.path={digits16}",
            "train.total_kimg=0.384"]
    proc = subprocess.run([sys.executable, str(DRIVER), *args], env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert "ckpt-000000000128.pt" in leftovers
    assert any(name.endswith(".tmp") for name in leftovers), "the half-written file stays under a temporary name"
    assert "ckpt-000000000256.pt" not in leftovers
    assert run_training(run_dir, digits16, "train.total_kimg=0.384") == 0
    # resumed from kimg 0.128 and, being exact, ended where the uninterrupted run ended
    assert_identical(final_state(straight)["model"], final_state(run_dir)["model"], "model")


def test_two_processes_under_accelerate_stay_in_sync_and_see_different_data(tmp_path, digits16):
    record = tmp_path / "record"
    record.mkdir()
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "SIVAE_TEST_RECORD": str(record),
           "PYTHONPATH": str(REPO)}  # the driver script would otherwise import an installed copy of the project
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    # global batch 16 = 2 processes x micro-batches of 4 x 2 accumulation steps
    args = ["train", str(TINY), "--run-dir", str(tmp_path / "ddp"), f"data.path={digits16}",
            "train.total_kimg=0.256", "train.per_device_batch=4"]
    proc = subprocess.run([*launch, str(DRIVER), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(record / f"rank{r}.pt") for r in (0, 1))
    assert rank0["params"].keys() == rank1["params"].keys()
    for name in rank0["params"]:
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
    assert len(rank0["batches"]) == len(rank1["batches"]) == 32  # 16 iterations x 2 micro-batches
    assert not set(rank0["batches"]) & set(rank1["batches"]), "the ranks drew the same batches"
    assert final_state(tmp_path / "ddp")["world_size"] == 2


def test_level_switch_with_fade_in_and_tensorboard_contents(straight):
    values = scalars(straight)
    assert sorted(set(values["progress/resolution"])) == [4.0, 8.0]
    blends = values["progress/blend"]
    assert any(0.0 < b < 1.0 for b in blends), "a fade-in was logged"
    assert blends[-1] == 1.0
    losses = ["rec", "kl_real", "kl_rec", "kl_fake", "exp_elbo_rec", "exp_elbo_fake", "diff_kl", "loss_encoder",
              "loss_decoder", "loss_vae"]
    others = ["progress/lod", "progress/lr", "speed/images_per_second", "resources/memory_gib",
              "data/skipped_samples", "skipped_updates/encoder"]
    expected = [f"loss/{k}" for k in losses] + others
    for tag in expected:
        assert tag in values, tag
    assert all(math.isfinite(v) for tag in values for v in values[tag])
    events = EventAccumulator(str(straight / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"samples", "reconstructions"} <= set(events.Tags()["images"])
    image = events.Images("samples")[-1]
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and image.width > 0
    assert sorted(p.name for p in (straight / "snapshots").iterdir())[-2:] == [
        "snapshot-000000000384.pt", "snapshot-000000000384.ready"]
    # the run ends where the 16px level starts: the last snapshot is the 8px level it trained, not 16px at blend 0
    final = load_model(straight / "snapshots" / "snapshot-000000000384.pt")
    assert (final.resolution, final.blend, final.images) == (8, 1.0, 384)
    assert list((straight / "samples").glob("samples-*.png")) and list((straight / "samples").glob("reconstr*.png"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_at_16px_without_non_finite_losses(tmp_path, digits16, precision):
    run_dir = tmp_path / precision
    schedule = "train.schedule=[{resolution: 16, stable_kimg: 0.192, batch: 16, lr: 0.002}]"
    assert run_training(run_dir, digits16, schedule, f"train.precision={precision}", "train.vae_warmup_kimg=0.032") == 0
    state = final_state(run_dir)
    progress = state["progress"]
    assert progress["images"] == 192
    if precision == "bf16":
        assert sum(progress["skipped_updates"].values()) == 0
    else:
        # fp16: the only skips are the gradient scaler finding its scale (each overflow halves it;
        # no growth happens within 2000 steps), never a non-finite loss
        for net in ("encoder", "decoder"):
            assert state["scalers"][net]["scale"] == 65536.0 / 2 ** progress["skipped_updates"][net]
        assert sum(progress["skipped_updates"].values()) <= 8
    values = scalars(run_dir)
    assert values["loss/rec"] and all(math.isfinite(v) for v in values["loss/rec"] + values["loss/kl_fake"])


def poison(monkeypatch, iterations):
    """Make the training batches of the given (0-based) iterations NaN."""
    real = trainer.Trainer.next_micro_batches

    def next_micro_batches(self, pos):
        micro = real(self, pos)
        if self.progress.iteration in iterations:
            micro = [torch.full_like(x, float("nan")) for x in micro]
        return micro

    monkeypatch.setattr(trainer.Trainer, "next_micro_batches", next_micro_batches)


def test_injected_nan_is_skipped_and_counted(tmp_path, digits16, monkeypatch):
    poison(monkeypatch, {10})
    run_dir = tmp_path / "nan"
    assert run_training(run_dir, digits16, "train.total_kimg=0.256") == 0
    progress = final_state(run_dir)["progress"]
    assert progress["skipped_updates"] == {"vae": 0, "encoder": 1, "decoder": 1}
    assert scalars(run_dir)["skipped_updates/encoder"][-1] == 1


def test_repeated_divergence_rolls_back_then_stops(tmp_path, digits16, monkeypatch, capsys):
    poison(monkeypatch, set(range(10, 1000)))  # every iteration after the 0.128-kimg checkpoint
    run_dir = tmp_path / "diverge"
    limits = ("train.max_consecutive_skips=3", "train.max_rollbacks=1")
    code = run_training(run_dir, digits16, "train.total_kimg=0.384", *limits)
    err = capsys.readouterr()
    assert code == EXIT_DIVERGED
    assert "rolling back to the last checkpoint" in err.err
    assert "the run diverges" in err.out


def test_bad_configs_are_refused_before_work(tmp_path, digits16, capsys):
    run_dir = tmp_path / "bad"
    assert run_training(run_dir, digits16, "train.total_kimgg=1") == 2
    assert "train.total_kimgg" in capsys.readouterr().err
    assert run_training(run_dir, digits16, "train.per_device_batch=3") == 2  # 16 is not a multiple of 3
    assert "per_device_batch" in capsys.readouterr().err
    assert run_training(run_dir, tmp_path / "no-such-data") == 2
    assert "no-such-data" in capsys.readouterr().err
    assert not run_dir.exists(), "nothing was written"
    # a run directory refuses a conflicting config, showing the difference
    assert run_training(run_dir, digits16, "train.total_kimg=0.032") == 0
    assert run_training(run_dir, digits16, "train.total_kimg=0.064", "objective.beta_kl=0.5") == 2
    assert "objective.beta_kl: 0.2 -> 0.5" in capsys.readouterr().err


def test_a_data_set_without_a_test_split_trains_and_shows_train_reconstructions(tmp_path):
    """Built with --test-fraction 0 (all of FFHQ for FID), a run trains through its sample grids and
    checkpoints; the reconstruction grid shows train images and says so in its tag."""
    data = build_digits(tmp_path / "digits-all-train", 16, "--test-fraction", "0")
    assert not load_manifest(data).split_sizes.get("test")
    run_dir = tmp_path / "run"
    assert run_training(run_dir, data, "train.total_kimg=0.064", "train.sample_every_kimg=0.032") == 0
    grids = sorted(p.name for p in (run_dir / "samples").glob("*.png"))
    assert any(name.startswith("reconstructions_of_train_images-") for name in grids), grids
    assert not any(name.startswith("reconstructions-") for name in grids), grids
    assert final_state(run_dir)["progress"]["images"] == 64
