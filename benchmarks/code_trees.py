"""Running another checkout's code next to this one: a folder whose `sivae` package is that tree's.

The benchmarks that compare commits side by side start child processes with this folder first on
PYTHONPATH, ahead of any installed copy of the project.
"""

from __future__ import annotations

import configparser
from pathlib import Path


def namespace_of(tree: Path, into: Path) -> Path:
    """`into`, holding a `sivae` package of links to `tree`'s folders, as its setup.cfg maps the namespace."""
    cfg = configparser.ConfigParser()
    cfg.read(tree / "setup.cfg")
    package = into / "sivae"
    package.mkdir(parents=True)
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, folder = (part.strip() for part in line.split("="))
        if name == "sivae":
            for file in (tree / folder).glob("*.py"):
                (package / file.name).symlink_to(file)
        else:
            (package / name.split(".", 1)[1]).symlink_to(tree / folder, target_is_directory=True)
    return into
