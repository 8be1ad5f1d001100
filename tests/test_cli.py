"""The `sivae` entry point: subcommands are listed and each answers --help."""

import subprocess
import sys

from sivae.launch.cli import build_parser

EXPECTED = {"data", "eval", "launch", "models", "toy2d", "train"}


def subcommands():
    return build_parser()._subparsers._group_actions[0].choices


def test_help_lists_every_subcommand():
    proc = subprocess.run([sys.executable, "-m", "sivae", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert set(subcommands()) >= EXPECTED
    for name in subcommands():
        assert f"    {name}" in proc.stdout


def test_each_subcommand_has_help():
    for name in subcommands():
        proc = subprocess.run([sys.executable, "-m", "sivae", name, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: sivae {name}")
