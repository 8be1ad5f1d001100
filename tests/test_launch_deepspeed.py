"""The DeepSpeed backend with two gloo processes started by DeepSpeed's launcher: the style model at 8-16px
under ZeRO 0, 1 and 2 in fp32 and bf16 stays in sync and checkpoints, resumes exactly at every stage, survives
a kill in the middle of a checkpoint, matches Accelerate's losses, and converts to the snapshot eval reads."""

import shutil

import pytest
import torch
from launch_helpers import (
    IMAGES,
    ITERATIONS,
    deepspeed_args,
    final_state,
    launch,
    max_difference,
    ranks,
    train_args,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sivae.core import deepspeed_checkpoint as ds_ckpt
from sivae.core.config import ConfigError, load_config
from sivae.eval.loading import LoadError, load_model
from sivae.launch.cli import main as sivae
from sivae.train.deepspeed_backend import deepspeed_config
from sivae.train.schema import DeepSpeedConfig, RunConfig

CONFIGS = [(zero, precision) for precision in ("fp32", "bf16") for zero in (0, 1, 2)]
DEEPSPEED = "train.backend=deepspeed"


def losses(run_dir, tag: str) -> list[float]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def resume_copy(run_dir, copy, digits16, zero: int, precision: str):
    """Resume a copy of the straight run from its checkpoint at the level switch, as after a crash there."""
    shutil.copytree(run_dir, copy)
    for later in ("ckpt-000000000128", "ckpt-000000000192"):
        shutil.rmtree(copy / "checkpoints" / later)
    return launch("deepspeed", deepspeed_args(copy, digits16, zero, precision))


def kill_and_resume(run_dir, digits16, zero: int, precision: str):
    """A node failure without warning: rank 0 dies half way through writing the second checkpoint (128); the
    run is started again in the same directory."""
    args = deepspeed_args(run_dir, digits16, zero, precision)
    proc = launch("deepspeed", args, kill_in_checkpoint=2)
    assert proc.returncode != 0
    checkpoints = run_dir / "checkpoints"
    assert ds_ckpt.is_complete(checkpoints / "ckpt-000000000064")
    assert (checkpoints / "ckpt-000000000128").is_dir() and not ds_ckpt.is_complete(checkpoints / "ckpt-000000000128")
    with pytest.raises(LoadError, match="not a complete checkpoint"):
        load_model(checkpoints / "ckpt-000000000128")  # eval never reads an interrupted write
    return launch("deepspeed", args)


@pytest.mark.parametrize(("zero", "precision"), CONFIGS)
def test_two_deepspeed_ranks_stay_in_sync(deepspeed_straight, zero, precision):
    run_dir, record = deepspeed_straight(zero, precision)
    rank0, rank1 = ranks(record)
    assert max_difference(rank0["params"], rank1["params"]) == 0.0, "the ranks' weights (and buffers) drifted apart"
    assert len(rank0["batches"]) == len(rank1["batches"]) == 2 * ITERATIONS  # 2 micro-batches per iteration
    assert not set(rank0["batches"]) & set(rank1["batches"]), "the ranks drew the same batches"
    names = [p.name for p in ds_ckpt.list_checkpoint_dirs(run_dir / "checkpoints")]
    assert names == ["ckpt-000000000064", "ckpt-000000000128", "ckpt-000000000192"]
    _, state = final_state(run_dir)
    assert (state["progress"]["images"], state["progress"]["iteration"]) == (IMAGES, ITERATIONS)
    assert state["world_size"] == 2 and sum(state["progress"]["skipped_updates"].values()) == 0


# Every ZeRO stage once, bf16 (fp32 master weights in the optimizer state) at the partitioned stages; ZeRO 1 gets
# there through a kill in the middle of a checkpoint write, the others from a copy of the straight run. Each
# resume is one more launch of about 15 s, so the other three configurations are covered by the sync test only.
RESUMED = [(0, "fp32"), (1, "bf16"), (2, "bf16")]


@pytest.mark.parametrize(("zero", "precision"), RESUMED)
def test_a_resumed_deepspeed_run_reproduces_the_straight_run(tmp_path, digits16, deepspeed_straight, zero, precision):
    run_dir, _ = deepspeed_straight(zero, precision)
    straight_weights, straight_state = final_state(run_dir)
    # Resume from the checkpoint at the level switch: the 16px level's new parameters, the optimizer reset
    # and the fade-in all happen again after the restore.
    resumed = tmp_path / "resumed"
    if zero == 1:
        proc = kill_and_resume(resumed, digits16, zero, precision)
    else:
        proc = resume_copy(run_dir, resumed, digits16, zero, precision)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed at kimg 0.064 from ckpt-000000000064" in proc.stderr
    weights, state = final_state(resumed)
    assert state["progress"] == straight_state["progress"]
    # Tolerance: none. Same process count, same data order, deterministic CPU kernels: the restored optimizer
    # state, RNG streams and data position reproduce the straight run bit for bit.
    assert max_difference(weights, straight_weights) == 0.0
    assert max_difference(state["ema"], straight_state["ema"]) == 0.0


def test_accelerate_and_deepspeed_give_the_same_first_losses(tmp_path, digits16, deepspeed_straight):
    """Same seed, fp32, the same layout (2 ranks x 4 x 2 accumulation): the 4 VAE warm-up iterations and the first
    2 adversarial ones log the same losses under Accelerate (DDP) and DeepSpeed at every ZeRO stage."""
    run_dir = tmp_path / "accelerate"
    proc = launch("accelerate", train_args(run_dir, digits16, "train.backend=accelerate"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    reference = {tag: losses(run_dir, tag)[:6] for tag in ("loss/rec", "loss/kl_real")}
    reference["loss/loss_vae"] = losses(run_dir, "loss/loss_vae")[:4]
    reference["loss/loss_encoder"] = losses(run_dir, "loss/loss_encoder")[:2]
    assert len(reference["loss/rec"]) == 6 and len(reference["loss/loss_encoder"]) == 2
    for zero in (0, 1, 2):
        ds_run, _ = deepspeed_straight(zero, "fp32")
        for tag, values in reference.items():
            # ZeRO 2 reduces each micro-batch's gradients separately (Accelerate sums them first): rounding-level
            # differences, 1e-6 relative after 6 iterations here; the tolerance leaves room for two decades more
            assert losses(ds_run, tag)[: len(values)] == pytest.approx(values, rel=1e-4), (zero, tag)


def test_a_deepspeed_checkpoint_converts_to_the_snapshot_the_trainer_writes(tmp_path, deepspeed_straight, capsys):
    run_dir, _ = deepspeed_straight(0, "fp32")
    checkpoint_dir = run_dir / "checkpoints" / "ckpt-000000000192"
    assert sivae(["launch", "convert", str(checkpoint_dir), "--out", str(tmp_path)]) == 0
    assert "deepspeed, 0.192 kimg, 16px" in capsys.readouterr().out
    converted = load_model(tmp_path / "snapshot-000000000192.pt")
    written = load_model(run_dir / "snapshots" / "snapshot-000000000192.pt")  # the trainer's own, from its EMA
    direct = load_model(checkpoint_dir)
    assert (direct.format, direct.images, direct.resolution, direct.blend) == ("deepspeed", IMAGES, 16, 1.0)
    for loaded in (converted, direct):
        assert (loaded.lod, loaded.blend, loaded.images) == (written.lod, written.blend, written.images)
        assert max_difference(loaded.model.state_dict(), written.model.state_dict()) == 0.0


def test_deepspeed_config_follows_the_run_config():
    extra = {"zero_optimization": {"overlap_comm": True}, "wall_clock_breakdown": True}
    settings = DeepSpeedConfig(zero_stage=2, extra=extra)
    config = deepspeed_config(settings, precision="bf16", grad_clip=1.0, micro_batch=4, accumulation=8, world_size=32)
    assert config["train_batch_size"] == 4 * 8 * 32 == 1024
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (4, 8)
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert config["gradient_clipping"] == 1.0 and config["wall_clock_breakdown"] is True
    assert "bf16" not in config and "fp16" not in config  # bf16 is the backend's autocast over fp32 weights
    fp16 = deepspeed_config(DeepSpeedConfig(), precision="fp16", grad_clip=None, micro_batch=1, accumulation=1,
                            world_size=1)  # fmt: skip
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["initial_scale_power"] == 16  # GradScaler's 65536
    assert fp16["gradient_clipping"] == 0.0


@pytest.mark.parametrize(("override", "key", "message"), [
    ("train.deepspeed.zero_stage=3", "train.deepspeed.zero_stage", "ZeRO stage 3 is not supported"),
    ("train.deepspeed.zero_stage=5", "train.deepspeed.zero_stage", "must be 0, 1 or 2"),
    ("train.deepspeed.extra={zero_optimization: {stage: 3}}", "train.deepspeed.extra.zero_optimization.stage",
     "set by the backend"),
    ("train.deepspeed.extra={train_batch_size: 64}", "train.deepspeed.extra.train_batch_size", "set by the backend"),
    ("train.backend=horovod", "train.backend", "must be one of"),
])  # fmt: skip
def test_bad_deepspeed_settings_are_refused_naming_the_key(override, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(RunConfig, None, [override])
    assert info.value.key == key


def test_fp16_under_deepspeed_on_cpu_is_refused_before_training(tmp_path, digits16, deepspeed_ops, capsys):
    run_dir = tmp_path / "fp16"
    code = sivae(["train", *train_args(run_dir, digits16, DEEPSPEED, "train.precision=fp16")])
    assert code == 2
    assert "train.precision: DeepSpeed trains in fp16 on CUDA only" in capsys.readouterr().err
    assert not torch.distributed.is_initialized() and not run_dir.exists(), "refused before any work"
