"""A model of three networks trained by a three-phase objective (tests/three_nets.py), registered like the
built-in ones: the trainer builds it from a run config and trains it through every backend (one process,
Accelerate and DeepSpeed with two gloo processes). Each run stopped at a checkpoint and resumed ends bit for bit
where the straight run of the same backend ends; snapshots and eval hold every network."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from launch_helpers import final_state
from process_helpers import rendezvous_env, run_together
from three_nets import ARCH, NETWORKS, OBJECTIVE, ThreeNets

from sivae.core import checkpoint
from sivae.core import deepspeed_checkpoint as ds_ckpt
from sivae.core.snapshot import read_snapshot
from sivae.eval.loading import load_model
from sivae.launch.cli import main as sivae
from sivae.models.config import ModelConfig
from sivae.train.backend import LocalBackend
from sivae.train.schema import ObjectiveConfig
from sivae.train.steps import training_step

REPO = Path(__file__).parents[1]
SCRIPT = Path(__file__).with_name("three_nets.py")
# 4px digits, 8 iterations of a global batch of 16 (2 processes: micro-batches of 4 x 2 accumulation steps),
# checkpoints at 64 images (the resume point) and 128 (the end)
CONFIG = {
    "model": {"arch": ARCH, "max_resolution": 4, "latent_dim": 8, "hidden": 32},
    "data": {"workers": 0, "shuffle_buffer": 64},
    "objective": {"name": OBJECTIVE, "beta_kl": 0.2},
    "train": {
        "seed": 5,
        "schedule": [{"resolution": 4, "stable_kimg": 0.128, "batch": 16, "lr": 0.002}],
        "ema_halflife_kimg": 0.1,
        "checkpoint_every_kimg": 0.064,
        "snapshot_every_kimg": 0.128,
        "sample_every_kimg": 0.128,
        "log_every_kimg": 0.032,
    },
}
IMAGES = 128
RESUME_FROM = 64


@pytest.fixture(scope="module")
def config(tmp_path_factory, digits16) -> Path:
    path = tmp_path_factory.mktemp("three-nets") / "run.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "data": {**CONFIG["data"], "path": str(digits16)}}))
    return path


def train(config: Path, run_dir: Path, backend: str) -> None:
    """The run of `backend`: in this process for "single", else two ranks of the test driver."""
    args = ["train", str(config), "--run-dir", str(run_dir), "--device", "cpu", f"train.backend={backend}"]
    if backend == "single":
        assert sivae(args) == 0
        return
    env = {**rendezvous_env(2), "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(SCRIPT), *args, "train.per_device_batch=4"]
    run_together(command, [{**env, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(2)], REPO, timeout=240)


def newest_checkpoint(run_dir: Path) -> Path:
    directory = run_dir / "checkpoints"
    return ds_ckpt.latest_complete(directory) or checkpoint.latest(directory)[0]


def resume_copy(config: Path, run_dir: Path, copy: Path, backend: str) -> None:
    """Resume a copy of a finished run from its checkpoint at RESUME_FROM images, as after a crash there."""
    shutil.copytree(run_dir, copy)
    newest = newest_checkpoint(copy)
    shutil.rmtree(newest) if newest.is_dir() else newest.unlink()
    assert f"{RESUME_FROM:012d}" in newest_checkpoint(copy).name
    train(config, copy, backend)


def assert_equal_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key}"


@pytest.mark.parametrize("backend", ["single", "accelerate", "deepspeed"])
def test_three_networks_train_and_resume_bit_identically(tmp_path, config, backend, request):
    if backend == "deepspeed":
        request.getfixturevalue("deepspeed_ops")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config, straight, backend)
    resume_copy(config, straight, resumed, backend)

    weights, state = final_state(straight)
    resumed_weights, resumed_state = final_state(resumed)
    assert state["progress"]["images"] == IMAGES and state["progress"] == resumed_state["progress"]
    assert state["world_size"] == (1 if backend == "single" else 2)
    assert set(state["progress"]["skipped_updates"]) == set(NETWORKS)  # one counter per phase
    assert {key.split(".")[0] for key in weights} == set(NETWORKS)
    assert_equal_tensors(weights, resumed_weights, "weights")
    assert_equal_tensors(state["ema"], resumed_state["ema"], "ema")
    if backend != "deepspeed":
        assert set(state["optimizers"]) == set(NETWORKS) and set(state["scalers"]) == set(NETWORKS)
        for name in NETWORKS:
            moments, resumed_moments = state["optimizers"][name]["state"], resumed_state["optimizers"][name]["state"]
            assert moments.keys() == resumed_moments.keys()
            for index in moments:
                assert_equal_tensors(moments[index], resumed_moments[index], f"optimizer {name}, parameter {index}")
    else:
        assert ds_ckpt.networks_of(ds_ckpt.read_marker(newest_checkpoint(straight))) == NETWORKS

    # the snapshot holds every network's EMA weights, and eval loads the model with all of them
    snapshot = straight / "snapshots" / f"snapshot-{IMAGES:012d}.pt"
    assert set(read_snapshot(snapshot)["networks"]) == set(NETWORKS)
    loaded = load_model(snapshot)
    assert isinstance(loaded.model, ThreeNets)
    assert_equal_tensors(loaded.model.state_dict(), state["ema"], "snapshot")
    from_checkpoint = load_model(newest_checkpoint(straight))
    assert_equal_tensors(from_checkpoint.model.state_dict(), state["ema"], "checkpoint")


def test_each_phase_updates_its_network_alone_through_the_frozen_others():
    torch.manual_seed(0)
    model = ThreeNets(ModelConfig(arch=ARCH, max_resolution=4, latent_dim=8, hidden=16))
    optimizers = {name: torch.optim.SGD(model.network(name).parameters(), lr=0.1) for name in model.networks}
    backend = LocalBackend(model, optimizers)
    got_grad: dict[str, set[str]] = {}
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, name=name: got_grad.setdefault(backend.phase, set()).add(name))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats = training_step(backend, torch.rand(8, 3, 4, 4), ObjectiveConfig(name=OBJECTIVE), 1.0)
    assert set(stats) == {f"loss_{name}" for name in NETWORKS}
    for phase in NETWORKS:
        assert got_grad[phase] == {n for n, _ in model.named_parameters() if n.startswith(f"{phase}.")}
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters()), "every network was updated"
    assert backend.skipped == dict.fromkeys(NETWORKS, 0)
    with pytest.raises(ValueError, match="does not have"), backend.train_only("encoder"):
        pass
