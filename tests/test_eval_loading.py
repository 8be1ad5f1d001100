"""Snapshots and checkpoints load into the inference model they were saved from; every bad input is one LoadError."""

import copy

import pytest
import torch
from eval_helpers import TINY_MODEL, tiny_run_config, tiny_snapshot

from sivae.core import checkpoint
from sivae.core.config import to_dict
from sivae.eval import loading
from sivae.eval.loading import LoadedModel, LoadError, ModelFormat, load_model, register_format
from sivae.models import build_model


def decoded(model, lod=None):
    z = torch.randn(4, TINY_MODEL.latent_dim, generator=torch.Generator().manual_seed(5))
    return model.decoder(z, lod, 1.0, False, noise=False)


def test_a_snapshot_loads_its_weights_config_and_position(tmp_path):
    path = tiny_snapshot(tmp_path, tmp_path / "data", images=12_345, seed=3, lod=1)
    torch.manual_seed(3)
    original = build_model(TINY_MODEL).eval()
    loaded = load_model(path)
    assert (loaded.format, loaded.images, loaded.kimg, loaded.lod, loaded.resolution) == ("snapshot", 12_345,
                                                                                           12.345, 1, 8)
    assert loaded.config.model == TINY_MODEL and loaded.config.data.path == str(tmp_path / "data")
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    assert torch.equal(decoded(loaded.model, 1), decoded(original, 1))


def test_a_checkpoint_loads_its_ema_weights_and_derives_the_level_from_the_schedule(tmp_path):
    cfg = tiny_run_config(tmp_path / "data")  # 4px for 1 kimg, then 8px: 1 kimg fade-in, 1 kimg stable, ...
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.1)  # the EMA differs from the raw weights
    path = checkpoint.save(checkpoint.checkpoint_path(tmp_path, 1500),
                           {"model": model.state_dict(), "ema": ema.state_dict(), "config": to_dict(cfg),
                            "progress": {"images": 1500, "iteration": 10}})
    loaded = load_model(path)
    assert (loaded.format, loaded.images, loaded.resolution, loaded.lod) == ("checkpoint", 1500, 8, 1)
    assert loaded.blend == pytest.approx(0.5)  # half way through the 8px level's 1 kimg fade-in
    assert torch.equal(decoded(loaded.model), decoded(ema.eval()))
    assert not torch.equal(decoded(loaded.model), decoded(model.eval()))


def test_ddp_and_compile_prefixes_are_stripped(tmp_path):
    cfg = tiny_run_config(tmp_path)
    torch.manual_seed(0)
    ema = build_model(TINY_MODEL)
    state = {f"module._orig_mod.{k}" if k.startswith("decoder") else f"module.{k}": v
             for k, v in ema.state_dict().items()}
    path = checkpoint.save(tmp_path / "ckpt-000000000001.pt",
                           {"ema": state, "config": to_dict(cfg), "progress": {"images": 1}})
    assert torch.equal(decoded(load_model(path).model), decoded(ema.eval()))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "other-format", "missing-key", "wrong-model"])
def test_unusable_files_are_one_clear_error(tmp_path, damage):
    path = tiny_snapshot(tmp_path, tmp_path / "data")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file at all" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "other-format":
        torch.save({"format": "something-else/1"}, path)
    else:
        state = torch.load(path, weights_only=True)
        if damage == "missing-key":
            del state["networks"]["decoder"]
        else:
            state["config"]["model"]["latent_dim"] = 32  # the weights are of a latent-8 model
        torch.save(state, path)
    with pytest.raises(LoadError, match=str(path.name)):
        load_model(path)


def test_missing_paths_and_deepspeed_directories_are_reported(tmp_path):
    with pytest.raises(LoadError, match="no such file"):
        load_model(tmp_path / "nothing.pt")
    ds = tmp_path / "ds"
    (ds / "global_step10").mkdir(parents=True)
    (ds / "latest").write_text("global_step10")
    (ds / "global_step10" / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(LoadError, match=r"DeepSpeed checkpoint directory, but not one of `sivae train`"):
        load_model(ds)  # a foreign DeepSpeed directory (ours are named ckpt-<images> and marked complete)
    with pytest.raises(LoadError, match="unsupported format"):
        load_model(tmp_path)  # a plain directory


def test_a_new_format_plugs_in_without_changing_callers(tmp_path, monkeypatch):
    """What the DeepSpeed loader of issue 6 does: register a format under its name; load_model then finds it."""
    monkeypatch.setattr(loading, "FORMATS", list(loading.FORMATS))
    snapshot = load_model(tiny_snapshot(tmp_path / "s", tmp_path / "data"))

    def load_deepspeed(probe, device):
        return LoadedModel(snapshot.model.to(device), snapshot.config, 777, 2, 1.0, 16, probe.path, "deepspeed")

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "latest").write_text("global_step1")
    register_format(ModelFormat("deepspeed", loading.FORMATS[-1].claims, load_deepspeed))
    assert [f.name for f in loading.FORMATS] == ["snapshot", "checkpoint", "deepspeed"]
    loaded = load_model(ds)
    assert (loaded.format, loaded.images) == ("deepspeed", 777)
