"""The `sivae` command: one entry point, one subcommand per package.

Each package's `cli` module adds its subcommand with `register(subparsers)` and sets a
`handler(args) -> int` default; heavy imports happen inside the handlers so `--help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from sivae.core.config import ConfigError

SUBCOMMANDS = (
    "sivae.data_pipeline.cli",
    "sivae.train.summary_cli",
    "sivae.train.cli",
    "sivae.train.toy2d.cli",
    "sivae.eval.cli",
    "sivae.tools.cli",
    "sivae.launch.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sivae",
        description="Soft-IntroVAE at scale: data, training, launch and evaluation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may follow options (`train CONFIG --run-dir D a.b=1`), which argparse's
    # positional matching does not allow: collect the leftovers that look like overrides.
    # So may image files (`reconstruct MODEL --out D a.png b.png`): leftovers go to the command's list of them.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "images") and not any(e.startswith("-") for e in extra):
            args.images = [*args.images, *map(Path, extra)]
        elif not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        else:
            args.overrides = [*args.overrides, *extra]
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"sivae {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sivae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
