"""`sivae train CONFIG --run-dir DIR [key=value ...]`: start or resume a training run."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a Soft-IntroVAE (starts, or resumes the run in --run-dir)",
        description="Train with the progressive schedule of CONFIG. A --run-dir that already holds a run is "
        "resumed from its newest readable checkpoint; a config that conflicts with the run's is refused. "
        "key=value arguments override the config (e.g. data.path=data/emoji train.total_kimg=0.5). The backend is "
        "train.backend: auto (Accelerate DDP when a launcher exporting WORLD_SIZE > 1 started several processes, "
        "else one process), single, accelerate or deepspeed (train.deepspeed.zero_stage ...). `sivae launch` starts "
        "the processes.",
    )
    p.add_argument("config", type=Path, help="run config YAML (see configs/)")
    p.add_argument("--run-dir", type=Path, required=True, help="run directory (created, or resumed)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, the local rank's GPU), cpu or cuda[:N]")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from sivae.core.config import ConfigError, load_config
    from sivae.core.distributed import launched_by_distributed_launcher, leave_process_group
    from sivae.train.exit_codes import EXIT_DIVERGED, EXIT_PREEMPTED
    from sivae.train.phases import OBJECTIVES
    from sivae.train.schema import RunConfig
    from sivae.train.trainer import Trainer, TrainingDiverged, check_data

    cfg = load_config(RunConfig, args.config, args.overrides)
    if cfg.objective.name not in OBJECTIVES:  # the trainer's import of train.steps registered the built-in ones
        raise ConfigError("objective.name", f"must be one of {' | '.join(map(repr, OBJECTIVES))}, "
                                            f"got {cfg.objective.name!r}")  # fmt: skip
    # the run directory records where the data is from anywhere (eval jobs start elsewhere)
    cfg.data.path = str(Path(cfg.data.path).resolve())
    check_data(cfg)
    several = launched_by_distributed_launcher()
    if cfg.train.backend == "auto":  # the run directory records the backend that ran
        cfg.train.backend = "accelerate" if several else "single"
    if cfg.train.backend == "single" and several:
        raise ConfigError("train.backend", "'single' trains one process, but a launcher started several "
                                           "(WORLD_SIZE > 1): use accelerate or deepspeed")  # fmt: skip
    if cfg.train.backend == "deepspeed":
        import torch

        from sivae.train.backend import resolve_precision
        from sivae.train.deepspeed_backend import check_precision

        wanted = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
        check_precision(resolve_precision(cfg.train.precision, torch.device(wanted)), torch.device(wanted))
    env, accelerator = process_env(cfg.train.backend, args.device)
    try:
        code = Trainer(cfg, args.run_dir, env, accelerator).run()
    except TrainingDiverged as exc:
        print(f"sivae train: {exc}")
        return EXIT_DIVERGED
    finally:
        leave_process_group()
    if code == EXIT_PREEMPTED:
        # The checkpoint is written. A launcher tearing down the step as the other ranks exit (srun
        # --kill-on-bad-exit, DeepSpeed's launcher) may send SIGTERM now: it must not turn status 4 into a kill.
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
    return code


def process_env(backend: str, device: str):
    """This process's place (rank, device) for the backend, joining the process group; and the Accelerator
    for "accelerate"."""
    from sivae.core.distributed import export_local_rank, launched_by_distributed_launcher, single_process_env
    from sivae.train.accelerate_backend import accelerate_env, make_accelerator

    if backend == "accelerate":
        if launched_by_distributed_launcher():  # one process: no LOCAL_RANK, or Accelerate would expect a group
            export_local_rank()
        accelerator = make_accelerator(cpu=device == "cpu" or not _cuda())
        return accelerate_env(accelerator), accelerator
    if backend == "deepspeed":
        from sivae.train.deepspeed_backend import deepspeed_env

        return deepspeed_env(device), None
    return single_process_env(device), None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
