"""The translation model: translation is the class code of one image decoded with the content code of another
(so an image swapped with itself is its reconstruction); both objectives train the three networks through the
trainer under two processes and resume bit for bit; the KL weighs each code by its own weight."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from launch_helpers import final_state
from process_helpers import rendezvous_env, run_together

from sivae.core import checkpoint
from sivae.core.elbo import kl_divergence
from sivae.eval.loading import load_model
from sivae.launch.cli import main as sivae
from sivae.models import build_model
from sivae.models.config import ModelConfig
from sivae.models.translation import TranslationModel
from sivae.train.backend import LocalBackend
from sivae.train.objectives import weighted_kl_divergence
from sivae.train.schema import ObjectiveConfig
from sivae.train.steps import training_step

REPO = Path(__file__).parents[1]
DRIVER = Path(__file__).with_name("train_driver.py")
NETWORKS = ("class_encoder", "content_encoder", "decoder")
TINY = {"arch": "translation", "max_resolution": 8, "latent_dim": 6, "class_latent_dim": 4,
        "content_latent_dim": 2, "content_kl_weight": 3.0, "channels": [4]}
# 8px digits, 8 iterations of a global batch of 16 (2 processes: micro-batches of 4 x 2 accumulation steps),
# the first two of them the VAE warm-up; checkpoints at 64 images (the resume point) and 128 (the end)
CONFIG = {
    "model": TINY,
    "data": {"workers": 0, "shuffle_buffer": 64, "flip": False},
    "objective": {"name": "translation-soft-intro", "beta_neg": 16},
    "train": {
        "seed": 3,
        "schedule": [{"resolution": 8, "stable_kimg": 0.128, "batch": 16, "lr": 0.002}],
        "vae_warmup_kimg": 0.032,
        "ema_halflife_kimg": 0.1,
        "checkpoint_every_kimg": 0.064,
        "snapshot_every_kimg": 0.128,
        "sample_every_kimg": 0.128,
        "log_every_kimg": 0.032,
    },
}


def tiny_model(seed: int = 0) -> TranslationModel:
    torch.manual_seed(seed)
    return build_model(ModelConfig(**TINY)).eval()


def test_an_image_swapped_with_itself_is_its_reconstruction():
    model, x = tiny_model(), torch.rand(5, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        mu, _ = model.encode(x)
        assert torch.equal(model.translate(x, x), model.decode(mu))


def test_a_swap_takes_the_class_code_of_one_image_and_the_content_code_of_the_other():
    model = tiny_model()
    a, b = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        (mu_a, _), (mu_b, _) = model.encode(a), model.encode(b)
        by_hand = model.decode(torch.cat([mu_a[:, :4], mu_b[:, 4:]], 1))
        assert torch.equal(model.translate(a, b), by_hand)
        assert not torch.allclose(model.translate(a, b), model.translate(b, a))


def test_the_kl_weighs_each_code_by_its_own_weight():
    mu, logvar = torch.randn(3, 6), torch.randn(3, 6)
    weights = tiny_model().kl_weights
    expected = kl_divergence(mu[:, :4], logvar[:, :4]) + 3.0 * kl_divergence(mu[:, 4:], logvar[:, 4:])
    assert torch.allclose(weighted_kl_divergence(mu, logvar, weights), expected)


@pytest.mark.parametrize("objective, phases", [("translation-soft-intro", {"encoder": ("class_encoder",
                         "content_encoder"), "decoder": ("decoder",)}), ("translation-vae", {"vae": NETWORKS})])
def test_each_phase_updates_its_networks_alone(objective, phases):
    model = tiny_model().train()
    optimizers = {name: torch.optim.SGD(model.network(name).parameters(), lr=0.1) for name in model.networks}
    backend = LocalBackend(model, optimizers)
    got_grad: dict[str, set[str]] = {}
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, name=name: got_grad.setdefault(backend.phase, set()).add(
            name.split(".")[0]))
    training_step(backend, torch.rand(8, 3, 8, 8) * 2 - 1, ObjectiveConfig(name=objective), 1 / 192)
    assert {phase: tuple(sorted(nets)) for phase, nets in got_grad.items()} == {
        phase: tuple(sorted(nets)) for phase, nets in phases.items()}
    assert backend.skipped == dict.fromkeys(phases, 0)


@pytest.fixture(scope="module")
def config(tmp_path_factory, digits16) -> Path:
    path = tmp_path_factory.mktemp("translation") / "run.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "data": {**CONFIG["data"], "path": str(digits16)}}))
    return path


def train_two_processes(config: Path, run_dir: Path) -> None:
    env = {**rendezvous_env(2), "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(DRIVER), "train", str(config), "--run-dir", str(run_dir), "--device", "cpu",
               "train.backend=accelerate", "train.per_device_batch=4"]
    run_together(command, [{**env, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(2)], REPO, timeout=240)


def test_trains_under_two_processes_and_resumes_bit_for_bit(tmp_path, config):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_two_processes(config, straight)
    shutil.copytree(straight, resumed)
    checkpoint.latest(resumed / "checkpoints")[0].unlink()  # as after a crash just before the last checkpoint
    assert "000000000064" in checkpoint.latest(resumed / "checkpoints")[0].name
    train_two_processes(config, resumed)

    weights, state = final_state(straight)
    resumed_weights, resumed_state = final_state(resumed)
    assert state["world_size"] == 2 and state["progress"]["images"] == 128
    assert state["progress"] == resumed_state["progress"]
    assert set(state["progress"]["skipped_updates"]) == {"vae", "encoder", "decoder"}  # warm-up, then the two
    assert {key.split(".")[0] for key in weights} == set(NETWORKS)
    for key in weights:
        assert torch.equal(weights[key], resumed_weights[key]), key
    for key in state["ema"]:
        assert torch.equal(state["ema"][key], resumed_state["ema"][key]), key
    loaded = load_model(straight / "snapshots" / "snapshot-000000000128.pt")
    assert isinstance(loaded.model, TranslationModel)
    assert all(torch.equal(v, state["ema"][k]) for k, v in loaded.model.state_dict().items())


def test_a_single_process_vae_baseline_run_trains(tmp_path, config):
    assert sivae(["train", str(config), "--run-dir", str(tmp_path / "vae"), "--device", "cpu",
                  "objective.name=translation-vae", "train.vae_warmup_kimg=0"]) == 0
    _, state = final_state(tmp_path / "vae")
    assert state["progress"]["images"] == 128 and set(state["progress"]["skipped_updates"]) == {"vae"}
