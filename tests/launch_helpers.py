"""Multi-process training runs for the launch tests: the 8-16px style run, started by a real launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from process_helpers import run_all

from sivae.core import checkpoint
from sivae.core import deepspeed_checkpoint as ds_ckpt
from sivae.core.distributed import free_port
from sivae.launch.launchers import Launch, launcher_command, launcher_env

REPO = Path(__file__).parents[1]
TINY = Path(__file__).parent / "tiny_run.yaml"
DRIVER = Path(__file__).parent / "train_driver.py"
# 8px for 64 images, then 16px fading in over 64 and stable for 64: 12 iterations of a global batch of 16 =
# 2 processes x micro-batches of 4 x 2 accumulation steps; checkpoints at 64 (the level switch), 128 and 192
SCHEDULE = ("train.schedule=[{resolution: 8, stable_kimg: 0.064, batch: 16, lr: 0.002}, "
            "{resolution: 16, fade_in_kimg: 0.064, stable_kimg: 0.064, batch: 16, lr: 0.002}]")
RUN_8_16 = (SCHEDULE, "train.vae_warmup_kimg=0.032", "train.per_device_batch=4", "train.checkpoint_every_kimg=0.064",
            "train.snapshot_every_kimg=0.192", "train.sample_every_kimg=0.192", "train.log_every_kimg=0.016")
ITERATIONS, IMAGES = 12, 192


def train_args(run_dir: Path, data: Path, *overrides: str) -> tuple[str, ...]:
    return (str(TINY), "--run-dir", str(run_dir), "--device", "cpu", f"data.path={data}", *RUN_8_16, *overrides)


def deepspeed_args(run_dir: Path, data: Path, zero: int, precision: str) -> tuple[str, ...]:
    return train_args(run_dir, data, "train.backend=deepspeed", f"train.deepspeed.zero_stage={zero}",
                      f"train.precision={precision}")


def _environment(spec: Launch, record: Path | None, kill_in_checkpoint: int = 0) -> dict[str, str]:
    # PYTHONPATH: the driver is a script, so its processes would otherwise import an installed copy of the project
    env = {**os.environ, **launcher_env(spec, cuda=False), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
        env["SIVAE_TEST_RECORD"] = str(record)
    if kill_in_checkpoint:
        env["SIVAE_TEST_KILL_IN_CHECKPOINT"] = str(kill_in_checkpoint)
    return env


def launch(launcher: str, args: tuple[str, ...], *, record: Path | None = None, kill_in_checkpoint: int = 0,
           processes: int = 2) -> subprocess.CompletedProcess:
    """Start `processes` ranks of the instrumented trainer with `launcher` (its real command line) and wait."""
    spec = Launch(launcher, args, procs_per_node=processes, master_port=free_port(), program=(str(DRIVER),))
    env = _environment(spec, record, kill_in_checkpoint)
    command = launcher_command(spec)
    if launcher == "local":
        command = [sys.executable, str(DRIVER), "train", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def launch_nodes(launcher: str, args: tuple[str, ...], *, nodes: int, processes: int, record: Path | None = None,
                 timeout: float = 600) -> list[str]:
    """`nodes` "nodes" on this host: one launcher per node rank, all started at once and meeting at node 0's
    rendezvous on 127.0.0.1, each starting `processes` ranks of the instrumented trainer; waits for every one
    (failing with their stderr unless all succeed). Returns their stdouts."""
    spec = Launch(launcher, args, nodes=nodes, procs_per_node=processes, master_port=free_port(),
                  program=(str(DRIVER),))  # fmt: skip
    env = _environment(spec, record)
    runs = [(launcher_command(replace(spec, node_rank=rank)), env) for rank in range(nodes)]
    return run_all(runs, REPO, timeout=timeout)


def ranks(record: Path) -> list[dict]:
    return [torch.load(path, weights_only=True) for path in sorted(record.glob("rank*.pt"))]


def final_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(model weights, trainer state) of the newest checkpoint: a DeepSpeed directory or a checkpoint file."""
    directory = run_dir / "checkpoints"
    newest = ds_ckpt.latest_complete(directory)
    if newest is None:
        state = checkpoint.latest(directory)[1]
        return state["model"], state
    weights = {}
    for net in ds_ckpt.networks_of(ds_ckpt.read_marker(newest)):
        saved = torch.load(newest / net / ds_ckpt.MODEL_STATES, map_location="cpu", weights_only=True)
        weights.update({f"{net}.{k}": v for k, v in saved["module"].items()})
    return weights, ds_ckpt.read_trainer_state(newest)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
