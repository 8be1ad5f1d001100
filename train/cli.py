"""`sivae train CONFIG --run-dir DIR [key=value ...]`: start or resume a training run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a Soft-IntroVAE (starts, or resumes the run in --run-dir)",
        description="Train with the progressive schedule of CONFIG. A --run-dir that already holds a run is "
        "resumed from its newest readable checkpoint; a config that conflicts with the run's is refused. "
        "key=value arguments override the config (e.g. data.path=data/emoji train.total_kimg=0.5). Under "
        "`accelerate launch` (or any launcher exporting WORLD_SIZE) the run is data-parallel over the processes.",
    )
    p.add_argument("config", type=Path, help="run config YAML (see configs/)")
    p.add_argument("--run-dir", type=Path, required=True, help="run directory (created, or resumed)")
    p.add_argument("--backend", choices=["auto", "single", "accelerate"], default="auto",
                   help="auto: accelerate when launched with several processes, else single")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]; single backend")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from train.config import load_config
    from train.distributed import (
        accelerate_env,
        launched_by_distributed_launcher,
        make_accelerator,
        single_process_env,
    )
    from train.schema import RunConfig
    from train.trainer import EXIT_DIVERGED, Trainer, TrainingDiverged, check_data

    cfg = load_config(RunConfig, args.config, args.overrides)
    # the run directory records where the data is from anywhere (eval jobs start elsewhere)
    cfg.data.path = str(Path(cfg.data.path).resolve())
    check_data(cfg)
    use_accelerate = args.backend == "accelerate" or (args.backend == "auto" and launched_by_distributed_launcher())
    if use_accelerate:
        accelerator = make_accelerator(cpu=args.device == "cpu" or not _cuda())
        env = accelerate_env(accelerator)
    else:
        accelerator, env = None, single_process_env(args.device)
    try:
        return Trainer(cfg, args.run_dir, env, accelerator).run()
    except TrainingDiverged as exc:
        print(f"sivae train: {exc}")
        return EXIT_DIVERGED


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
