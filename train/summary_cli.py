"""`sivae models summary CONFIG`: parameters, FLOPs and activation memory per level of a run config's model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="inspect model architectures (summary: parameters, FLOPs, memory per level)",
        description="Inspect the model of a run config.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = actions.add_parser(
        "summary",
        help="per level: resolution, active parameters, FLOPs and activation memory per image",
        description="Build the model of a run config on the meta device (no memory, no compute) and print, per "
        "level: the resolution, the encoder and decoder parameters active at that level, and for one "
        "Soft-IntroVAE training iteration (encoder step + decoder step, forward and backward) the FLOPs per "
        "image and the activation memory per image (fp32 tensors saved for backward). Extra key=value "
        "arguments override the config (e.g. model.start_channels=32).",
    )
    s.add_argument("config", type=Path, help="run config YAML (configs/*.yaml)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    s.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from sivae.core.config import load_config
    from sivae.train.schema import RunConfig
    from sivae.train.summary import format_table, summarize

    cfg = load_config(RunConfig, args.config, args.overrides)
    print(format_table(cfg.model, summarize(cfg.model)))
    return 0
